// Command ratelimit is the Go program of `make clients-install-test`: built in a new module
// outside the repository, it makes one real rate-limit check against $BATON_TARGET.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

func main() {
	client, err := baton.New(os.Getenv("BATON_TARGET"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	key := fmt.Sprintf("install-test:go:%d", time.Now().UnixNano())
	first, err := client.Allow(ctx, key, 1, time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	second, err := client.Allow(ctx, key, 1, time.Minute)
	if err != nil {
		log.Fatal(err)
	}
	if !first.Allowed || second.Allowed {
		log.Fatalf("a limit of 1 answered %v, then %v", first.Allowed, second.Allowed)
	}
	fmt.Println("allowed, then limited")
}
