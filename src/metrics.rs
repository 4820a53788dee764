//! Counters a user can read at any time, named after gRPC's metrics (gRFC A66/A96) where one
//! exists.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts of what a layer did, shared by every clone of it. Relaxed atomics: cheap to bump on
/// every call, and each count is exact, though two read one after the other may be a call apart.
///
/// Read them from the layer ([`RetryLayer::metrics`](crate::RetryLayer::metrics)) or from the
/// service it made ([`Retry::metrics`](crate::Retry::metrics)), for example to export them to
/// your metrics system now and then.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::{RetryLayer, RetryPolicy};
/// use tonic_retry::backoff::ExponentialBackoff;
/// // Your generated client; here the test proto's `Echo` service.
/// use tonic_retry_testkit::pb::{SayRequest, echo_client::EchoClient};
/// # use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # // A server that answers UNAVAILABLE twice, then OK.
/// # let server = ScriptedServer::start(Script::new().then_n(
/// #     Method::Say, 2, Action::fail(tonic::Code::Unavailable, "warming up"))).await;
/// # let channel = lazy_channel(server.addr());
/// let quick = ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)?;
/// let layer = RetryLayer::builder()
///     .default_policy(RetryPolicy::builder().backoff(quick).build()?)
///     .build()?;
/// let channel = tower::ServiceBuilder::new().layer(layer.clone()).service(channel);
/// let mut client = EchoClient::new(channel);
///
/// client.say(SayRequest::default()).await?;
/// let counters = layer.metrics();
/// assert_eq!(counters.calls(), 1);
/// assert_eq!(counters.attempts(), 3);
/// assert_eq!(counters.retries(), 2);
/// assert_eq!(counters.exhausted(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) transparent_retries: AtomicU64,
    pub(crate) hedges: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) fail_fast: AtomicU64,
    pub(crate) exhausted: AtomicU64,
    pub(crate) retry_delay_nanos: AtomicU64,
}

impl Counters {
    /// Calls started.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Attempts sent: first attempts, retries, transparent retries and hedges together.
    ///
    /// The sum of the other counters rather than a counter of its own: a call that passes at once
    /// then costs one atomic operation here, not two.
    pub fn attempts(&self) -> u64 {
        self.calls()
            .wrapping_add(self.retries())
            .wrapping_add(self.transparent_retries())
            .wrapping_add(self.hedges())
    }

    /// Retries sent (`grpc.client.call.retries`), transparent ones excluded.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Transparent retries sent (`grpc.client.call.transparent_retries`).
    pub fn transparent_retries(&self) -> u64 {
        self.transparent_retries.load(Ordering::Relaxed)
    }

    /// Hedged attempts sent (`grpc.client.call.hedges`), the first attempt of each call excluded.
    pub fn hedges(&self) -> u64 {
        self.hedges.load(Ordering::Relaxed)
    }

    /// Calls that stopped because the throttle had no room for a retry.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Calls that failed at once on a fail-fast code.
    pub fn fail_fast(&self) -> u64 {
        self.fail_fast.load(Ordering::Relaxed)
    }

    /// Calls that used up their attempts.
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Time spent waiting between attempts, all calls together: the sum of gRPC's per-call
    /// `grpc.client.call.retry_delay` histogram.
    pub fn retry_delay(&self) -> Duration {
        Duration::from_nanos(self.retry_delay_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn add_retry_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.retry_delay_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
