//! Group commit for single Acks: the Acks of one queue that arrive while an ack script of
//! that queue is in flight go to Redis together, as one script, when it returns. A worker
//! that acks one job at a time (what most users run) then costs Redis about what
//! `AckBatch` does, and an Ack arriving at an idle queue goes out at once: nothing waits
//! for a timer. Each Ack keeps its own outcome (the script settles each lease
//! independently), so at-least-once is what it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tracing::Instrument;

use super::ids::LeaseRef;
use super::{QueueManager, SCRIPT_CHUNK};
use crate::error::Error;

/// An Ack waiting for its queue's next script.
struct Waiting {
    settlement: (LeaseRef, Vec<u8>),
    answer: oneshot::Sender<Result<(), Error>>,
}

/// (namespace, queue): tenants never share a script.
type QueueId = (Arc<str>, String);

/// The Acks waiting per queue; a queue is present while its flusher runs.
#[derive(Default)]
pub struct AckCombiner {
    waiting: Mutex<HashMap<QueueId, Vec<Waiting>>>,
}

impl QueueManager {
    /// Completes one delivery, together with the other Acks of its queue that arrive
    /// meanwhile; `settlement` is the lease and the job's result, taken as is (results can
    /// be large: no copy is made on the way to Redis).
    pub async fn ack(&self, settlement: (LeaseRef, Vec<u8>)) -> Result<(), Error> {
        let (answer, answered) = oneshot::channel();
        let queue: QueueId = (self.keys.namespace_arc(), settlement.0.queue.clone());
        let first = {
            let mut waiting = self.acks.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            let flusher_running = waiting.contains_key(&queue);
            waiting.entry(queue.clone()).or_default().push(Waiting { settlement, answer });
            !flusher_running
        };
        if first {
            // A task of its own: a caller that goes away must not strand the others.
            tokio::spawn(self.clone().flush_acks(queue).instrument(tracing::Span::current()));
        }
        answered.await.unwrap_or_else(|_| Err(Error::Internal("the ack flusher ended without answering".into())))
    }

    /// Sends the queue's waiting Acks, up to a script's worth at a time, until none wait.
    async fn flush_acks(self, queue: QueueId) {
        loop {
            let batch: Vec<Waiting> = {
                let mut waiting = self.acks.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(queued) = waiting.get_mut(&queue) else {
                    return;
                };
                if queued.is_empty() {
                    waiting.remove(&queue);
                    return;
                }
                let take = queued.len().min(SCRIPT_CHUNK);
                queued.drain(..take).collect()
            };
            let (settlements, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|waiting| (waiting.settlement, waiting.answer)).unzip();
            match self.ack_batch(&settlements).await {
                Ok(outcomes) => {
                    for (answer, outcome) in answers.into_iter().zip(outcomes) {
                        let _ = answer.send(outcome);
                    }
                }
                Err(err) => {
                    for answer in answers {
                        let _ = answer.send(Err(err.clone()));
                    }
                }
            }
        }
    }
}
