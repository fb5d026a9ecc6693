// Sessions in a web app: fill a cart anonymously, log in (keeping the cart, optionally
// "remember me"), see the session from any replica, log out here or everywhere. The cookie
// carries only the secret session id; the session lives in Baton.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//	cd clients/go && go run ./examples/web-sessions
//	curl -c jar -b jar -XPOST 'localhost:8080/cart?item=book' && curl -b jar localhost:8080/cart
//	curl -c jar -b jar -XPOST 'localhost:8080/login?user=ada&remember=on' && curl -b jar localhost:8080/me
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
	mux.HandleFunc("GET /cart", func(w http.ResponseWriter, r *http.Request) {
		// Reading stores nothing: a visitor who only browses gets no session and no cookie.
		cart, _ := baton.SessionFrom(r).Get("cart")
		fmt.Fprintf(w, "cart: %s\n", cart)
	})
	mux.HandleFunc("POST /cart", func(w http.ResponseWriter, r *http.Request) {
		// The first write of an anonymous visitor starts the session and sets the cookie.
		if err := baton.SessionFrom(r).Set(r.Context(), "cart", []byte(r.FormValue("item"))); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		// A real site checks the password (and rate-limits this route) first.
		user := r.FormValue("user")
		session, err := sessions.Login(w, r, user, map[string][]byte{"theme": []byte("dark")})
		if err == nil && r.FormValue("remember") == "on" {
			err = session.SetLifetime(r.Context(), baton.SessionLifetime{
				IdleTimeout: 7 * 24 * time.Hour, AbsoluteTimeout: 30 * 24 * time.Hour, PersistentCookie: true,
			})
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "welcome, %s\n", user)
	})
	mux.HandleFunc("GET /me", func(w http.ResponseWriter, r *http.Request) {
		session := baton.SessionFrom(r)
		if !session.LoggedIn() {
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		theme, _ := session.Get("theme")
		cart, _ := session.Get("cart")
		fmt.Fprintf(w, "%s (theme %s, cart %s, session %s until %s)\n",
			session.Subject, theme, cart, session.Handle, session.IdleExpiresAt.Format(time.RFC3339))
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
