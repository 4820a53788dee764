//! The layer's tracing spans: one per call, one per attempt inside it.
//!
//! Alone in its test binary: tracing caches per callsite whether anyone listens, globally, and
//! tests on other threads with no subscriber would race this one's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{RetryLayer, RetryPolicy};
use tonic_retry_testkit::pb::SayRequest;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
use tower::ServiceBuilder;

/// A span's name and its `attempt` field.
type SpanRecord = (String, Option<u64>);

/// Records the spans the layer opens.
#[derive(Clone, Default)]
struct SpanLog(Arc<Mutex<Vec<SpanRecord>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanLog {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Attempt(Option<u64>);
        impl tracing::field::Visit for Attempt {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "attempt" {
                    self.0 = Some(value);
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut attempt = Attempt(None);
        attrs.record(&mut attempt);
        if attrs.metadata().target().starts_with("tonic_retry") {
            self.0
                .lock()
                .unwrap()
                .push((attrs.metadata().name().to_owned(), attempt.0));
        }
    }
}

#[tokio::test]
async fn a_span_per_call_and_one_per_attempt() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    // Another test's thread may have cached "no subscriber wants these spans" before this one
    // was set: ask every callsite again.
    tracing::callsite::rebuild_interest_cache();
    let server = ScriptedServer::start(Script::new().then_n(
        Method::Say,
        2,
        Action::fail(Code::Unavailable, "warming up"),
    ))
    .await;
    let backoff =
        ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0).unwrap();
    let layer = RetryLayer::builder()
        .default_policy(RetryPolicy::builder().backoff(backoff).build().unwrap())
        .build()
        .unwrap();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(server.addr())),
    );
    client
        .say(SayRequest {
            payload: bytes::Bytes::from_static(b"x"),
            text: String::new(),
        })
        .await
        .unwrap();
    let spans = log.0.lock().unwrap().clone();
    assert_eq!(
        spans,
        [
            ("grpc_retry".to_owned(), None),
            ("attempt".to_owned(), Some(1)),
            ("attempt".to_owned(), Some(2)),
            ("attempt".to_owned(), Some(3)),
        ]
    );
}
