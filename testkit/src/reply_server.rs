//! A bare HTTP/2 server whose answers are written field by field: any HTTP status, any header
//! bytes (repeated names, bytes that are not UTF-8), data frames, and trailers or none. For the
//! peer data a tonic server never sends, such as a 204, a `grpc-status` of `"+14"`, or invalid
//! `grpc-status-details-bin` in the trailers of a call that already committed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::LOOPBACK_ANY;

/// One answer of a [`ReplyServer`]: a response head, data frames, then trailers (or the end of
/// the stream on the last frame when there are none).
#[derive(Debug, Clone)]
pub struct RawReply {
    /// Informational (1xx) heads sent before the final one.
    informational: Vec<StatusCode>,
    status: StatusCode,
    headers: HeaderMap,
    data: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl RawReply {
    /// A head with HTTP `status` and `content-type: application/grpc`, and nothing else yet:
    /// sent alone, it is a Trailers-Only response.
    ///
    /// # Panics
    /// If `status` is not a valid HTTP status code (100..=999).
    pub fn new(status: u16) -> RawReply {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        RawReply {
            informational: Vec::new(),
            status: StatusCode::from_u16(status).expect("a valid HTTP status"),
            headers,
            data: Vec::new(),
            trailers: None,
        }
    }

    /// HTTP 200 with `content-type: application/grpc`: the head of a normal gRPC response.
    pub fn ok() -> RawReply {
        RawReply::new(200)
    }

    /// Sends an informational head (`103 Early Hints`, say) before the final one.
    ///
    /// # Panics
    /// If `status` is not in 100..=199.
    pub fn informational(mut self, status: u16) -> RawReply {
        let status = StatusCode::from_u16(status).expect("a valid HTTP status");
        assert!(status.is_informational(), "{status} is not informational");
        self.informational.push(status);
        self
    }

    /// Appends a header field (a name may repeat; the value is sent as these exact bytes).
    ///
    /// # Panics
    /// If the name or the value is not a valid HTTP header field.
    pub fn header(mut self, name: &str, value: &[u8]) -> RawReply {
        self.headers.append(field_name(name), field_value(value));
        self
    }

    /// Takes out every header field of `name` (`content-type`, say).
    pub fn without_header(mut self, name: &str) -> RawReply {
        self.headers.remove(field_name(name));
        self
    }

    /// Appends a data frame holding one gRPC message: the uncompressed flag, the length, then
    /// `encoded` (a message encoded with `prost::Message::encode_to_vec`, say).
    pub fn message(mut self, encoded: &[u8]) -> RawReply {
        let mut frame = BytesMut::with_capacity(5 + encoded.len());
        frame.put_u8(0);
        frame.put_u32(u32::try_from(encoded.len()).expect("a message under 4 GiB"));
        frame.put_slice(encoded);
        self.data.push(frame.freeze());
        self
    }

    /// Appends a data frame of these raw bytes (not framed as a gRPC message).
    pub fn data(mut self, raw: &[u8]) -> RawReply {
        self.data.push(Bytes::copy_from_slice(raw));
        self
    }

    /// Appends a trailer field: the answer ends with a trailers frame.
    ///
    /// # Panics
    /// If the name or the value is not a valid HTTP header field.
    pub fn trailer(mut self, name: &str, value: &[u8]) -> RawReply {
        self.trailers
            .get_or_insert_with(HeaderMap::new)
            .append(field_name(name), field_value(value));
        self
    }
}

fn field_name(name: &str) -> HeaderName {
    HeaderName::from_bytes(name.as_bytes()).expect("a valid header name")
}

fn field_value(value: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(value).expect("a valid header value")
}

/// An HTTP/2 server on 127.0.0.1 that answers its requests from a list of [`RawReply`]s: the
/// first request gets the first, and so on; the last answers every request after it. It counts
/// the requests it answered, and does not read request bodies.
#[derive(Debug)]
pub struct ReplyServer {
    addr: SocketAddr,
    streams: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl ReplyServer {
    /// Starts the server.
    ///
    /// # Panics
    /// If `replies` is empty, or 127.0.0.1 cannot be bound.
    pub async fn start(replies: Vec<RawReply>) -> ReplyServer {
        assert!(
            !replies.is_empty(),
            "a ReplyServer needs at least one reply"
        );
        let replies: Arc<[RawReply]> = replies.into();
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
                let replies = Arc::clone(&replies);
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::handshake(socket).await else {
                        return;
                    };
                    while let Some(Ok((_request, respond))) = connection.accept().await {
                        let seen = counter.fetch_add(1, Ordering::SeqCst);
                        let reply = &replies[seen.min(replies.len() - 1)];
                        answer(respond, reply);
                    }
                });
            }
        });
        ReplyServer {
            addr,
            streams,
            task,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

impl Drop for ReplyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `reply` on `respond`, ending the stream on its last frame.
fn answer(mut respond: h2::server::SendResponse<Bytes>, reply: &RawReply) {
    for status in &reply.informational {
        let mut early = Response::new(());
        *early.status_mut() = *status;
        if respond.send_informational(early).is_err() {
            return;
        }
    }
    let mut head = Response::new(());
    *head.status_mut() = reply.status;
    *head.headers_mut() = reply.headers.clone();
    let head_ends = reply.data.is_empty() && reply.trailers.is_none();
    let Ok(mut stream) = respond.send_response(head, head_ends) else {
        return;
    };
    if head_ends {
        return;
    }
    let last = reply.data.len().saturating_sub(1);
    for (index, frame) in reply.data.iter().enumerate() {
        let ends = index == last && reply.trailers.is_none();
        if stream.send_data(frame.clone(), ends).is_err() {
            return;
        }
    }
    if let Some(trailers) = &reply.trailers {
        let _ = stream.send_trailers(trailers.clone());
    }
}
