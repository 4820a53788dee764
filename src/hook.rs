//! The on-retry hook: user code told of every retry before it is sent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::kind::FailureKind;

/// What a retry hook learns before each retry (see
/// [`RetryLayerBuilder::on_retry`](crate::RetryLayerBuilder::on_retry)).
///
/// The hook is called when the layer has decided to retry and chosen the delay, before it
/// waits: not for the first attempt, not for a call that passes at once, not when it gives up.
/// A hedge is not a retry: it is not reported here (count hedges with
/// [`Counters::hedges`](crate::Counters::hedges)).
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use tonic_retry::{FailureKind, RetryLayer, RetryPolicy};
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
/// let heard = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&heard);
/// let quick = ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)?;
/// let layer = RetryLayer::builder()
///     .default_policy(RetryPolicy::builder().backoff(quick).build()?)
///     .on_retry(move |event| {
///         // The event borrows from the call: keep what you need.
///         log.lock().unwrap().push((event.method.to_owned(), event.attempt, event.kind));
///     })
///     .build()?;
/// let mut client = EchoClient::new(tower::ServiceBuilder::new().layer(layer).service(channel));
///
/// client.say(SayRequest::default()).await?;
/// let method = "tonic_retry.test.Echo/Say".to_owned();
/// assert_eq!(
///     *heard.lock().unwrap(),
///     [
///         (method.clone(), 1, FailureKind::Unavailable),
///         (method, 2, FailureKind::Unavailable),
///     ]
/// );
/// # Ok(()) }
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy)]
pub struct RetryEvent<'a> {
    /// The gRPC method, `package.Service/Method`.
    pub method: &'a str,
    /// The number of the attempt that failed, 1 for the first.
    pub attempt: u32,
    /// The failed attempt's status code.
    pub code: Code,
    /// The failed attempt's status message.
    pub message: &'a str,
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The delay before the retry: the backoff, or the server's pushback.
    pub delay: Duration,
    /// Whether the retry is gRFC A6's uncounted transparent retry.
    pub transparent: bool,
}

/// A shared retry hook.
#[derive(Clone)]
pub(crate) struct OnRetry(pub(crate) Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>);

impl fmt::Debug for OnRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OnRetry(..)")
    }
}
