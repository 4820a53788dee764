//! The state the layer, its services and their calls share. In a module of its own so that the
//! layer, the service and the call future each depend on it, and not on one another in a cycle.

use std::sync::{Arc, Mutex};

use crate::backoff::Jitter;
use crate::body::BufferBudget;
use crate::head::Origin;
use crate::hook::OnRetry;
use crate::metrics::Counters;
use crate::retry_policy::PolicyTable;
use crate::throttle::RetryGate;

/// What every clone of a layer's services shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) policies: PolicyTable,
    pub(crate) jitter: Jitter,
    pub(crate) buffer_budget: Arc<BufferBudget>,
    pub(crate) counters: Counters,
    pub(crate) gate: RetryGate,
    pub(crate) on_retry: Option<OnRetry>,
    /// gRPC's OpenTelemetry instruments, if the layer was given a meter.
    #[cfg(feature = "opentelemetry")]
    pub(crate) telemetry: Option<crate::telemetry::Telemetry>,
}

/// The per-service state every call of a [`Retry`](crate::Retry) holds a handle on: one
/// handle, through which the call also reaches the layer's [`Shared`] state (a second `Arc`
/// per call would cost two more atomic operations, its clone and its drop).
#[derive(Debug)]
pub(crate) struct Spare<S> {
    /// The layer's state.
    pub(crate) shared: Arc<Shared>,
    /// A clone of the inner service that calls clone again for their retries.
    pub(crate) service: Mutex<S>,
    /// Where the calls go, for the history, when the request does not say.
    pub(crate) target: Option<Arc<str>>,
    /// The scheme and authority of the service's calls, kept once rather than in every call.
    pub(crate) origin: Origin,
}
