//! The on-retry hook: user code told of every retry before it is sent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::kind::FailureKind;

/// What a retry hook learns before each retry (see
/// [`RetryLayerBuilder::on_retry`](crate::RetryLayerBuilder::on_retry)).
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
