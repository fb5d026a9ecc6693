// Package baton is the Go client for Baton, a gRPC coordination service whose state lives
// in Redis: rate limits, fenced locks, leader elections, a cache, sessions and a job queue.
//
// Layout:
//
//   - client.go: [New] and its options (target, TLS, API key, default deadline, load
//     balancing, reconnect backoff), wait-for-ready, and the retry budgets and backoff of
//     calls that are safe to repeat
//   - errors.go: [*Error], built from google.rpc.ErrorInfo / RetryInfo / BadRequest; the
//     sentinels for errors.Is; [ReasonOf], the ErrorInfo reason as the generated enum
//   - resolver.go: the "ipv4:" and "ipv6:" address-list targets
//   - ratelimit.go: [Client.Allow]
//   - lock.go: [Client.Lock] and [*Lease]; and the keeping of any lease (a lock's or a
//     leadership's) by heartbeats on KeepAlive streams, reported lost by a local timer a
//     safety margin before its proof of liveness runs out
//   - election.go: [Client.RunAsLeader] and [*Leadership] (a lease kept as in lock.go),
//     [Client.Leader] and [Client.Observe]
//   - cache.go: [Client.CacheGet], [Client.CacheSet], [Client.CacheDelete],
//     [Client.InvalidateTag] and [Client.GetOrLoad] (one loader per miss, via Fetch/Fill)
//   - session.go: [Client.CreateSession] and the rest of the session store
//   - sessionhttp.go: [SessionManager], net/http middleware keeping web sessions in Baton
//   - queue.go: [Client.Enqueue] and [Client.Consume], the worker loop and its graceful stop,
//     and [Job.Progress]
//   - queueconfig.go: [Client.ConfigureQueue] and [Client.GetQueueConfig] ([QueueConfig]:
//     per-group concurrency, strict FIFO groups, a start [Limit]); groups are set with
//     [WithGroup]
//   - queuewatch.go: [Client.WatchJob], [Client.WaitJob] and [*JobError], [Client.WatchQueue]
//     and [*QueueWatch], [Client.ListJobs]
//   - github.com/baton-dev/baton/clients/go/gen/baton/v1 (outside this package, in the same
//     module): the generated stubs for every service (`make gen`), reachable as
//     [Client.RateLimits], [Client.Locks], [Client.Elections], [Client.Cache],
//     [Client.Sessions], [Client.Queue]
//
// The helpers retry only where the API makes it safe: Acquire and Campaign with a
// request_id, Enqueue with a dedup key, reads, Release, Resign, Proclaim, Delete, Ack, Nack,
// Extend, UpdateProgress and ConfigureQueue, and resuming KeepAlive, Consume, Observe, WatchJob and
// WatchQueue streams on another replica.
package baton
