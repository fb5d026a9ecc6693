// Cache-aside of a user profile: read through the cache, load from the database on a miss —
// once, however many requests miss at the same moment — and drop the entry when the profile
// changes.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//	cd clients/go && go run ./examples/cache-profile
//
// BATON_TARGET overrides the default localhost:50051.
package main

import (
	"context"
	"encoding/json"
	"log"
	"os"
	"sync"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

type Profile struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

// loadProfile stands in for a slow database query.
func loadProfile(ctx context.Context, id int) ([]byte, error) {
	log.Printf("loading profile %d from the database", id)
	select {
	case <-time.After(300 * time.Millisecond):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return json.Marshal(Profile{ID: id, Name: "Ada Lovelace"})
}

func profile(ctx context.Context, client *baton.Client, id int) (Profile, error) {
	raw, err := client.GetOrLoad(ctx, "user:42:profile", 5*time.Minute, func(ctx context.Context) ([]byte, error) {
		return loadProfile(ctx, id)
	}, baton.WithTags("user:42"))
	if err != nil {
		return Profile{}, err
	}
	var p Profile
	return p, json.Unmarshal(raw, &p)
}

func main() {
	client, err := baton.New(target())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	// Twenty requests miss at once: the database sees one query.
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := profile(ctx, client, 42); err != nil {
				log.Print(err)
			}
		}()
	}
	wg.Wait()
	p, err := profile(ctx, client, 42) // a hit
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("profile: %+v", p)

	// The user renames themselves: write the database, then drop everything cached about them.
	if err := client.InvalidateTag(ctx, "user:42"); err != nil {
		log.Fatal(err)
	}
	if _, err := profile(ctx, client, 42); err != nil { // loads again
		log.Fatal(err)
	}
}

func target() string {
	if target := os.Getenv("BATON_TARGET"); target != "" {
		return target
	}
	return "localhost:50051"
}
