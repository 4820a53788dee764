//! The scripted gRPC server.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, stream};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{Chunk, CollectReply, CountRequest, Numbered, SayReply, SayRequest};
use crate::{Fnv1a64, LOOPBACK_ANY, uri_for};

/// The request metadata key that picks a per-key script ([`ScriptedServer::push_keyed`]): an
/// attempt whose request carries `x-script-key: K` takes its action from `K`'s queue for the
/// method first. Tests use it as a call id, to script and find the attempts of one call among
/// many concurrent ones.
pub const SCRIPT_KEY: &str = "x-script-key";

/// A method of the `Echo` service (or anything else that reached the server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `/tonic_retry.test.Echo/Say` (unary).
    Say,
    /// `/tonic_retry.test.Echo/Count` (server streaming).
    Count,
    /// `/tonic_retry.test.Echo/Collect` (client streaming).
    Collect,
    /// `/tonic_retry.test.Echo/Chat` (bidirectional streaming).
    Chat,
    /// Any other path (e.g. the unserved `Other` service); answered `UNIMPLEMENTED`.
    Unknown,
}

impl Method {
    /// The HTTP/2 `:path` of the method (`""` for [`Method::Unknown`]).
    pub fn path(self) -> &'static str {
        match self {
            Method::Say => "/tonic_retry.test.Echo/Say",
            Method::Count => "/tonic_retry.test.Echo/Count",
            Method::Collect => "/tonic_retry.test.Echo/Collect",
            Method::Chat => "/tonic_retry.test.Echo/Chat",
            Method::Unknown => "",
        }
    }

    /// The method a `:path` names.
    pub fn from_path(path: &str) -> Method {
        [Method::Say, Method::Count, Method::Collect, Method::Chat]
            .into_iter()
            .find(|m| m.path() == path)
            .unwrap_or(Method::Unknown)
    }
}

/// What the server does with one attempt of a method.
///
/// Actions that do not apply to a method behave like [`Action::Ok`] there, except that every
/// "...Fail" action fails the attempt with its status.
#[derive(Clone, Debug)]
pub enum Action {
    /// Normal behaviour: `Say` echoes, `Count` streams the range, `Collect` totals, `Chat` echoes.
    Ok,
    /// Fail at once with this status (a Trailers-Only response; its metadata goes in there too).
    /// For `Collect`/`Chat` the request stream is not read.
    Fail(Status),
    /// `Count`: send up to `messages` messages, then end with `status` in the trailers.
    /// `Chat`: echo up to `messages` chunks, then end with `status`.
    /// `Say`/`Collect`: fail with `status`.
    StreamThenFail {
        /// How many messages to send before failing.
        messages: u64,
        /// The status sent in the trailers.
        status: Status,
    },
    /// `Count`: send up to `messages` messages then end OK. `Chat`: echo that many then end OK.
    StreamThenEnd {
        /// How many messages to send.
        messages: u64,
    },
    /// `Count`/`Chat`: send up to `messages` messages then go silent (stream stays open) until
    /// the server shuts down. Elsewhere the same as [`Action::Hang`].
    StreamThenHang {
        /// How many messages to send before going silent.
        messages: u64,
    },
    /// `Collect`/`Chat`: read `chunks` request messages (all of them if `None`, or fewer if the
    /// client ends first), then fail with `status`. Elsewhere: fail with `status`.
    ReadThenFail {
        /// How many request messages to read first (`None`: the whole request stream).
        chunks: Option<u64>,
        /// The status to fail with.
        status: Status,
    },
    /// `Collect`/`Chat`: read `chunks` request messages (fewer if the client ends first) before
    /// answering anything, then fail with `status` as a Trailers-Only response: no response
    /// headers went out, so a retrying client may replay the call. (For `Chat`, unlike
    /// [`Action::ReadThenFail`], which answers with headers first.) Elsewhere: fail with `status`.
    ReadThenRefuse {
        /// How many request messages to read first.
        chunks: u64,
        /// The status to fail with.
        status: Status,
    },
    /// Never respond (no headers) until the server shuts down, then fail `UNAVAILABLE`.
    Hang,
    /// Wait this long (tokio time, so `tokio::time::pause` applies), then perform the action.
    Delay(Duration, Box<Action>),
    /// `Say`: fail with `status` in `percent` of attempts, drawn from a seeded sequence the
    /// server keeps (SplitMix64 from seed 0), except that an attempt whose
    /// `grpc-previous-rpc-attempts` is at least `spare_after` always succeeds. Elsewhere: OK.
    FailSometimes {
        /// The share of attempts that fail, 0..=100.
        percent: u32,
        /// Attempts with this many previous attempts or more succeed.
        spare_after: u32,
        /// The status of a failed attempt.
        status: Status,
    },
}

impl Action {
    /// [`Action::Fail`] with `code` and `message`.
    pub fn fail(code: Code, message: impl Into<String>) -> Action {
        Action::Fail(Status::new(code, message))
    }

    /// [`Action::Fail`] with extra ASCII metadata in the (trailers-only) response, e.g.
    /// `&[("grpc-retry-pushback-ms", "1000")]`. For keys ending in `-bin` the value's raw bytes
    /// are sent as binary metadata (base64-encoded on the wire; see also
    /// [`Action::fail_with_binary`]).
    ///
    /// # Panics
    /// On an invalid metadata key or value.
    pub fn fail_with(code: Code, message: impl Into<String>, metadata: &[(&str, &str)]) -> Action {
        let mut map = MetadataMap::new();
        for &(k, v) in metadata {
            if k.ends_with("-bin") {
                let key = MetadataKey::from_bytes(k.as_bytes()).expect("valid binary metadata key");
                map.append_bin(key, MetadataValue::from_bytes(v.as_bytes()));
            } else {
                let key = MetadataKey::from_bytes(k.as_bytes()).expect("valid ascii metadata key");
                let val = v.parse().expect("valid ascii metadata value");
                map.append(key, val);
            }
        }
        Action::Fail(Status::with_metadata(code, message, map))
    }

    /// [`Action::Fail`] with one binary (`-bin`) metadata entry holding raw `value` bytes.
    ///
    /// # Panics
    /// If `key` is not a valid binary metadata key (must end in `-bin`).
    pub fn fail_with_binary(
        code: Code,
        message: impl Into<String>,
        key: &str,
        value: &[u8],
    ) -> Action {
        let mut map = MetadataMap::new();
        let key = MetadataKey::from_bytes(key.as_bytes()).expect("valid binary metadata key");
        map.append_bin(key, MetadataValue::from_bytes(value));
        Action::Fail(Status::with_metadata(code, message, map))
    }

    /// Fail with `code` and the gRPC retry pushback trailer `grpc-retry-pushback-ms: {ms}`.
    pub fn pushback(code: Code, ms: u64) -> Action {
        Action::fail_with(
            code,
            "scripted pushback",
            &[("grpc-retry-pushback-ms", &ms.to_string())],
        )
    }

    /// Fail with `code` and a raw (possibly invalid) `grpc-retry-pushback-ms` value.
    pub fn pushback_raw(code: Code, value: &str) -> Action {
        Action::fail_with(
            code,
            "scripted pushback",
            &[("grpc-retry-pushback-ms", value)],
        )
    }

    /// [`Action::StreamThenFail`] with `code` and `message`.
    pub fn stream_then_fail(messages: u64, code: Code, message: impl Into<String>) -> Action {
        Action::StreamThenFail {
            messages,
            status: Status::new(code, message),
        }
    }

    /// [`Action::ReadThenFail`] reading the whole request stream, then failing with `code`.
    pub fn read_all_then_fail(code: Code, message: impl Into<String>) -> Action {
        Action::ReadThenFail {
            chunks: None,
            status: Status::new(code, message),
        }
    }

    /// [`Action::Delay`] of `delay`, then `then`.
    pub fn delay(delay: Duration, then: Action) -> Action {
        Action::Delay(delay, Box::new(then))
    }
}

/// A server-wide gate in front of every method, applied before the handlers (like an auth
/// interceptor/layer); rejected attempts are still recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Auth {
    /// Let everything through.
    #[default]
    Allow,
    /// Answer every call `PERMISSION_DENIED` ("denied by scripted server"), Trailers-Only.
    DenyAll,
    /// Answer every call `UNAUTHENTICATED` ("unauthenticated by scripted server"), Trailers-Only.
    Unauthenticated,
}

/// The initial script of a [`ScriptedServer`]: per-method FIFO queues of [`Action`]s (one
/// consumed per attempt) and per-method defaults for when a queue is empty.
#[derive(Clone, Debug, Default)]
pub struct Script {
    queues: HashMap<Method, VecDeque<Action>>,
    defaults: HashMap<Method, Action>,
    auth: Auth,
    record_payloads: bool,
    health: bool,
    reflection: bool,
    window: Option<u32>,
}

impl Script {
    /// An empty script: every method behaves normally ([`Action::Ok`]).
    pub fn new() -> Script {
        Script {
            record_payloads: true,
            ..Script::default()
        }
    }

    /// Appends `action` to `method`'s queue.
    pub fn then(mut self, method: Method, action: Action) -> Script {
        self.queues.entry(method).or_default().push_back(action);
        self
    }

    /// Appends `action` `n` times to `method`'s queue.
    pub fn then_n(mut self, method: Method, n: usize, action: Action) -> Script {
        let q = self.queues.entry(method).or_default();
        q.extend(std::iter::repeat_n(action, n));
        self
    }

    /// Appends `action` to the `Say` queue.
    pub fn say(self, action: Action) -> Script {
        self.then(Method::Say, action)
    }

    /// Appends `action` to the `Count` queue.
    pub fn count(self, action: Action) -> Script {
        self.then(Method::Count, action)
    }

    /// Appends `action` to the `Collect` queue.
    pub fn collect(self, action: Action) -> Script {
        self.then(Method::Collect, action)
    }

    /// Appends `action` to the `Chat` queue.
    pub fn chat(self, action: Action) -> Script {
        self.then(Method::Chat, action)
    }

    /// The action `method` performs when its queue is empty (initially [`Action::Ok`]).
    pub fn default_action(mut self, method: Method, action: Action) -> Script {
        self.defaults.insert(method, action);
        self
    }

    /// Sets the server-wide gate.
    pub fn auth(mut self, auth: Auth) -> Script {
        self.auth = auth;
        self
    }

    /// Rejects every call with `PERMISSION_DENIED` ([`Auth::DenyAll`]).
    pub fn deny_all(self) -> Script {
        self.auth(Auth::DenyAll)
    }

    /// Rejects every call with `UNAUTHENTICATED` ([`Auth::Unauthenticated`]).
    pub fn unauthenticated(self) -> Script {
        self.auth(Auth::Unauthenticated)
    }

    /// Also serves the standard health service `grpc.health.v1.Health` (tonic-health), with the
    /// server (`""`) and `tonic_retry.test.Echo` SERVING. The [`Auth`] gate applies to it too.
    pub fn health(mut self) -> Script {
        self.health = true;
        self
    }

    /// Also serves server reflection (tonic-reflection, both `grpc.reflection.v1` and
    /// `v1alpha`), describing `proto/echo.proto` ([`crate::FILE_DESCRIPTOR_SET`]): it lists
    /// `tonic_retry.test.Echo` and `tonic_retry.test.Other` (which is described but not served,
    /// like a stale registration), `grpc.health.v1.Health` when [`Script::health`] is on too,
    /// and the reflection services themselves.
    pub fn reflection(mut self) -> Script {
        self.reflection = true;
        self
    }

    /// Advertises HTTP/2 flow-control windows (stream and connection) of `bytes` instead of
    /// hyper's 1 MiB, so that a client sending more must wait for the server to read: HTTP/2's
    /// own default is 65,535.
    pub fn flow_control_window(mut self, bytes: u32) -> Script {
        self.window = Some(bytes);
        self
    }

    /// Whether to keep request payloads in [`Attempt::payload`] (default true; turn off for
    /// benchmarks that push a lot of data).
    pub fn record_payloads(mut self, record: bool) -> Script {
        self.record_payloads = record;
        self
    }
}

/// One attempt (one HTTP/2 request) the server received.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The method called.
    pub method: Method,
    /// The request `:path`.
    pub path: String,
    /// 1-based number of attempts the server has seen for this path, this one included.
    pub number: u32,
    /// All request headers as received (`grpc-timeout`, `grpc-previous-rpc-attempts`,
    /// `te`, `content-type`, custom metadata...).
    pub headers: HeaderMap,
    /// `Say`: the request payload. `Collect`/`Chat`: the concatenated data read so far.
    /// `Count`: empty. Empty when recording is off.
    pub payload: Bytes,
    /// `Say`: the request text.
    pub text: String,
    /// `Count`: the request's `start_after`.
    pub start_after: Option<u64>,
    /// `Collect`/`Chat`: request messages read so far.
    pub chunks: u64,
    /// When the request headers arrived (tokio time).
    pub arrived: Instant,
    /// The request's [`SCRIPT_KEY`] metadata, if any.
    pub key: Option<String>,
    /// Whether the handler took this attempt's action from the script: before that, a fault
    /// on the connection leaves the action queued for the next attempt.
    pub handled: bool,
    /// How the handler ended: `Some(Code::Ok)` when it replied (a streaming method: when it
    /// opened its response stream), `Some(code)` when it failed with `code`, `None` while it
    /// runs, or when it never ended (hung, or its connection was cut first).
    pub outcome: Option<Code>,
    /// Whether the handler was dropped before it ended: the client cancelled the attempt (a
    /// hedge that lost, say), or its connection died. `Say` and `Collect` only.
    pub cancelled: bool,
}

impl Attempt {
    /// The `grpc-previous-rpc-attempts` header parsed as a number, if present and numeric.
    pub fn previous_rpc_attempts(&self) -> Option<u32> {
        self.header("grpc-previous-rpc-attempts")?.parse().ok()
    }

    /// The `grpc-timeout` header, if present (e.g. `"999m"`).
    pub fn grpc_timeout(&self) -> Option<&str> {
        self.header("grpc-timeout")
    }

    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

struct AttemptRec {
    method: Method,
    path: String,
    number: u32,
    headers: HeaderMap,
    payload: BytesMut,
    text: String,
    start_after: Option<u64>,
    chunks: u64,
    arrived: Instant,
    key: Option<String>,
    handled: bool,
    outcome: Option<Code>,
    cancelled: bool,
}

impl AttemptRec {
    fn snapshot(&self) -> Attempt {
        Attempt {
            method: self.method,
            path: self.path.clone(),
            number: self.number,
            headers: self.headers.clone(),
            payload: Bytes::copy_from_slice(&self.payload),
            text: self.text.clone(),
            start_after: self.start_after,
            chunks: self.chunks,
            arrived: self.arrived,
            key: self.key.clone(),
            handled: self.handled,
            outcome: self.outcome,
            cancelled: self.cancelled,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct AttemptTag {
    index: usize,
    number: u32,
}

struct Inner {
    attempts: Vec<AttemptRec>,
    per_path: HashMap<String, u32>,
    /// Attempts seen per [`SCRIPT_KEY`].
    per_key: HashMap<String, u32>,
    /// Per-key queues: they come before the method's own queue.
    keyed: HashMap<(String, Method), VecDeque<Action>>,
    queues: HashMap<Method, VecDeque<Action>>,
    defaults: HashMap<Method, Action>,
    auth: Auth,
    record_payloads: bool,
    /// State of the SplitMix64 sequence behind [`Action::FailSometimes`].
    random: u64,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Total number of attempts recorded; bumped on every arrival.
    arrivals: watch::Sender<usize>,
    /// Cancelled when the server starts shutting down: hung handlers give up.
    draining: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arrive(&self, path: &str, headers: HeaderMap) -> (AttemptTag, Auth) {
        let key = headers
            .get(SCRIPT_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (tag, auth, total) = {
            let mut inner = self.lock();
            if let Some(key) = &key {
                *inner.per_key.entry(key.clone()).or_insert(0) += 1;
            }
            let number = {
                let n = inner.per_path.entry(path.to_owned()).or_insert(0);
                *n += 1;
                *n
            };
            let index = inner.attempts.len();
            inner.attempts.push(AttemptRec {
                method: Method::from_path(path),
                path: path.to_owned(),
                number,
                headers,
                payload: BytesMut::new(),
                text: String::new(),
                start_after: None,
                chunks: 0,
                arrived: Instant::now(),
                key,
                handled: false,
                outcome: None,
                cancelled: false,
            });
            (
                AttemptTag { index, number },
                inner.auth,
                inner.attempts.len(),
            )
        };
        self.arrivals.send_replace(total);
        (tag, auth)
    }

    /// The next number of the seeded sequence, uniform in 0..100.
    fn next_percentile(&self) -> u32 {
        let mut inner = self.lock();
        inner.random = inner.random.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = inner.random;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % 100) as u32
    }

    /// The attempt's action, taken from its script: from now on it is [`Attempt::handled`].
    fn next_action(&self, method: Method, tag: Option<AttemptTag>) -> Action {
        let action = {
            let mut inner = self.lock();
            let record = tag.and_then(|t| inner.attempts.get_mut(t.index));
            let key = record.and_then(|rec| {
                rec.handled = true;
                rec.key.clone()
            });
            let keyed = key.and_then(|key| {
                inner
                    .keyed
                    .get_mut(&(key, method))
                    .and_then(VecDeque::pop_front)
            });
            match keyed {
                Some(action) => action,
                None => match inner.queues.get_mut(&method).and_then(VecDeque::pop_front) {
                    Some(action) => action,
                    None => inner.defaults.get(&method).cloned().unwrap_or(Action::Ok),
                },
            }
        };
        // Wakes `wait_handled*` (the count of arrivals is unchanged).
        self.arrivals.send_modify(|_| {});
        action
    }

    /// Records how the handler of the attempt ended.
    fn end(&self, tag: Option<AttemptTag>, code: Code) {
        self.update(tag, |rec, _| rec.outcome = Some(code));
    }

    fn update(&self, tag: Option<AttemptTag>, f: impl FnOnce(&mut AttemptRec, bool)) {
        if let Some(tag) = tag {
            let mut inner = self.lock();
            let record = inner.record_payloads;
            if let Some(rec) = inner.attempts.get_mut(tag.index) {
                f(rec, record);
            }
        }
    }

    fn add_chunk(&self, tag: Option<AttemptTag>, data: &[u8]) {
        self.update(tag, |rec, record| {
            rec.chunks += 1;
            if record {
                rec.payload.extend_from_slice(data);
            }
        });
    }

    /// Resolves delays and hangs into a terminal action.
    async fn resolve(&self, mut action: Action) -> Action {
        loop {
            match action {
                Action::Delay(d, next) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => action = *next,
                        _ = self.draining.cancelled() => return Action::Fail(shutting_down()),
                    }
                }
                Action::Hang => {
                    self.draining.cancelled().await;
                    return Action::Fail(shutting_down());
                }
                other => return other,
            }
        }
    }
}

fn shutting_down() -> Status {
    Status::unavailable("scripted server shutting down")
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
struct EchoSvc {
    shared: Arc<Shared>,
}

fn tag_of<T>(req: &Request<T>) -> Option<AttemptTag> {
    req.extensions().get::<AttemptTag>().copied()
}

/// Marks its attempt [`Attempt::cancelled`] if the handler is dropped before it ended.
struct CancelGuard {
    shared: Arc<Shared>,
    tag: Option<AttemptTag>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let mut cancelled = false;
        self.shared.update(self.tag, |rec, _| {
            if rec.outcome.is_none() {
                rec.cancelled = true;
                cancelled = true;
            }
        });
        if cancelled {
            // Wakes `wait_cancelled`.
            self.shared.arrivals.send_modify(|_| {});
        }
    }
}

#[tonic::async_trait]
impl Echo for EchoSvc {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        let tag = tag_of(&request);
        let _guard = CancelGuard {
            shared: self.shared.clone(),
            tag,
        };
        let mut action = self.shared.next_action(Method::Say, tag);
        if let Action::FailSometimes {
            percent,
            spare_after,
            status,
        } = action
        {
            let previous: u32 = request
                .metadata()
                .get("grpc-previous-rpc-attempts")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            let fail = previous < spare_after && self.shared.next_percentile() < percent;
            action = if fail {
                Action::Fail(status)
            } else {
                Action::Ok
            };
        }
        let msg = request.into_inner();
        self.shared.update(tag, |rec, record| {
            if record {
                rec.payload.extend_from_slice(&msg.payload);
            }
            rec.text.clone_from(&msg.text);
        });
        let reply = match self.shared.resolve(action).await {
            Action::Fail(status)
            | Action::StreamThenFail { status, .. }
            | Action::ReadThenFail { status, .. }
            | Action::ReadThenRefuse { status, .. } => Err(status),
            Action::StreamThenHang { .. } => {
                self.shared.draining.cancelled().await;
                Err(shutting_down())
            }
            _ => Ok(Response::new(SayReply {
                payload: msg.payload,
                text: msg.text,
                attempt: tag.map_or(0, |t| t.number),
            })),
        };
        self.shared
            .end(tag, reply.as_ref().map_or_else(Status::code, |_| Code::Ok));
        reply
    }

    type CountStream = BoxStream<Numbered>;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        let tag = tag_of(&request);
        let action = self.shared.next_action(Method::Count, tag);
        let msg = request.into_inner();
        self.shared
            .update(tag, |rec, _| rec.start_after = Some(msg.start_after));
        let padding = Bytes::from(vec![0u8; msg.padding_len as usize]);
        let range = (msg.start_after.saturating_add(1))..=msg.count;
        let messages = move |limit: u64| {
            let padding = padding.clone();
            stream::iter(
                range
                    .clone()
                    .take(usize::try_from(limit).unwrap_or(usize::MAX)),
            )
            .map(move |seq| {
                Ok(Numbered {
                    seq,
                    padding: padding.clone(),
                })
            })
        };
        let draining = self.shared.draining.clone();
        let out: BoxStream<Numbered> = match self.shared.resolve(action).await {
            Action::Fail(status)
            | Action::ReadThenFail { status, .. }
            | Action::ReadThenRefuse { status, .. } => {
                self.shared.end(tag, status.code());
                return Err(status);
            }
            Action::StreamThenFail {
                messages: k,
                status,
            } => Box::pin(messages(k).chain(stream::once(async move { Err(status) }))),
            Action::StreamThenEnd { messages: k } => Box::pin(messages(k)),
            Action::StreamThenHang { messages: k } => {
                Box::pin(messages(k).chain(stream::once(async move {
                    draining.cancelled().await;
                    Err(shutting_down())
                })))
            }
            _ => Box::pin(messages(u64::MAX)),
        };
        self.shared.end(tag, Code::Ok);
        Ok(Response::new(out))
    }

    async fn collect(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<CollectReply>, Status> {
        let tag = tag_of(&request);
        let _guard = CancelGuard {
            shared: self.shared.clone(),
            tag,
        };
        let reply = self.collect_inner(tag, request).await;
        self.shared
            .end(tag, reply.as_ref().map_or_else(Status::code, |_| Code::Ok));
        reply
    }

    type ChatStream = BoxStream<Chunk>;

    async fn chat(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let tag = tag_of(&request);
        let action = self.shared.next_action(Method::Chat, tag);
        let mut inbound = request.into_inner();
        // (echo limit, what happens after the limit)
        let (limit, after) = match self.shared.resolve(action).await {
            Action::Fail(status) => {
                self.shared.end(tag, status.code());
                return Err(status);
            }
            Action::ReadThenRefuse { chunks, status } => {
                let status = match self.read_chunks(tag, &mut inbound, chunks).await {
                    Ok(()) => status,
                    Err(error) => error,
                };
                self.shared.end(tag, status.code());
                return Err(status);
            }
            Action::StreamThenFail { messages, status } => (messages, After::Fail(status)),
            Action::StreamThenEnd { messages } => (messages, After::End),
            Action::StreamThenHang { messages } => (messages, After::Hang),
            Action::ReadThenFail { chunks, status } => {
                (chunks.unwrap_or(u64::MAX), After::ReadFail(status))
            }
            _ => (u64::MAX, After::End),
        };
        self.shared.end(tag, Code::Ok);
        let state = ChatState {
            inbound,
            shared: self.shared.clone(),
            tag,
            sent: 0,
            limit,
            after: Some(after),
        };
        Ok(Response::new(Box::pin(stream::unfold(state, chat_step))))
    }
}

impl EchoSvc {
    /// Reads up to `limit` request messages, recording them; stops early at the end.
    async fn read_chunks(
        &self,
        tag: Option<AttemptTag>,
        inbound: &mut Streaming<Chunk>,
        limit: u64,
    ) -> Result<(), Status> {
        let mut read = 0;
        while read < limit {
            let next = tokio::select! {
                n = inbound.message() => n?,
                _ = self.shared.draining.cancelled() => return Err(shutting_down()),
            };
            let Some(chunk) = next else { break };
            self.shared.add_chunk(tag, &chunk.data);
            read += 1;
        }
        Ok(())
    }

    async fn collect_inner(
        &self,
        tag: Option<AttemptTag>,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<CollectReply>, Status> {
        let action = self.shared.next_action(Method::Collect, tag);
        let mut inbound = request.into_inner();
        let (limit, fail) = match self.shared.resolve(action).await {
            Action::Fail(status) | Action::StreamThenFail { status, .. } => return Err(status),
            Action::ReadThenFail { chunks, status } => (chunks, Some(status)),
            Action::ReadThenRefuse { chunks, status } => (Some(chunks), Some(status)),
            Action::StreamThenHang { .. } => {
                self.shared.draining.cancelled().await;
                return Err(shutting_down());
            }
            _ => (None, None),
        };
        let mut total = 0u64;
        let mut chunks = 0u64;
        let mut hash = Fnv1a64::new();
        while limit.is_none_or(|l| chunks < l) {
            let next = tokio::select! {
                n = inbound.message() => n?,
                _ = self.shared.draining.cancelled() => return Err(shutting_down()),
            };
            let Some(chunk) = next else { break };
            self.shared.add_chunk(tag, &chunk.data);
            total += chunk.data.len() as u64;
            chunks += 1;
            hash = hash.update(&chunk.data);
        }
        if let Some(status) = fail {
            return Err(status);
        }
        Ok(Response::new(CollectReply {
            total_bytes: total,
            chunks: u32::try_from(chunks).unwrap_or(u32::MAX),
            checksum: hash.finish(),
        }))
    }
}

enum After {
    End,
    Fail(Status),
    Hang,
    /// Read (without echoing) and then fail.
    ReadFail(Status),
}

struct ChatState {
    inbound: Streaming<Chunk>,
    shared: Arc<Shared>,
    tag: Option<AttemptTag>,
    sent: u64,
    limit: u64,
    after: Option<After>,
}

async fn chat_step(mut st: ChatState) -> Option<(Result<Chunk, Status>, ChatState)> {
    let echo = !matches!(st.after, Some(After::ReadFail(_)));
    while st.sent < st.limit {
        let next = tokio::select! {
            n = st.inbound.message() => n,
            _ = st.shared.draining.cancelled() => Err(shutting_down()),
        };
        match next {
            Ok(Some(chunk)) => {
                st.shared.add_chunk(st.tag, &chunk.data);
                st.sent += 1;
                if echo {
                    return Some((Ok(chunk), st));
                }
            }
            Ok(None) => break,
            Err(status) => {
                st.after = None;
                return Some((Err(status), st));
            }
        }
    }
    match st.after.take()? {
        After::End => None,
        After::Fail(status) | After::ReadFail(status) => Some((Err(status), st)),
        After::Hang => {
            st.shared.draining.cancelled().await;
            Some((Err(shutting_down()), st))
        }
    }
}

// ---- the gate layer: records every attempt and applies `Auth` before routing ----

#[derive(Clone)]
struct GateLayer {
    shared: Arc<Shared>,
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;
    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
struct Gate<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Gate<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let (tag, auth) = self.shared.arrive(req.uri().path(), req.headers().clone());
        match auth {
            Auth::Allow => {
                req.extensions_mut().insert(tag);
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Auth::DenyAll => {
                let resp = Status::permission_denied("denied by scripted server").into_http();
                Box::pin(std::future::ready(Ok(resp)))
            }
            Auth::Unauthenticated => {
                let resp =
                    Status::unauthenticated("unauthenticated by scripted server").into_http();
                Box::pin(std::future::ready(Ok(resp)))
            }
        }
    }
}

// ---- killable connections, so dropping the server really drops its connections ----

struct KillableIo {
    inner: TcpStream,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
}

impl KillableIo {
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        if self.dead {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "scripted server killed",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for KillableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for KillableIo {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// A real tonic server for the `Echo` service on loopback, following a [`Script`].
///
/// Dropping it kills it abruptly: the listener closes and every open connection is dropped
/// (clients see the connection die). [`ScriptedServer::shutdown`] stops it gracefully instead.
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    graceful: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    kill: CancellationToken,
    health: Option<tonic_health::server::HealthReporter>,
}

impl fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .field("attempts", &self.attempt_count())
            .finish()
    }
}

impl ScriptedServer {
    /// Starts a server on an ephemeral loopback port (`127.0.0.1:0`).
    ///
    /// # Panics
    /// If binding the loopback port fails.
    pub async fn start(script: Script) -> ScriptedServer {
        ScriptedServer::start_on(LOOPBACK_ANY, script)
            .await
            .expect("bind 127.0.0.1:0")
    }

    /// Starts a server on `addr` (e.g. the address of a server that was shut down, to
    /// simulate a restart). Fails if the address is in use.
    pub async fn start_on(addr: SocketAddr, script: Script) -> io::Result<ScriptedServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (arrivals, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                attempts: Vec::new(),
                per_path: HashMap::new(),
                per_key: HashMap::new(),
                keyed: HashMap::new(),
                queues: script.queues,
                defaults: script.defaults,
                auth: script.auth,
                record_payloads: script.record_payloads,
                random: 0,
            }),
            arrivals,
            draining: CancellationToken::new(),
        });
        let kill = CancellationToken::new();
        let incoming = {
            let kill = kill.clone();
            stream::unfold(listener, move |listener| {
                let kill = kill.clone();
                async move {
                    let item = listener.accept().await.map(|(stream, _)| {
                        let _ = stream.set_nodelay(true);
                        KillableIo {
                            inner: stream,
                            killed: Box::pin(kill.cancelled_owned()),
                            dead: false,
                        }
                    });
                    Some((item, listener))
                }
            })
        };
        let (tx, rx) = oneshot::channel::<()>();
        let svc = EchoServer::new(EchoSvc {
            shared: shared.clone(),
        })
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
        let health = if script.health {
            let (reporter, service) = tonic_health::server::health_reporter();
            reporter.set_serving::<EchoServer<EchoSvc>>().await;
            Some((reporter, service))
        } else {
            None
        };
        let (health_reporter, health_service) = health.unzip();
        let (reflection_v1, reflection_v1alpha) = if script.reflection {
            let with_health = script.health;
            let builder = || {
                let builder = tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET);
                if with_health {
                    builder
                        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                } else {
                    builder
                }
            };
            let v1 = builder().build_v1().map_err(io::Error::other)?;
            let v1alpha = builder().build_v1alpha().map_err(io::Error::other)?;
            (Some(v1), Some(v1alpha))
        } else {
            (None, None)
        };
        let router = Server::builder()
            .initial_stream_window_size(script.window)
            .initial_connection_window_size(script.window)
            .layer(GateLayer {
                shared: shared.clone(),
            })
            .add_service(svc)
            .add_optional_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = rx.await;
        }));
        Ok(ScriptedServer {
            addr,
            shared,
            graceful: Some(tx),
            task: Some(task),
            kill,
            health: health_reporter,
        })
    }

    /// The health reporter, when the server serves the health service ([`Script::health`]):
    /// change what `grpc.health.v1.Health` answers.
    pub fn health_reporter(&self) -> Option<&tonic_health::server::HealthReporter> {
        self.health.as_ref()
    }

    /// The bound address (`127.0.0.1:port`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port`.
    pub fn uri(&self) -> http::Uri {
        uri_for(self.addr)
    }

    /// Appends `action` to `method`'s queue.
    pub fn push(&self, method: Method, action: Action) {
        self.shared
            .lock()
            .queues
            .entry(method)
            .or_default()
            .push_back(action);
    }

    /// Appends `action` to the queue of `method` for requests whose [`SCRIPT_KEY`] metadata is
    /// `key`; such requests use the method's own queue and default once it is empty.
    pub fn push_keyed(&self, key: &str, method: Method, action: Action) {
        self.shared
            .lock()
            .keyed
            .entry((key.to_owned(), method))
            .or_default()
            .push_back(action);
    }

    /// The attempts received so far whose [`SCRIPT_KEY`] metadata is `key`, in arrival order.
    pub fn attempts_keyed(&self, key: &str) -> Vec<Attempt> {
        self.shared
            .lock()
            .attempts
            .iter()
            .filter(|a| a.key.as_deref() == Some(key))
            .map(AttemptRec::snapshot)
            .collect()
    }

    /// Waits until at least `n` attempts with [`SCRIPT_KEY`] `key` have arrived.
    pub async fn wait_attempts_keyed(&self, key: &str, n: u32) {
        let mut rx = self.shared.arrivals.subscribe();
        let _ = rx
            .wait_for(|_| self.shared.lock().per_key.get(key).copied().unwrap_or(0) >= n)
            .await;
    }

    /// Waits until the handlers of at least `n` attempts (all methods) have taken their action
    /// ([`Attempt::handled`]). An attempt can arrive (its headers) before its handler runs
    /// (once its request message is in): a fault injected in between hits an attempt whose
    /// action is still queued, and the next attempt gets it instead.
    pub async fn wait_handled(&self, n: usize) {
        let mut rx = self.shared.arrivals.subscribe();
        let _ = rx
            .wait_for(|_| {
                self.shared
                    .lock()
                    .attempts
                    .iter()
                    .filter(|a| a.handled)
                    .count()
                    >= n
            })
            .await;
    }

    /// Waits until at least `n` attempts have been cancelled by the client
    /// ([`Attempt::cancelled`]).
    pub async fn wait_cancelled(&self, n: usize) {
        let mut rx = self.shared.arrivals.subscribe();
        let _ = rx
            .wait_for(|_| {
                let inner = self.shared.lock();
                inner.attempts.iter().filter(|a| a.cancelled).count() >= n
            })
            .await;
    }

    /// Waits until the handlers of at least `n` attempts with [`SCRIPT_KEY`] `key` have taken
    /// their action (see [`ScriptedServer::wait_handled`]).
    pub async fn wait_handled_keyed(&self, key: &str, n: usize) {
        let mut rx = self.shared.arrivals.subscribe();
        let _ = rx
            .wait_for(|_| {
                let inner = self.shared.lock();
                let handled = inner
                    .attempts
                    .iter()
                    .filter(|a| a.handled && a.key.as_deref() == Some(key));
                handled.count() >= n
            })
            .await;
    }

    /// Sets the action `method` performs once its queue is empty.
    pub fn set_default(&self, method: Method, action: Action) {
        self.shared.lock().defaults.insert(method, action);
    }

    /// Drops the queued (not yet consumed) actions of `method`.
    pub fn clear_queue(&self, method: Method) {
        self.shared.lock().queues.remove(&method);
    }

    /// Changes the server-wide gate for subsequent attempts.
    pub fn set_auth(&self, auth: Auth) {
        self.shared.lock().auth = auth;
    }

    /// Every attempt received so far, in arrival order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared
            .lock()
            .attempts
            .iter()
            .map(AttemptRec::snapshot)
            .collect()
    }

    /// The attempts received so far for `method`, in arrival order.
    pub fn attempts_for(&self, method: Method) -> Vec<Attempt> {
        self.shared
            .lock()
            .attempts
            .iter()
            .filter(|a| a.method == method)
            .map(AttemptRec::snapshot)
            .collect()
    }

    /// Number of attempts received so far (all methods).
    pub fn attempt_count(&self) -> usize {
        self.shared.lock().attempts.len()
    }

    /// Number of attempts received so far for `method`.
    pub fn attempt_count_for(&self, method: Method) -> usize {
        self.shared
            .lock()
            .attempts
            .iter()
            .filter(|a| a.method == method)
            .count()
    }

    /// Waits until at least `n` attempts (all methods) have arrived.
    pub async fn wait_attempts(&self, n: usize) {
        let mut rx = self.shared.arrivals.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|&total| total >= n).await;
    }

    /// Waits until at least `n` attempts for `method` have arrived.
    pub async fn wait_attempts_for(&self, method: Method, n: usize) {
        let mut rx = self.shared.arrivals.subscribe();
        let _ = rx.wait_for(|_| self.attempt_count_for(method) >= n).await;
    }

    /// Graceful shutdown: stops accepting, sends GOAWAY on every connection, lets in-flight
    /// calls finish (hung and silent calls, and open `Chat`s, end with `UNAVAILABLE`
    /// "scripted server shutting down"), and waits until all connections have closed.
    pub async fn shutdown(mut self) {
        self.shared.draining.cancel();
        if let Some(tx) = self.graceful.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Abrupt stop, the same as dropping: listener closed, connections dropped at once.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.kill.cancel();
        self.shared.draining.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
