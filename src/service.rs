//! The retrying service: hands each call to a [`ResponseFuture`] that drives its attempts.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tower::Service;

use crate::BoxError;
use crate::future::ResponseFuture;
use crate::layer::Shared;
use crate::metrics::Counters;

/// Retries the calls made through it; made by [`RetryLayer`](crate::RetryLayer).
///
/// Cheap to clone: the inner service is cloned (a tonic `Channel` is a handle) and the
/// configuration is shared.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Retry<S> {
        Retry { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The layer's counters.
    pub fn metrics(&self) -> &Counters {
        &self.shared.counters
    }
}

impl<S, ResBody> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture<S> {
        // The service that was polled ready makes the first attempt, and the future keeps it for
        // the retries; this one is left with a fresh clone, to be polled ready for the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::start(ready, Arc::clone(&self.shared), request)
    }
}
