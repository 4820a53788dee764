//! Where the layer goes: what each `tower` component does above the [`RetryLayer`] and below
//! it.
//!
//! A `tower::ServiceBuilder` stack runs from the top down: the first `.layer(...)` is the
//! outermost, the one the generated client calls; the `.service(...)` at the end is the
//! `Channel`. The retry layer splits the stack in two:
//!
//! - **above** it, a component sees each *call* once: the first attempt and every retry are
//!   inside one of its calls;
//! - **below** it, a component sees each *attempt*: the layer calls it again for every retry.
//!
//! (The layer clones the service below it for its retries, so what is below must be `Clone`; a
//! tonic `Channel`, tower's timeouts, concurrency limits and tonic's interceptors are.)
//!
//! # The placement table
//!
//! | component | above the layer | below the layer | recommended |
//! |---|---|---|---|
//! | interceptor, middleware (`tonic::service::InterceptorLayer`, a `tower` layer) | runs once per call: the retries reuse what it set | runs once per attempt: each retry goes through it again | per-call work (request logging, a request id, the call's metrics) above; per-attempt work (an auth token refreshed when it expires, per-attempt metrics) below |
//! | an interceptor that rejects (`Err(status)`) | the caller gets the status, no attempt is made | its status is classified like a server's Trailers-Only answer: UNAVAILABLE is retried, UNAUTHENTICATED fails at once | above, unless a retry could make it pass |
//! | timeout (`tower::timeout::TimeoutLayer`) | bounds the whole call, every attempt and backoff; when it fires, the attempt in flight is cancelled and the caller gets UNKNOWN `request timed out`, without a [`CallHistory`]; the server is not told this deadline | a per-attempt timeout: the layer classifies its `Elapsed` as [`FailureKind::AttemptTimeout`] and retries, within the call's deadline | below for attempts (or the policy's [`attempt_timeout`](crate::RetryPolicyBuilder::attempt_timeout)); for the whole call a deadline rather than a timeout above (see below) |
//! | concurrency limit (`tower::limit::ConcurrencyLimitLayer`) | counts calls: a call holds its permit through all its attempts and backoffs | counts attempts: a call holds a permit only while an attempt is in flight; a retry waits for one within the call's deadline | above to bound the calls of the application; below to bound the load sent to the server |
//! | load balancing (tonic `Channel::balance_list`, `tower::balance`) | a call is pinned to the endpoint picked for it: all its attempts go there | each attempt is balanced: a retry can go to another endpoint | below (that is what a `Channel` from `balance_list` is) |
//! | [`EvictingChannel`](crate::EvictingChannel) | (not meaningful: it takes the place of the `Channel`, and acts on the marker the layer puts on the retry of a timed-out attempt) | replaces the connection a timed-out attempt went down | directly under the layer (or under per-attempt layers that keep request extensions), one per endpoint |
//!
//! # A complete stack
//!
//! Request logging and a cap on the application's calls above the layer; a per-attempt timeout
//! and an auth token set on every attempt below it:
//!
//! ```
//! use std::time::Duration;
//!
//! use tonic::service::InterceptorLayer;
//! use tonic::transport::Channel;
//! use tonic::{Request, Status};
//! use tonic_retry::{RetryLayer, RetryPolicy};
//! use tower::ServiceBuilder;
//! use tower::limit::ConcurrencyLimitLayer;
//! use tower::timeout::TimeoutLayer;
//!
//! /// Once per call: the retries are not logged as new calls.
//! fn log_call(request: Request<()>) -> Result<Request<()>, Status> {
//!     tracing::info!(metadata_keys = request.metadata().len(), "call");
//!     Ok(request)
//! }
//!
//! /// Once per attempt: a retry after a long backoff carries a token that is still valid.
//! fn authorize(mut request: Request<()>) -> Result<Request<()>, Status> {
//!     let token = current_token(); // your token cache, refreshed when it expires
//!     let value = format!("Bearer {token}")
//!         .parse()
//!         .map_err(|_| Status::unauthenticated("the token is not valid metadata"))?;
//!     request.metadata_mut().insert("authorization", value);
//!     Ok(request)
//! }
//! # fn current_token() -> &'static str { "token" }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Channel::from_static("http://127.0.0.1:50051").connect_lazy();
//! let policy = RetryPolicy::builder()
//!     .max_attempts(4)
//!     // The call's deadline when the caller sets none: every attempt and backoff within it.
//!     .call_timeout(Duration::from_secs(10))
//!     .build()?;
//! let channel = ServiceBuilder::new()
//!     // Above the layer: once per call.
//!     .layer(InterceptorLayer::new(log_call))
//!     .layer(ConcurrencyLimitLayer::new(256)) // calls in flight, retries included
//!     .layer(RetryLayer::builder().default_policy(policy).build()?)
//!     // Below the layer: once per attempt.
//!     .layer(TimeoutLayer::new(Duration::from_secs(2))) // each attempt; timed out ones are retried
//!     .layer(InterceptorLayer::new(authorize))
//!     .service(channel);
//! // Any generated client takes it unchanged: GreeterClient::new(channel)
//! # let _ = channel;
//! # Ok(()) }
//! ```
//!
//! # Seen on a real server
//!
//! A server that answers UNAVAILABLE twice, then OK: the interceptor above the layer runs once,
//! the one below it three times, and the response carries the history of the call the retries
//! healed.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use tonic::service::InterceptorLayer;
//! use tonic::{Request, Status};
//! use tonic_retry::{CallHistory, RetryLayer, RetryPolicy};
//! use tonic_retry::backoff::ExponentialBackoff;
//! use tower::ServiceBuilder;
//! // The test proto's `Echo` service and a scripted server on 127.0.0.1.
//! use tonic_retry_testkit::pb::{SayRequest, echo_client::EchoClient};
//! use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
//!
//! /// An interceptor that counts the requests that go through it.
//! fn counter(count: &Arc<AtomicU32>) -> InterceptorLayer<impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone> {
//!     let count = Arc::clone(count);
//!     InterceptorLayer::new(move |request| {
//!         count.fetch_add(1, Ordering::Relaxed);
//!         Ok(request)
//!     })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = ScriptedServer::start(
//!     Script::new().then_n(Method::Say, 2, Action::fail(tonic::Code::Unavailable, "warming up")),
//! )
//! .await;
//! let (above, below) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
//! let quick = ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)?;
//! let mut client = EchoClient::new(
//!     ServiceBuilder::new()
//!         .layer(counter(&above))
//!         .layer(RetryLayer::builder()
//!             .default_policy(RetryPolicy::builder().backoff(quick).build()?)
//!             .build()?)
//!         .layer(counter(&below))
//!         .service(lazy_channel(server.addr())),
//! );
//!
//! let response = client.say(SayRequest::default()).await?;
//! assert_eq!(above.load(Ordering::Relaxed), 1, "once per call");
//! assert_eq!(below.load(Ordering::Relaxed), 3, "once per attempt");
//! let history = response.extensions().get::<CallHistory>().expect("healed by retries");
//! assert_eq!(history.attempt_count(), 3);
//! # Ok(()) }
//! ```
//!
//! # Timeouts: the call's deadline, and each attempt's
//!
//! The whole call is best bounded by its **deadline**, not by a `tower` timeout above the layer.
//! Set it per call with tonic's `Request::set_timeout` (sent as `grpc-timeout`), or for the calls
//! that carry none with [`call_timeout`](crate::RetryPolicyBuilder::call_timeout) (the service
//! config's `timeout`). The layer keeps every attempt and every backoff within it, starts no
//! backoff that would end past it, tells the server the time left on each attempt, and when time
//! runs out returns the last attempt's status with its [`CallHistory`]
//! ([`StopReason::Deadline`](crate::StopReason::Deadline)). A `TimeoutLayer` above the layer
//! bounds the call too, but blindly: it drops the attempt in flight, the caller gets tower's
//! `Elapsed` (which tonic shows as UNKNOWN `request timed out`) and no history.
//!
//! Each **attempt** is bounded by a `TimeoutLayer` below the layer, or by the policy's
//! [`attempt_timeout`](crate::RetryPolicyBuilder::attempt_timeout) (the same effect, set per
//! method, with one layer fewer). An attempt that runs out is [`FailureKind::AttemptTimeout`]:
//! it is retried like an UNAVAILABLE one, within the call's deadline.
//!
//! ```
//! use std::time::Duration;
//!
//! use tonic_retry::{CallHistory, FailureKind, RetryLayer};
//! use tower::ServiceBuilder;
//! use tower::timeout::TimeoutLayer;
//! use tonic_retry_testkit::pb::{SayRequest, echo_client::EchoClient};
//! use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A server that never answers the first attempt.
//! let server = ScriptedServer::start(Script::new().then(Method::Say, Action::Hang)).await;
//! let mut client = EchoClient::new(
//!     ServiceBuilder::new()
//!         .layer(RetryLayer::new())
//!         .layer(TimeoutLayer::new(Duration::from_millis(200))) // each attempt
//!         .service(lazy_channel(server.addr())),
//! );
//!
//! let mut request = tonic::Request::new(SayRequest::default());
//! request.set_timeout(Duration::from_secs(5)); // the whole call
//! let response = client.say(request).await?;
//! let history = response.extensions().get::<CallHistory>().expect("healed by a retry");
//! assert_eq!(history.attempts()[0].kind(), FailureKind::AttemptTimeout);
//!
//! // The same timeout above the layer ends the whole call, blindly.
//! let server = ScriptedServer::start(Script::new().then(Method::Say, Action::Hang)).await;
//! let mut client = EchoClient::new(
//!     ServiceBuilder::new()
//!         .layer(TimeoutLayer::new(Duration::from_millis(200))) // the whole call
//!         .layer(RetryLayer::new())
//!         .service(lazy_channel(server.addr())),
//! );
//! let status = client.say(SayRequest::default()).await.unwrap_err();
//! assert_eq!(status.code(), tonic::Code::Unknown);
//! assert_eq!(status.message(), "request timed out");
//! assert!(CallHistory::of(&status).is_none());
//! # Ok(()) }
//! ```
//!
//! # Concurrency limits
//!
//! Above the layer, a `ConcurrencyLimitLayer` counts calls: a call keeps its permit through its
//! backoffs, so a burst of failing calls does not let more calls in. Below it, the limit counts
//! attempts in flight: a call gives its permit back while it backs off, and its retry waits for
//! a permit again; the layer bounds that wait by the call's deadline. A call's first attempt
//! waits for its permit in the caller's `poll_ready`, before the layer sees the request and its
//! deadline: that wait is not bounded by the deadline, as it is not for a plain tonic client over
//! the same limit (the deadline starts when the call is sent). Either way, tower's limit counts a
//! call until its response headers arrive, not until its response stream ends.
//!
//! # Load balancing
//!
//! A `Channel` from tonic's `Channel::balance_list` (or any `tower::balance` service) under the
//! layer picks an endpoint for every attempt, so the retry of an attempt that failed on one
//! endpoint can go to another: usually what a retry needs, since the failure is often that
//! endpoint's (a server restarting, a connection that died).
//!
//! ```
//! use tonic::transport::{Channel, Endpoint};
//! use tonic_retry::RetryLayer;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let endpoints = ["http://127.0.0.1:50051", "http://127.0.0.1:50052"]
//!     .into_iter()
//!     .map(Endpoint::from_static);
//! let channel = tower::ServiceBuilder::new()
//!     .layer(RetryLayer::new())
//!     .service(Channel::balance_list(endpoints));
//! # let _ = channel;
//! # }
//! ```
//!
//! A balancer above the layer, over one retrying service per endpoint, picks once per call: all
//! the attempts of a call go to the endpoint it picked, healthy or not. That fits only when a
//! call must stay on one server (a session, a cache it warms).
//!
//! An [`EvictingChannel`](crate::EvictingChannel) goes directly under the layer, one per
//! endpoint: it opens a new connection for the retry of an attempt that timed out on its
//! current one. Under a balancer of several, the retry may reach another endpoint's channel and
//! replace a healthy connection there.
//!
//! [`RetryLayer`]: crate::RetryLayer
//! [`CallHistory`]: crate::CallHistory
//! [`FailureKind::AttemptTimeout`]: crate::FailureKind::AttemptTimeout
