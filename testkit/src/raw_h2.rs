//! A bare HTTP/2 server (the `h2` crate, no gRPC stack) for faults a tonic server cannot be made
//! to produce on demand: refusing a stream with `RST_STREAM(REFUSED_STREAM)`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::LOOPBACK_ANY;

/// An HTTP/2 server on 127.0.0.1 that refuses its first `refusals` streams with
/// `REFUSED_STREAM`, then answers every request with an empty gRPC message and `grpc-status: 0`
/// (a valid reply for any unary method whose reply message can be empty).
#[derive(Debug)]
pub struct RefusingServer {
    addr: SocketAddr,
    streams: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RefusingServer {
    /// Starts the server.
    pub async fn start(refusals: usize) -> RefusingServer {
        let listener = TcpListener::bind(LOOPBACK_ANY)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local_addr of a bound listener");
        let streams = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&streams);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((_request, mut respond))) = connection.accept().await {
                        let seen = counter.fetch_add(1, Ordering::SeqCst);
                        if seen < refusals {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let head = Response::builder()
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("a static response head");
                        let Ok(mut stream) = respond.send_response(head, false) else {
                            continue;
                        };
                        // One empty message: no compression flag, zero length.
                        let _ = stream.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", HeaderValue::from_static("0"));
                        let _ = stream.send_trailers(trailers);
                    }
                });
            }
        });
        RefusingServer {
            addr,
            streams,
            task,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Streams opened so far, refused ones included.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

impl Drop for RefusingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
