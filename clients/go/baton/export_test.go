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

// SetAckBatchDelay makes Consume's acks wait up to delay for the AckBatch in flight (see
// ackBatchDelay) until the returned function is called.
func SetAckBatchDelay(delay time.Duration) (restore func()) {
	previous := ackBatchDelay.Swap(int64(delay))
	return func() { ackBatchDelay.Store(previous) }
}

// ObserveAcksQueued makes the tests hear every ack Consume queues for an AckBatch (see
// ackQueuedObserver) until the returned function is called.
func ObserveAcksQueued(observer func()) (stop func()) {
	ackQueuedObserver.Store(&observer)
	return func() { ackQueuedObserver.Store(nil) }
}

// AskOneDeliveryAMessage makes Consume open its streams without batch_deliveries, as against a
// server from before batches, until the returned function is called.
func AskOneDeliveryAMessage() (restore func()) {
	previous := oneDeliveryAMessage.Swap(true)
	return func() { oneDeliveryAMessage.Store(previous) }
}
