package baton

import "time"

// ObserveReconnects makes the tests hear every stream reconnection gap (see
// reconnectObserver) until the returned function is called.
func ObserveReconnects(observer func(kind string, gap time.Duration)) (stop func()) {
	reconnectObserver.Store(&observer)
	return func() { reconnectObserver.Store(nil) }
}

// ObserveKeepAliveAnswers makes the tests hear every answer to a KeepAlive message (see
// keepAliveAnswerObserver) until the returned function is called.
func ObserveKeepAliveAnswers(observer func(renewed bool)) (stop func()) {
	keepAliveAnswerObserver.Store(&observer)
	return func() { keepAliveAnswerObserver.Store(nil) }
}
