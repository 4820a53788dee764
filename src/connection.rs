//! HTTP/2 keepalive for the tonic `Endpoint` under the layer, and [`EvictingChannel`]: how a
//! dead connection is found and replaced.
//!
//! A connection can die without a word: the peer's host crashed, a NAT or load balancer dropped
//! its mapping, a route went away. Such a half-open TCP connection sends no FIN and no RST, so
//! neither hyper nor tonic learns that it is dead, and tonic's `Channel` keeps handing calls to
//! it. A retry does not help: the next attempt goes down the same dead connection. Two things
//! find it out. HTTP/2 keepalive pings: when a ping is not answered within the timeout, hyper
//! closes the connection and every call on it fails: a call still waiting for response headers
//! with UNAVAILABLE, which the layer retries, and the `Channel` dials a new connection for that
//! retry; a response stream already flowing ends with an error (the call is committed, so that
//! is for the caller or a [`ResumableStream`](crate::ResumableStream) to handle). And, sooner,
//! an attempt that runs out of time unanswered: the layer marks its retry
//! ([`AfterAttemptTimeout`]) and an [`EvictingChannel`] under the layer sends that retry on a new
//! connection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project::pin_project;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

use crate::error::ConfigError;

/// HTTP/2 keepalive settings for a tonic [`Endpoint`], so that a connection that went silent is
/// detected and replaced.
///
/// A connection that stops answering is closed at most [`detection_time`](Self::detection_time)
/// (interval + timeout) after it went silent; the call on it fails and is retried on a new
/// connection. Keep the policy's [`attempt_timeout`](crate::RetryPolicyBuilder::attempt_timeout)
/// *longer* than that, or put an [`EvictingChannel`] under the layer: on a plain `Channel`, an
/// attempt that times out first is retried down the same dead connection, which tonic still
/// holds for alive.
///
/// ```
/// use std::time::Duration;
/// use tonic::transport::Endpoint;
/// use tonic_retry::{Keepalive, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tonic_retry::ConfigError> {
/// let keepalive = Keepalive::new(Duration::from_secs(10), Duration::from_secs(5))?;
/// let channel = keepalive
///     .apply(Endpoint::from_static("http://127.0.0.1:50051"))
///     .connect_lazy();
/// let policy = RetryPolicy::builder()
///     // Longer than the 15 s it takes to find a dead connection.
///     .attempt_timeout(Duration::from_secs(20))
///     .build()?;
/// let layer = RetryLayer::builder().default_policy(policy).build()?;
/// let channel = tower::ServiceBuilder::new().layer(layer).service(channel);
/// # let _ = channel;
/// # Ok(()) }
/// ```
///
/// # The server must allow the pings
///
/// gRPC servers police pings. grpc-go and gRPC C-core (C++, Python, Ruby...) servers by default
/// accept one ping per 5 minutes and none while no call is open; a client that pings more
/// often is sent `GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")` and its calls fail. Against such
/// a server, either allow the pings there (grpc-go: `keepalive.EnforcementPolicy{MinTime,
/// PermitWithoutStream: true}`; C-core: `grpc.http2.min_recv_ping_interval_without_data_ms`,
/// `grpc.keepalive_permit_without_calls`), or ping no more often than it allows and turn
/// [`while_idle`](Self::while_idle) off. tonic (hyper) servers do not police pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    interval: Duration,
    timeout: Duration,
    while_idle: bool,
}

impl Keepalive {
    /// The default time between pings: 20 s.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(20);

    /// The default time to wait for a ping's answer: 20 s, gRPC's `KEEPALIVE_TIMEOUT` default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

    /// Pings every `interval`, and closes the connection when one is not answered within
    /// `timeout`; pings idle connections too (see [`while_idle`](Self::while_idle)).
    ///
    /// Both must be more than zero:
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_retry::Keepalive;
    ///
    /// let err = Keepalive::new(Duration::ZERO, Duration::from_secs(1)).unwrap_err();
    /// assert_eq!(err.field(), "keepalive.interval");
    /// ```
    pub fn new(interval: Duration, timeout: Duration) -> Result<Keepalive, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::new("keepalive.interval", "0s", "must be > 0"));
        }
        if timeout.is_zero() {
            return Err(ConfigError::new("keepalive.timeout", "0s", "must be > 0"));
        }
        Ok(Keepalive {
            interval,
            timeout,
            while_idle: true,
        })
    }

    /// Whether to ping a connection that has no call open (default true). With it, a
    /// connection that died while idle is replaced before the next call needs it; without it,
    /// the next call finds out, at most [`detection_time`](Self::detection_time) after it
    /// started, and is retried.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_retry::Keepalive;
    ///
    /// // For a grpc-go server with its default enforcement (at most one ping per 5 minutes, and
    /// // none while no call is open): ping less often, and only while a call is open.
    /// let keepalive = Keepalive::new(Duration::from_secs(6 * 60), Duration::from_secs(20))?
    ///     .while_idle(false);
    /// assert_eq!(keepalive.detection_time(), Duration::from_secs(380));
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn while_idle(mut self, while_idle: bool) -> Keepalive {
        self.while_idle = while_idle;
        self
    }

    /// The time between pings.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a ping may go unanswered before the connection is closed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether idle connections are pinged.
    pub fn pings_while_idle(&self) -> bool {
        self.while_idle
    }

    /// The longest a dead connection goes unnoticed: interval + timeout (saturating).
    pub fn detection_time(&self) -> Duration {
        self.interval.saturating_add(self.timeout)
    }

    /// Sets these keepalive settings on `endpoint`. A duration longer than the clock can take
    /// (`Duration::MAX`, "never") is set as about 30 years, tokio's own bound for never: hyper
    /// adds both to the clock unchecked, and its connection task would panic at the first ping.
    pub fn apply(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .http2_keep_alive_interval(self.interval.min(NEVER))
            .keep_alive_timeout(self.timeout.min(NEVER))
            .keep_alive_while_idle(self.while_idle)
    }
}

/// What tokio's `sleep(Duration::MAX)` sleeps: about 30 years, a time any clock can add.
const NEVER: Duration = Duration::from_secs(86_400 * 365 * 30);

impl Default for Keepalive {
    /// A ping every 20 s, answered within 20 s, idle connections included: a dead connection
    /// is replaced within 40 s.
    fn default() -> Self {
        Keepalive {
            interval: Keepalive::DEFAULT_INTERVAL,
            timeout: Keepalive::DEFAULT_TIMEOUT,
            while_idle: true,
        }
    }
}

/// Sets [`Keepalive::default`] on `endpoint`: a connection that goes silent (no FIN, no RST) is
/// closed within 40 s and the calls after it go to a new one.
///
/// ```
/// use tonic::transport::Endpoint;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel = tonic_retry::endpoint::keepalive(Endpoint::from_static("http://127.0.0.1:50051"))
///     .connect_lazy();
/// # let _ = channel;
/// # }
/// ```
pub fn keepalive(endpoint: Endpoint) -> Endpoint {
    Keepalive::default().apply(endpoint)
}

/// Put by the layer in the extensions of a retry whose previous attempt ran out of time with
/// no response: the connection that attempt went down may be dead (a half-open connection
/// answers nothing, and tonic keeps handing it calls until keepalive finds it out). A service
/// under the layer can act on it: open a new connection for this attempt rather than wait for
/// keepalive. [`EvictingChannel`] does; so can a service of your own:
///
/// ```
/// use http::Request;
/// use tonic::body::Body;
/// use tonic_retry::endpoint::AfterAttemptTimeout;
///
/// /// Whether `request` retries an attempt that went unanswered while the connection opened at
/// /// `opened` was already there: that attempt may have gone down it, and it may be dead.
/// fn suspects(request: &Request<Body>, opened: tokio::time::Instant) -> bool {
///     request
///         .extensions()
///         .get::<AfterAttemptTimeout>()
///         .is_some_and(|marker| marker.timed_out_attempt_started() >= opened)
/// }
/// # assert!(!suspects(&Request::new(Body::empty()), tokio::time::Instant::now()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterAttemptTimeout {
    timed_out_attempt_started: tokio::time::Instant,
}

impl AfterAttemptTimeout {
    pub(crate) fn new(timed_out_attempt_started: tokio::time::Instant) -> AfterAttemptTimeout {
        AfterAttemptTimeout {
            timed_out_attempt_started,
        }
    }

    /// When the attempt that timed out was sent (tokio's clock): a connection opened after it
    /// is not the one it went down.
    pub fn timed_out_attempt_started(&self) -> tokio::time::Instant {
        self.timed_out_attempt_started
    }
}

/// A tonic [`Channel`] that is replaced by a new connection when an attempt on it ran out of
/// time unanswered: put it under the [`RetryLayer`](crate::RetryLayer) instead of a plain
/// `Channel`, and the retry after an attempt timeout goes down a live connection.
///
/// # Why
///
/// A half-open connection (the peer's host died, a NAT dropped its mapping: no FIN, no RST)
/// looks alive to tonic until HTTP/2 keepalive finds it out, [`Keepalive::detection_time`]
/// after it went silent. An [`attempt_timeout`](crate::RetryPolicyBuilder::attempt_timeout)
/// shorter than that ends the attempt first, and on a plain `Channel` its retry goes down the
/// same dead connection, and the next, until the call's deadline. The layer marks the retry of
/// an attempt that ran out of time unanswered ([`AfterAttemptTimeout`]: its own attempt timeout,
/// tonic's `grpc-timeout` timer, or a tower `Timeout` under the layer); when that attempt went
/// down the current connection, this service replaces the connection by a new one
/// ([`Endpoint::connect_lazy`]) and sends the retry there. No timing guess is involved: the
/// marker says when the dead attempt was sent, the service knows when its connection was
/// opened.
///
/// Keep [`Keepalive`] on the endpoint as well: it finds dead connections that no attempt timeout
/// catches (a flowing response stream, an idle connection, calls without an attempt timeout),
/// and it closes the evicted connection, which otherwise lingers until its calls end.
///
/// ```
/// use std::time::Duration;
/// use tonic::transport::Endpoint;
/// use tonic_retry::{EvictingChannel, Keepalive, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tonic_retry::ConfigError> {
/// let keepalive = Keepalive::new(Duration::from_secs(10), Duration::from_secs(5))?;
/// let endpoint = Endpoint::from_static("http://127.0.0.1:50051");
/// let policy = RetryPolicy::builder()
///     // Shorter than the 15 s keepalive takes: the retry goes down a new connection.
///     .attempt_timeout(Duration::from_secs(2))
///     .build()?;
/// let retry_layer = RetryLayer::builder().default_policy(policy).build()?;
/// let channel = tower::ServiceBuilder::new()
///     .layer(retry_layer)
///     .service(EvictingChannel::new(keepalive.apply(endpoint)));
/// // Any generated client takes it unchanged: GreeterClient::new(channel)
/// # let _ = channel;
/// # Ok(()) }
/// ```
///
/// # Sharing
///
/// All clones share the current connection (the layer clones its inner service for retries),
/// and concurrent retries of calls that timed out on the same connection replace it once. Calls
/// already in flight on a replaced connection carry on there; new calls go to the new one.
/// Requests without the marker cost an atomic load and an extensions lookup more than on a
/// plain `Channel`, and take no lock; a new clone takes a read lock once, on its first
/// `poll_ready`, to pick up the current connection.
///
/// Put it directly under the layer, one per endpoint. Under a balancer of several, the retry
/// may reach another endpoint's channel than the one that timed out, and replace a healthy
/// connection there.
///
/// Like [`Endpoint::connect_lazy`], making one (and replacing a connection) must happen within
/// a Tokio runtime.
pub struct EvictingChannel {
    shared: Arc<Evicting>,
    /// This clone's handle on a connection, taken from the shared current one by `poll_ready`,
    /// which reserves a slot in its buffer; the request goes there. A clone starts without
    /// one, so that a clone kept aside (the layer keeps one to clone for retries) holds no
    /// connection open after it was replaced.
    local: Option<Connection>,
}

/// What the clones of an [`EvictingChannel`] share.
struct Evicting {
    connect: Box<dyn Fn() -> Channel + Send + Sync>,
    /// `current.generation`, readable without the lock: a clone whose connection is of this
    /// generation is up to date.
    generation: AtomicU64,
    /// Read to take a handle; written only to replace the connection.
    current: RwLock<Connection>,
}

#[derive(Clone)]
struct Connection {
    /// 0 for the first connection, one more for each replacement.
    generation: u64,
    channel: Channel,
    /// An attempt sent at or after this went down this connection (or a later one).
    opened: Instant,
}

impl EvictingChannel {
    /// Connects to `endpoint` lazily ([`Endpoint::connect_lazy`]), and again, lazily, each time
    /// the connection is replaced. Must be called within a Tokio runtime.
    pub fn new(endpoint: Endpoint) -> EvictingChannel {
        EvictingChannel::from_fn(move || endpoint.connect_lazy())
    }

    /// Connects to `endpoint` now ([`Endpoint::connect`]), so that a wrong address or a server
    /// that is down shows here; replacements connect lazily.
    pub async fn connect(endpoint: Endpoint) -> Result<EvictingChannel, tonic::transport::Error> {
        let first = endpoint.connect().await?;
        Ok(EvictingChannel::with_first(
            first,
            Box::new(move || endpoint.connect_lazy()),
        ))
    }

    /// Opens each connection with `connect`: for a custom connector, e.g.
    /// `move || endpoint.connect_with_connector_lazy(connector.clone())`. `connect` should
    /// return at once (a lazy channel): it is called on the request path.
    ///
    /// ```
    /// use tonic::transport::Endpoint;
    /// use tonic_retry::{EvictingChannel, RetryLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let endpoint = tonic_retry::endpoint::keepalive(Endpoint::from_static("http://127.0.0.1:50051"));
    /// // Here the same as `EvictingChannel::new(endpoint)`; a custom connector goes in the closure.
    /// let channel = EvictingChannel::from_fn(move || endpoint.connect_lazy());
    /// let channel = tower::ServiceBuilder::new().layer(RetryLayer::new()).service(channel);
    /// # let _ = channel;
    /// # }
    /// ```
    pub fn from_fn<F>(connect: F) -> EvictingChannel
    where
        F: Fn() -> Channel + Send + Sync + 'static,
    {
        EvictingChannel::with_first(connect(), Box::new(connect))
    }

    fn with_first(
        first: Channel,
        connect: Box<dyn Fn() -> Channel + Send + Sync>,
    ) -> EvictingChannel {
        let first = Connection {
            generation: 0,
            channel: first,
            opened: Instant::now(),
        };
        EvictingChannel {
            shared: Arc::new(Evicting {
                connect,
                generation: AtomicU64::new(0),
                current: RwLock::new(first.clone()),
            }),
            local: Some(first),
        }
    }

    /// How many times the connection was replaced after an attempt timed out on it.
    pub fn evictions(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// This clone's connection if it is the current one.
    fn up_to_date(&mut self) -> Option<&mut Connection> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        self.local
            .as_mut()
            .filter(|local| local.generation == generation)
    }
}

impl Evicting {
    // A panic in the user's `connect` leaves the old connection in place, still usable: the
    // lock's poison is no reason to fail every later call.
    fn current(&self) -> Connection {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current connection, replaced first if the attempt sent at `timed_out` went down it.
    fn current_after_timeout(&self, timed_out: Instant) -> Connection {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        // Under the lock, so that the retries of every call that timed out on this connection
        // replace it once: the first one opens a new connection, the others find their attempt
        // older than it.
        if timed_out >= current.opened {
            let generation = current.generation.wrapping_add(1);
            *current = Connection {
                generation,
                channel: (self.connect)(),
                opened: Instant::now(),
            };
            self.generation.store(generation, Ordering::Release);
            tracing::info!(
                generation,
                "an attempt timed out unanswered on the current connection: opening a new one"
            );
        }
        current.clone()
    }
}

impl Clone for EvictingChannel {
    fn clone(&self) -> EvictingChannel {
        EvictingChannel {
            shared: Arc::clone(&self.shared),
            local: None,
        }
    }
}

impl fmt::Debug for EvictingChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvictingChannel")
            .field("generation", &self.local.as_ref().map(|l| l.generation))
            .field("evictions", &self.evictions())
            .finish_non_exhaustive()
    }
}

impl Service<Request<Body>> for EvictingChannel {
    type Response = Response<Body>;
    type Error = tonic::transport::Error;
    type Future = EvictingResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.up_to_date().is_none() {
            // A newer connection replaced this clone's: move over. A slot reserved on the old
            // one is released with its handle.
            self.local = None;
        }
        let shared = &self.shared;
        let local = self.local.get_or_insert_with(|| shared.current());
        local.channel.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> EvictingResponseFuture {
        let timed_out = request
            .extensions()
            .get::<AfterAttemptTimeout>()
            .map(AfterAttemptTimeout::timed_out_attempt_started);
        if let Some(local) = self.up_to_date()
            && timed_out.is_none_or(|sent| sent < local.opened)
        {
            return EvictingResponseFuture::sent(local.channel.call(request));
        }
        let latest = match timed_out {
            Some(sent) => self.shared.current_after_timeout(sent),
            None => self.shared.current(),
        };
        // The slot `poll_ready` reserved (if it was called) is on an older connection: give
        // it back, and wait for one on the current connection before sending.
        self.local = Some(latest.clone());
        EvictingResponseFuture::redirected(latest.channel, request)
    }
}

/// The response future of [`EvictingChannel`]: the call on the current connection, or, when
/// the connection was replaced between `poll_ready` and `call`, waiting for the new connection
/// to be ready, then the call on it.
#[pin_project]
#[derive(Debug)]
pub struct EvictingResponseFuture {
    #[pin]
    state: Redirect,
}

#[pin_project(project = RedirectProj, project_replace = RedirectOwn)]
#[derive(Debug)]
enum Redirect {
    Sent {
        #[pin]
        future: tonic::transport::channel::ResponseFuture,
    },
    /// Rare (after a replacement): the request is boxed so that the common future stays small.
    Waiting {
        channel: Channel,
        request: Box<Request<Body>>,
    },
    /// Only between `Waiting` and `Sent`, inside one `poll` (or after a panic there).
    Moving,
}

impl EvictingResponseFuture {
    fn sent(future: tonic::transport::channel::ResponseFuture) -> EvictingResponseFuture {
        EvictingResponseFuture {
            state: Redirect::Sent { future },
        }
    }

    fn redirected(channel: Channel, request: Request<Body>) -> EvictingResponseFuture {
        EvictingResponseFuture {
            state: Redirect::Waiting {
                channel,
                request: Box::new(request),
            },
        }
    }
}

impl Future for EvictingResponseFuture {
    type Output = Result<Response<Body>, tonic::transport::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        if let RedirectProj::Waiting { channel, .. } = state.as_mut().project() {
            ready!(channel.poll_ready(cx))?;
            if let RedirectOwn::Waiting {
                mut channel,
                request,
            } = state.as_mut().project_replace(Redirect::Moving)
            {
                state.set(Redirect::Sent {
                    future: channel.call(*request),
                });
            }
        }
        match state.project() {
            RedirectProj::Sent { future } => future.poll(cx),
            // Only if `Channel::call` panicked in an earlier poll, like an `async fn` resumed
            // after a panic.
            _ => panic!("EvictingResponseFuture polled after a panic"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tower::ServiceExt;

    /// A lazy channel to a loopback listener that never answers: requests go nowhere, and
    /// these tests only look at which connection each one was handed to.
    fn silent_endpoint() -> (std::net::TcpListener, Endpoint) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap());
        (listener, Endpoint::from_shared(uri).unwrap())
    }

    fn request(timed_out: Option<Instant>) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        if let Some(sent) = timed_out {
            request
                .extensions_mut()
                .insert(AfterAttemptTimeout::new(sent));
        }
        request
    }

    /// Readies `service` and hands it `request`; the response is not awaited.
    async fn send(service: &mut EvictingChannel, request: Request<Body>) -> EvictingResponseFuture {
        service.ready().await.unwrap().call(request)
    }

    fn was_sent_at_once(future: &EvictingResponseFuture) -> bool {
        matches!(future.state, Redirect::Sent { .. })
    }

    #[tokio::test(start_paused = true)]
    async fn a_marker_older_than_the_current_connection_does_not_evict() {
        let (_listener, endpoint) = silent_endpoint();
        let mut service = EvictingChannel::new(endpoint);
        let first_opened = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let dead_attempt = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;

        // The first retry of an attempt sent on the first connection replaces it.
        let future = send(&mut service, request(Some(dead_attempt))).await;
        assert!(!was_sent_at_once(&future), "sent on the new connection");
        assert_eq!(service.evictions(), 1);

        // Retries of attempts sent before the new connection opened do not replace it again,
        // on this clone or another.
        let mut other = service.clone();
        for sent in [first_opened, dead_attempt] {
            let future = send(&mut service, request(Some(sent))).await;
            assert!(was_sent_at_once(&future));
            let future = send(&mut other, request(Some(sent))).await;
            assert!(was_sent_at_once(&future));
        }
        assert_eq!(service.evictions(), 1);

        // An attempt sent on the new connection that timed out replaces it in turn.
        tokio::time::advance(Duration::from_secs(1)).await;
        let future = send(&mut other, request(Some(Instant::now()))).await;
        assert!(!was_sent_at_once(&future));
        assert_eq!(service.evictions(), 2);
    }

    #[tokio::test]
    async fn requests_without_the_marker_never_evict() {
        let (_listener, endpoint) = silent_endpoint();
        let mut service = EvictingChannel::new(endpoint);
        let mut clones: Vec<_> = (0..4).map(|_| service.clone()).collect();
        for _ in 0..10 {
            assert!(was_sent_at_once(&send(&mut service, request(None)).await));
            for clone in &mut clones {
                assert!(was_sent_at_once(&send(clone, request(None)).await));
            }
        }
        assert_eq!(service.evictions(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_clone_readied_before_a_replacement_sends_on_the_new_connection() {
        let (_listener, endpoint) = silent_endpoint();
        let mut service = EvictingChannel::new(endpoint);
        let mut readied = service.clone();
        readied.ready().await.unwrap();
        assert_eq!(readied.local.as_ref().unwrap().generation, 0);

        let future = send(&mut service, request(Some(Instant::now()))).await;
        assert!(!was_sent_at_once(&future));
        assert_eq!(service.evictions(), 1);

        // The slot it reserved is on the replaced connection: the request waits for one on the
        // new connection instead.
        let future = readied.call(request(None));
        assert!(!was_sent_at_once(&future));
        assert_eq!(readied.local.as_ref().unwrap().generation, 1);
        // The next one goes straight to the new connection.
        assert!(was_sent_at_once(&send(&mut readied, request(None)).await));
    }

    #[tokio::test]
    async fn a_new_clone_called_before_poll_ready_waits_for_a_slot() {
        let (_listener, endpoint) = silent_endpoint();
        let service = EvictingChannel::new(endpoint);
        // A clone holds no connection until it is polled; a `Channel` handle not readied
        // would panic here.
        let mut clone = service.clone();
        let future = clone.call(request(None));
        assert!(!was_sent_at_once(&future));
        assert_eq!(service.evictions(), 0);
    }

    #[test]
    fn zero_durations_are_rejected_by_name() {
        let err = Keepalive::new(Duration::from_secs(1), Duration::ZERO).unwrap_err();
        assert_eq!(err.field(), "keepalive.timeout");
        assert_eq!(err.to_string(), "keepalive.timeout: must be > 0, got 0s");
    }

    #[test]
    fn detection_time_saturates() {
        let keepalive = Keepalive::new(Duration::MAX, Duration::MAX).unwrap();
        assert_eq!(keepalive.detection_time(), Duration::MAX);
        assert_eq!(
            Keepalive::default().detection_time(),
            Duration::from_secs(40)
        );
    }
}
