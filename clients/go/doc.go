// Package baton is the Go client for Baton, a gRPC coordination service whose state lives
// in Redis: rate limits, fenced locks, a cache, sessions and a job queue.
//
// Layout:
//
//   - client.go: [New] and its options (target, TLS, API key, default deadline, load balancing)
//   - errors.go: [*Error], built from google.rpc.ErrorInfo / RetryInfo / BadRequest
//   - resolver.go: the "ipv4:" and "ipv6:" address-list targets
//   - ratelimit.go: [Client.Allow]
//   - lock.go: [Client.Lock] and [*Lease], held through KeepAlive
//   - gen/baton/v1: the generated stubs for every service (`make gen`), reachable as
//     [Client.RateLimits], [Client.Locks], [Client.Cache], [Client.Sessions], [Client.Queue]
//
// Only these helpers retry, and only where the API makes it safe: Acquire with a
// request_id, Release, and resuming KeepAlive on another replica.
package baton
