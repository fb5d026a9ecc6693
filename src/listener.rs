//! Accepting connections: nothing reaches the HTTP/2 server before it has proved to be a
//! client, and no client can hold a connection without speaking.
//!
//! hyper starts its keepalive PINGs only after the HTTP/2 preface, so a connection that
//! never sends one (or stalls its TLS handshake) would otherwise stay open for good.

use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::TcpStream;

/// Most handshakes in progress at once; past it, accepting pauses (the kernel backlog
/// holds the rest).
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Runs `handshake` on every accepted connection, concurrently and each within
/// `timeout`; connections that fail or time out are dropped (logged at debug).
pub fn handshaken<I, F, Fut, T>(tcp: I, timeout: Duration, handshake: F) -> impl Stream<Item = std::io::Result<T>>
where
    I: Stream<Item = std::io::Result<TcpStream>>,
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    tcp.filter_map(|accepted| {
        std::future::ready(accepted.inspect_err(|err| tracing::debug!(error = %err, "accept failed")).ok())
    })
    .map(move |stream| {
        let peer = stream.peer_addr().ok();
        let handshake = handshake(stream);
        async move {
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(connection)) => Some(Ok(connection)),
                Ok(Err(err)) => {
                    tracing::debug!(?peer, error = %err, "handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?peer, ?timeout, "no handshake in time; connection closed");
                    None
                }
            }
        }
    })
    .buffer_unordered(MAX_PENDING_HANDSHAKES)
    .filter_map(std::future::ready)
}

/// Waits (without consuming anything) until the client has sent the HTTP/2 preface.
/// Anything else is handed on too, for hyper to refuse with its own error.
pub async fn http2_preface(stream: TcpStream) -> std::io::Result<TcpStream> {
    let mut buffer = [0u8; HTTP2_PREFACE.len()];
    loop {
        let peeked = stream.peek(&mut buffer).await?;
        if peeked == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if peeked == buffer.len() || buffer[..peeked] != HTTP2_PREFACE[..peeked] {
            return Ok(stream);
        }
        // peek returns at once while bytes are buffered: wait for more to arrive.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
