// Rate limiting a login route: at most 5 attempts per minute per client IP, shared by every
// replica of the web service, answered 429 with Retry-After beyond that.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//	cd clients/go && go run ./examples/ratelimit-login
//	for i in 1 2 3 4 5 6; do curl -si -XPOST localhost:8080/login | head -1; done
//
// BATON_TARGET overrides the default localhost:50051.
package main

import (
	"context"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

func main() {
	client, err := baton.New(target())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	http.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		ip, _, _ := net.SplitHostPort(r.RemoteAddr)
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		// Fail open: a Baton or Redis outage should not lock every user out of logging in.
		decision, err := client.Allow(ctx, "login:"+ip, 5, time.Minute, baton.WithFailOpen())
		if err != nil {
			log.Printf("rate limit unavailable, letting the attempt through: %v", err)
		} else if !decision.Allowed {
			w.Header().Set("Retry-After", fmt.Sprint(int(math.Ceil(decision.RetryAfter.Seconds()))))
			http.Error(w, "too many login attempts", http.StatusTooManyRequests)
			return
		}
		fmt.Fprintf(w, "checking the password (%d attempts left this minute)\n", decision.Remaining)
	})
	log.Println("listening on localhost:8080")
	log.Fatal(http.ListenAndServe("localhost:8080", nil))
}

func target() string {
	if target := os.Getenv("BATON_TARGET"); target != "" {
		return target
	}
	return "localhost:50051"
}
