// Sessions in a web app: log in, see the session from any replica, log out here or
// everywhere. The cookie carries only the secret session id; the session lives in Baton.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//	cd clients/go && go run ./examples/web-sessions
//	curl -c jar -b jar -XPOST 'localhost:8080/login?user=ada' && curl -b jar localhost:8080/me
//	curl -b jar -XPOST localhost:8080/logout-everywhere && curl -b jar localhost:8080/me
//
// BATON_TARGET overrides the default localhost:50051.
package main

import (
	"fmt"
	"log"
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
	sessions := &baton.SessionManager{Client: client, IdleTimeout: 30 * time.Minute}

	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		// A real site checks the password (and rate-limits this route) first.
		user := r.FormValue("user")
		if _, err := sessions.Login(w, r, user, map[string][]byte{"theme": []byte("dark")}); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "welcome, %s\n", user)
	})
	mux.HandleFunc("GET /me", func(w http.ResponseWriter, r *http.Request) {
		session := baton.SessionFrom(r)
		if session == nil {
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		theme, _ := session.Get("theme")
		fmt.Fprintf(w, "%s (theme %s, session %s)\n", session.Subject, theme, session.Handle)
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		if err := sessions.Logout(w, r); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /logout-everywhere", func(w http.ResponseWriter, r *http.Request) {
		revoked, err := sessions.LogoutEverywhere(w, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ended %d sessions\n", revoked)
	})
	log.Println("listening on localhost:8080")
	log.Fatal(http.ListenAndServe("localhost:8080", sessions.Middleware(mux)))
}

func target() string {
	if target := os.Getenv("BATON_TARGET"); target != "" {
		return target
	}
	return "localhost:50051"
}
