//! The retrying service: hands each call to a [`ResponseFuture`] that drives its attempts.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tower::Service;

use crate::BoxError;
use crate::future::ResponseFuture;
use crate::metrics::Counters;
use crate::response_body::ResponseBody;
use crate::shared::{Shared, Spare};

/// Retries the calls made through it; made by [`RetryLayer`](crate::RetryLayer).
///
/// Cheap to clone: the inner service is cloned (a tonic `Channel` is a handle) and the
/// configuration is shared.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    /// What this service's calls share: the layer's state, a clone of `inner` that calls clone
    /// again for their retries (so that a call that needs none clones nothing: cloning a
    /// `Channel` is not free), and the service's target label.
    spare: Arc<Spare<S>>,
}

impl<S: Clone> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, target: Option<Arc<str>>) -> Retry<S> {
        Retry {
            spare: Arc::new(Spare {
                shared,
                service: Mutex::new(inner.clone()),
                target,
                origin: Default::default(),
            }),
            inner,
        }
    }
}

impl<S> Retry<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The layer's counters.
    pub fn metrics(&self) -> &Counters {
        &self.spare.shared.counters
    }
}

impl<S, ResBody> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture<S> {
        ResponseFuture::start(&mut self.inner, Arc::clone(&self.spare), request)
    }
}
