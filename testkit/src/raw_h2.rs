//! Bare HTTP/2 servers (the `h2` crate or raw frames, no gRPC stack) for faults a tonic server
//! cannot be made to produce on demand: resetting a stream with a chosen `RST_STREAM` reason,
//! `GOAWAY` with a chosen reason, and response heads a tonic server never sends (a repeated
//! `grpc-status`, a repeated pushback, invalid details).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::LOOPBACK_ANY;
use crate::reply_server::{RawReply, ReplyServer};

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
        RefusingServer::start_with_reason(refusals, h2::Reason::REFUSED_STREAM).await
    }

    /// Starts a server that resets its first `resets` streams with `RST_STREAM(reason)` (before
    /// any response header), then answers like [`RefusingServer::start`].
    pub async fn start_with_reason(resets: usize, reason: h2::Reason) -> RefusingServer {
        let refusals = resets;
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
                            respond.send_reset(reason);
                            continue;
                        }
                        answer_ok(respond);
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

/// Answers a request with an empty gRPC message and `grpc-status: 0`.
fn answer_ok(mut respond: h2::server::SendResponse<Bytes>) {
    let head = Response::builder()
        .header("content-type", "application/grpc")
        .body(())
        .expect("a static response head");
    let Ok(mut stream) = respond.send_response(head, false) else {
        return;
    };
    // One empty message: no compression flag, zero length.
    let _ = stream.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), false);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}

/// Serves one connection with [`answer_ok`] for every request.
async fn serve_ok(socket: tokio::net::TcpStream) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((_request, respond))) = connection.accept().await {
        answer_ok(respond);
    }
}

impl Drop for RefusingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/2 server on 127.0.0.1 that answers the first request of each connection with
/// `GOAWAY(last stream id 0, reason)` and nothing else, the way a server going away under load
/// behaves: the request was never processed. It speaks raw frames (not the `h2` crate), so the
/// GOAWAY is sent only once the request's HEADERS arrived, and the connection stays open
/// afterwards (the client sees the GOAWAY, not an end of file).
#[derive(Debug)]
pub struct GoAwayServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GoAwayServer {
    /// Starts the server.
    pub async fn start(reason: h2::Reason) -> GoAwayServer {
        GoAwayServer::start_then_serve(reason, usize::MAX).await
    }

    /// Starts a server that sends `GOAWAY(reason)` on its first `connections` connections, then
    /// answers every request of later connections with an empty message and `grpc-status: 0`.
    pub async fn start_then_serve(reason: h2::Reason, connections: usize) -> GoAwayServer {
        let listener = TcpListener::bind(LOOPBACK_ANY)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local_addr of a bound listener");
        let task = tokio::spawn(async move {
            let mut accepted = 0usize;
            while let Ok((socket, _)) = listener.accept().await {
                if accepted < connections {
                    tokio::spawn(go_away_on_first_headers(socket, u32::from(reason)));
                } else {
                    tokio::spawn(serve_ok(socket));
                }
                accepted = accepted.saturating_add(1);
            }
        });
        GoAwayServer { addr, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GoAwayServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a raw-frame server answers to the first request HEADERS of a connection.
#[derive(Clone, Copy, Debug)]
enum FirstReply {
    /// `GOAWAY(last stream id 0, reason)`.
    GoAway(u32),
    /// A response HEADERS frame whose header block is not valid HPACK.
    GarbledHeaders,
}

/// Reads the client preface and frames; answers SETTINGS, and the first HEADERS with `GOAWAY`.
async fn go_away_on_first_headers(socket: tokio::net::TcpStream, reason: u32) {
    answer_first_headers(socket, FirstReply::GoAway(reason)).await;
}

/// Reads the client preface and frames; answers SETTINGS, and the first HEADERS with `reply`.
async fn answer_first_headers(mut socket: tokio::net::TcpStream, reply: FirstReply) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const GOAWAY: u8 = 0x7;
    const END_STREAM_AND_HEADERS: u8 = 0x5;
    let frame = |kind: u8, flags: u8, stream: [u8; 4], payload: &[u8]| {
        let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream);
        out.extend_from_slice(payload);
        out
    };
    let mut preface = [0u8; 24];
    if socket.read_exact(&mut preface).await.is_err()
        || socket
            .write_all(&frame(SETTINGS, 0, [0; 4], &[]))
            .await
            .is_err()
    {
        return;
    }
    let mut answered = false;
    loop {
        let mut head = [0u8; 9];
        if socket.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if socket.read_exact(&mut payload).await.is_err() {
            return;
        }
        let out = match head[3] {
            SETTINGS if head[4] & 0x1 == 0 => frame(SETTINGS, 0x1, [0; 4], &[]),
            HEADERS if !answered => {
                answered = true;
                match reply {
                    FirstReply::GoAway(reason) => {
                        let mut body = 0u32.to_be_bytes().to_vec();
                        body.extend_from_slice(&reason.to_be_bytes());
                        frame(GOAWAY, 0, [0; 4], &body)
                    }
                    // An indexed header field whose index is far past both tables.
                    FirstReply::GarbledHeaders => frame(
                        HEADERS,
                        END_STREAM_AND_HEADERS,
                        [head[5], head[6], head[7], head[8]],
                        &[0xff, 0xff, 0xff, 0x7f],
                    ),
                }
            }
            _ => continue,
        };
        if socket.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// An HTTP/2 server on 127.0.0.1 that answers the first request of each connection with a
/// response HEADERS frame that is not valid HPACK: the client's HTTP/2 stack detects the
/// protocol error itself and closes the connection (a local GOAWAY).
#[derive(Debug)]
pub struct GarbledServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl GarbledServer {
    /// Starts the server.
    pub async fn start() -> GarbledServer {
        let listener = TcpListener::bind(LOOPBACK_ANY)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("local_addr of a bound listener");
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer_first_headers(socket, FirstReply::GarbledHeaders));
            }
        });
        GarbledServer { addr, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GarbledServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/2 server on 127.0.0.1 that answers every request with the same Trailers-Only
/// response head: HTTP 200, `content-type: application/grpc`, then the given header fields in
/// order (a name may repeat), and end of stream. It counts the requests it answered. (A
/// [`ReplyServer`] with one reply, kept for its shorter spelling.)
#[derive(Debug)]
pub struct HeadServer(ReplyServer);

impl HeadServer {
    /// Starts the server.
    ///
    /// # Panics
    /// If a name or value is not a valid HTTP header field.
    pub async fn start(fields: &[(&str, &str)]) -> HeadServer {
        let head = fields.iter().fold(RawReply::ok(), |head, (name, value)| {
            head.header(name, value.as_bytes())
        });
        HeadServer(ReplyServer::start(vec![head]).await)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// Requests answered so far.
    pub fn streams(&self) -> usize {
        self.0.streams()
    }
}
