// Command etcd is etcd's own server (etcdmain, as its release binary runs it), built from
// the Go module proxy: `go install go.etcd.io/etcd/server/v3` refuses the replace lines of
// etcd's go.mod, so this module wraps it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
