//! Streams as the clients use them: KeepAlive heartbeats, Consume events.

use std::time::Duration;

use baton::proto::v1::ConsumeResponse;
use baton::proto::v1::consume_response::Event;
use tokio_stream::wrappers::ReceiverStream;

/// A KeepAlive request stream (of a lock or a leadership) as the clients send it: `first`, then an empty heartbeat
/// every `every`, until the returned task is aborted (the request stream then ends).
pub fn heartbeats<Request: Default + Send + 'static>(
    first: Request,
    every: Duration,
) -> (ReceiverStream<Request>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut next = first;
        while sender.send(next).await.is_ok() {
            // The heartbeat period itself.
            tokio::time::sleep(every).await;
            next = Request::default();
        }
    });
    (ReceiverStream::new(receiver), task)
}

/// The next event on a stream, within `patience`.
pub async fn next_event(stream: &mut tonic::Streaming<ConsumeResponse>, patience: Duration) -> Option<Event> {
    match tokio::time::timeout(patience, tokio_stream::StreamExt::next(stream)).await {
        Ok(Some(Ok(response))) => response.event,
        Ok(Some(Err(status))) => panic!("stream failed: {status:?}"),
        Ok(None) => panic!("stream ended"),
        Err(_) => None,
    }
}

/// How a server stream ends: the status after whatever messages are still under way.
/// Panics if it ends cleanly, without one.
pub async fn final_status<T>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => return status,
        }
    }
}
