//! One Consume stream's loop: pushes ready jobs while it has credit, learns which of its
//! leases were settled (directly from Acks through this replica; from Redis for Acks through
//! others) or cancelled, and sleeps on the process's one notification path in between. It
//! speaks in domain events; `grpc.rs` puts them on the wire.

use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::ids::{LeaseRef, new_stream_id};
use super::settlement::LocalStream;
use super::{Delivery, LeaseStatus, QueueManager};
use crate::error::Error;

/// A waiting consumer re-checks at least this often, in case a notification was lost.
const SAFETY_RECHECK: Duration = Duration::from_secs(1);
/// How long a stream lets Acks of its leases accumulate before re-reading them.
const REFRESH_COALESCE: Duration = Duration::from_millis(2);
/// While Redis is unreachable a consumer stays open and retries this often.
const OUTAGE_RETRY: Duration = Duration::from_millis(500);

/// A validated Consume opening.
pub struct ConsumeOptions {
    pub queue: String,
    pub types: Vec<String>,
    pub max_in_flight: usize,
    pub visibility: Duration,
    /// Send each fetch's jobs together ([`ConsumerEvent::DeliveredBatch`]).
    pub batch_deliveries: bool,
}

/// A steering message from the client.
pub struct Steering {
    /// Deliver nothing more; end once every held lease is settled.
    pub drain: bool,
    /// Deliveries the worker never started: handed back without charging the attempt.
    pub unstarted_lease_ids: Vec<String>,
}

type SteeringStream = Pin<Box<dyn Stream<Item = Result<Steering, Status>> + Send>>;

/// What a consumer tells its client.
// Nearly every event is a delivery: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum ConsumerEvent {
    Delivered(Delivery),
    /// Jobs of one fetch, for a stream that asked for them together (the wire splits them
    /// into messages of bounded size).
    DeliveredBatch(Vec<Delivery>),
    /// A held job was cancelled: the worker should stop it.
    Cancelled(LeaseRef),
    /// The stream ends with this error (the last event).
    Ended(Error),
}

/// One Consume stream.
pub struct Consumer {
    /// Prefixes this stream's lease tokens; its settlements are announced on its channel.
    stream_id: String,
    /// Where Acks and Nacks through this replica report settlements.
    local: LocalStream,
    queues: QueueManager,
    queue: String,
    types: Vec<String>,
    max_in_flight: usize,
    visibility: Duration,
    batch_deliveries: bool,
    sender: mpsc::Sender<ConsumerEvent>,
    shutdown: CancellationToken,
    /// The client's steering messages; None once it half-closed.
    requests: Option<SteeringStream>,
    /// The client asked for no more deliveries.
    drained: bool,
    /// Leases this stream delivered and has not seen settled.
    held: Vec<LeaseRef>,
    /// Set when one of this stream's leases was settled or cancelled elsewhere.
    refresh_due: bool,
    last_refresh: Instant,
    last_fetch: Instant,
    /// The Consume call's span, which each delivery's span links to.
    trace: Option<opentelemetry::trace::SpanContext>,
}

enum Wake {
    /// The nap `step` asked for is over: a job or lease falls due, or the safety re-check.
    Timer,
    /// Jobs were enqueued, retried, handed back or resumed on the queue.
    QueueChanged,
    /// A lease of this stream was settled or cancelled through another replica.
    OwnLease,
    /// A lease of this stream was settled through this replica.
    SettledHere,
    /// A steering message from the client (drain, unstarted leases).
    Steer(Steering),
    /// The client half-closed: it sends nothing more, and that changes nothing.
    HalfClosed,
    ClientGone,
    Shutdown,
}

/// What the stream does after a step.
enum Next {
    /// Sleep this long unless woken.
    Nap(Duration),
    /// The client went away: hand back what it held.
    ClientGone,
    /// Drained and nothing held: the stream ends OK.
    Drained,
}

/// The client's next steering message (`Err`: the client is gone); pending forever once it
/// half-closed.
async fn next_request(requests: &mut Option<SteeringStream>) -> Result<Option<Steering>, ()> {
    match requests {
        Some(requests) => requests.next().await.transpose().map_err(drop),
        None => std::future::pending().await,
    }
}

impl Consumer {
    /// Starts a stream's consumer; its events end when the consumer does, and the consumer
    /// ends (handing back what it holds) when the events' receiver is dropped.
    pub fn start(
        queues: QueueManager,
        options: ConsumeOptions,
        opening: Steering,
        steering: impl Stream<Item = Result<Steering, Status>> + Send + 'static,
        shutdown: CancellationToken,
    ) -> ReceiverStream<ConsumerEvent> {
        let (sender, receiver) = mpsc::channel(options.max_in_flight + 4);
        let stream_id = new_stream_id();
        let local = queues.register_stream(&options.queue, &stream_id);
        let consumer = Consumer {
            stream_id,
            local,
            queues,
            queue: options.queue,
            types: options.types,
            max_in_flight: options.max_in_flight,
            visibility: options.visibility,
            batch_deliveries: options.batch_deliveries,
            sender,
            shutdown,
            requests: Some(Box::pin(steering)),
            drained: false,
            held: Vec::new(),
            refresh_due: false,
            last_refresh: Instant::now(),
            last_fetch: Instant::now(),
            trace: crate::traces::stream_context(),
        };
        tokio::spawn(consumer.run(opening));
        ReceiverStream::new(receiver)
    }

    async fn run(mut self, opening: Steering) {
        if let Err(err) = self.steer(opening).await {
            let _ = self.sender.send(ConsumerEvent::Ended(err)).await;
            return;
        }
        let queue_wake = self.queues.watch(&self.queue);
        let own_wake = self.queues.watch_stream(&self.queue, &self.stream_id);
        // Pub/sub wake-ups reach only waiters enabled at that moment and leave no permit: each
        // wait stays enabled from one firing to the next, so one that arrives while this
        // stream is busy (fetching, coalescing) is kept, not dropped with a loop iteration.
        let mut queue_notified = Box::pin(queue_wake.notified());
        queue_notified.as_mut().enable();
        let mut own_notified = Box::pin(own_wake.notified());
        own_notified.as_mut().enable();
        let inbox = self.local.inbox.clone();
        metrics::gauge!("baton_queue_consumers").increment(1.0);
        loop {
            let nap = match self.step().await {
                Ok(Next::Nap(nap)) => nap,
                Ok(Next::ClientGone) => break,
                Ok(Next::Drained) => {
                    metrics::gauge!("baton_queue_consumers").decrement(1.0);
                    return;
                }
                Err(Error::Unavailable) => OUTAGE_RETRY,
                Err(err) => {
                    let _ = self.sender.send(ConsumerEvent::Ended(err)).await;
                    break;
                }
            };
            let woke = tokio::select! {
                () = &mut own_notified => Wake::OwnLease,
                () = inbox.settled() => Wake::SettledHere,
                () = &mut queue_notified => Wake::QueueChanged,
                request = next_request(&mut self.requests) => match request {
                    Ok(Some(request)) => Wake::Steer(request),
                    Ok(None) => Wake::HalfClosed,
                    Err(_) => Wake::ClientGone,
                },
                () = tokio::time::sleep(nap) => Wake::Timer,
                () = self.sender.closed() => Wake::ClientGone,
                () = self.shutdown.cancelled() => Wake::Shutdown,
            };
            match woke {
                Wake::Timer => {}
                Wake::HalfClosed => self.requests = None,
                Wake::Steer(request) => {
                    if let Err(err) = self.steer(request).await {
                        // The worker may be running what this stream holds: the leases stay,
                        // to be settled (or to expire) as after a server shutdown.
                        let _ = self.sender.send(ConsumerEvent::Ended(err)).await;
                        metrics::gauge!("baton_queue_consumers").decrement(1.0);
                        return;
                    }
                }
                Wake::QueueChanged => {
                    queue_notified.set(queue_wake.notified());
                    queue_notified.as_mut().enable();
                }
                Wake::OwnLease | Wake::SettledHere => {
                    if let Wake::OwnLease = woke {
                        // Re-armed before the re-read, which sees everything announced so far.
                        own_notified.set(own_wake.notified());
                        own_notified.as_mut().enable();
                        self.refresh_due = true;
                    }
                    // Acks come in bursts: let a few land, then fetch for all the freed credit
                    // in one script rather than one job at a time.
                    let since = self.last_fetch.elapsed();
                    if since < REFRESH_COALESCE {
                        tokio::time::sleep(REFRESH_COALESCE - since).await;
                    }
                }
                Wake::ClientGone => break,
                Wake::Shutdown => {
                    // The workers still finish and Ack through another replica.
                    let _ = self.sender.send(ConsumerEvent::Ended(Error::ShuttingDown)).await;
                    metrics::gauge!("baton_queue_consumers").decrement(1.0);
                    return;
                }
            }
        }
        self.hand_back().await;
        metrics::gauge!("baton_queue_consumers").decrement(1.0);
    }

    /// Applies a steering message: unstarted leases go back uncharged, drain stops
    /// deliveries.
    async fn steer(&mut self, request: Steering) -> Result<(), Error> {
        if request.unstarted_lease_ids.len() > self.max_in_flight {
            return Err(Error::invalid(
                "unstarted_lease_ids",
                format!("must hold at most max_in_flight ({}) leases", self.max_in_flight),
            ));
        }
        let mut unstarted = Vec::with_capacity(request.unstarted_lease_ids.len());
        for (index, lease_id) in request.unstarted_lease_ids.iter().enumerate() {
            let field = format!("unstarted_lease_ids[{index}]");
            // Any current lease of this queue: a lease id is its holder's secret, and the
            // script hands back only leases that are still current.
            let lease = LeaseRef::parse(lease_id)
                .filter(|lease| lease.queue == self.queue)
                .ok_or_else(|| Error::invalid(field, "is not a lease of this stream's queue"))?;
            unstarted.push(lease);
        }
        if !unstarted.is_empty() {
            self.held.retain(|held| !unstarted.iter().any(|lease| lease.token == held.token));
            self.queues.hand_back_unstarted(&self.queue, &unstarted).await?;
        }
        self.drained |= request.drain;
        Ok(())
    }

    /// Refreshes credit, delivers what fits; says how long to sleep, or that the stream is
    /// over.
    async fn step(&mut self) -> Result<Next, Error> {
        let settled_here = self.local.inbox.drain();
        if !settled_here.is_empty() {
            self.held.retain(|lease| !settled_here.contains(&lease.token));
        }
        // Credit is re-read from Redis when this stream's own leases changed, or on the
        // safety interval (a lost notification must not strand the stream at zero credit).
        if self.refresh_due || self.last_refresh.elapsed() >= SAFETY_RECHECK {
            self.refresh_held().await?;
            if self.sender.is_closed() {
                return Ok(Next::ClientGone);
            }
        }
        if self.drained {
            return Ok(if self.held.is_empty() { Next::Drained } else { Next::Nap(SAFETY_RECHECK) });
        }
        let credit = self.max_in_flight.saturating_sub(self.held.len());
        if credit == 0 {
            // Nothing to fetch until an Ack frees a slot (notified) or the safety re-check.
            return Ok(Next::Nap(SAFETY_RECHECK));
        }
        self.last_fetch = Instant::now();
        let (deliveries, next_event) =
            self.queues.fetch(&self.queue, &self.stream_id, credit, self.visibility, &self.types).await?;
        let filled = !deliveries.is_empty() && deliveries.len() == credit;
        let mut deliveries = deliveries.into_iter();
        while let Some(first) = deliveries.next() {
            let event = if self.batch_deliveries {
                let mut batch = vec![self.deliver(first)];
                batch.extend(deliveries.by_ref().map(|delivery| self.deliver(delivery)));
                ConsumerEvent::DeliveredBatch(batch)
            } else {
                ConsumerEvent::Delivered(self.deliver(first))
            };
            if self.sender.send(event).await.is_err() {
                // The rest of the fetch is leased to this stream too: hand it all back now,
                // not after the visibility timeout (a FIFO group would wait that long).
                self.held.extend(deliveries.map(|delivery| delivery.lease));
                return Ok(Next::ClientGone);
            }
        }
        if filled {
            // Credit used up; wait for an Ack (notified) or the safety re-check.
            return Ok(Next::Nap(SAFETY_RECHECK));
        }
        let until_next = next_event.map(|d| d + Duration::from_millis(1)).unwrap_or(SAFETY_RECHECK);
        Ok(Next::Nap(until_next.min(SAFETY_RECHECK)))
    }

    /// Readies one delivery to send: its span, the context the worker continues from, and
    /// its lease counted as held (if the send fails, hand_back returns it).
    fn deliver(&mut self, mut delivery: Delivery) -> Delivery {
        // A span per delivery, in the enqueuer's trace, rather than one held open for the
        // stream's life; the worker continues from it.
        let span = crate::traces::message_span(
            "deliver",
            "queue",
            &self.queue,
            self.trace.as_ref(),
            &delivery.job.trace_context,
        );
        crate::traces::record_message(&span, &delivery.job.job_id, delivery.attempt);
        delivery.trace_context = crate::traces::delivery_context(&span, &delivery.job.trace_context);
        self.held.push(delivery.lease.clone());
        delivery
    }

    /// Drops settled leases and tells the client about cancelled ones.
    async fn refresh_held(&mut self) -> Result<(), Error> {
        self.refresh_due = false;
        self.last_refresh = Instant::now();
        let statuses = self.queues.held(&self.held).await?;
        let mut still_held = Vec::with_capacity(self.held.len());
        for (lease, status) in std::mem::take(&mut self.held).into_iter().zip(statuses) {
            match status {
                LeaseStatus::Held => still_held.push(lease),
                LeaseStatus::Gone => {}
                LeaseStatus::Cancelled => {
                    // If the client is gone the send fails; `step` sees the closed sender and
                    // the leases still held are handed back.
                    let _ = self.sender.send(ConsumerEvent::Cancelled(lease)).await;
                }
            }
        }
        self.held = still_held;
        Ok(())
    }

    /// The client cancelled or disconnected: its un-acked jobs are ready again at once.
    async fn hand_back(&mut self) {
        let leases = std::mem::take(&mut self.held);
        match self.queues.hand_back(&self.queue, &leases).await {
            Ok(count) if count > 0 => tracing::debug!(queue = %self.queue, count, "consumer left; jobs handed back"),
            Ok(_) => {}
            // They come back when their visibility timeout passes, as if baton had died.
            Err(err) => tracing::warn!(queue = %self.queue, error = %err, "consumer left; hand-back failed"),
        }
    }
}
