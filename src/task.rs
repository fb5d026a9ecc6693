//! Ownership of background tasks: a task lives exactly as long as its guard.

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::error::Error;

/// Aborts the task when dropped, so reapers, pingers and listeners never outlive the
/// server that started them.
#[derive(Debug)]
pub struct TaskGuard(JoinHandle<()>);

impl TaskGuard {
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `items` as a server-streaming RPC's responses from a task of its own, which ends
/// with `items`, when the caller leaves, or — with UNAVAILABLE (SHUTTING_DOWN) — when the
/// server drains. At most `buffer` responses wait for a slow reader; the source then waits
/// (and may drop what it cannot keep, as a watch's backlog does).
pub fn serve_until_drained<T: Send + 'static>(
    items: impl Stream<Item = Result<T, Status>> + Send + 'static,
    draining: CancellationToken,
    buffer: usize,
) -> ReceiverStream<Result<T, Status>> {
    let (sender, receiver) = mpsc::channel(buffer);
    tokio::spawn(async move {
        let mut items = std::pin::pin!(items);
        loop {
            tokio::select! {
                item = items.next() => match item {
                    Some(item) => {
                        if sender.send(item).await.is_err() {
                            return;
                        }
                    }
                    None => return,
                },
                () = sender.closed() => return,
                () = draining.cancelled() => {
                    let _ = sender.send(Err(Error::ShuttingDown.into())).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}
