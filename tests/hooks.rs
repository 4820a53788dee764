//! What a tonic user observes and controls, against real servers: the on-retry hook, the
//! history of a call that a retry healed, and a per-call policy set on the request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Code, Request};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, FailureKind, RetryLayer, RetryPolicy, StopReason};
use tonic_retry_testkit::pb::SayRequest;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
use tower::ServiceBuilder;

fn quick_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn say() -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::from_static(b"x"),
        text: String::new(),
    }
}

async fn flaky_twice() -> ScriptedServer {
    ScriptedServer::start(Script::new().then_n(
        Method::Say,
        2,
        Action::fail(Code::Unavailable, "warming up"),
    ))
    .await
}

#[tokio::test]
async fn the_hook_hears_every_retry_and_the_healed_response_carries_its_history() {
    let server = flaky_twice().await;
    let heard = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&heard);
    let layer = RetryLayer::builder()
        .default_policy(quick_policy())
        .on_retry(move |event| {
            log.lock().unwrap().push((
                event.method.to_owned(),
                event.attempt,
                event.code,
                event.kind,
                event.delay,
                event.transparent,
            ));
        })
        .build()
        .unwrap();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(server.addr())),
    );

    let response = client.say(say()).await.unwrap();

    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 2);
    for (index, (method, attempt, code, kind, delay, transparent)) in heard.iter().enumerate() {
        assert_eq!(method, "tonic_retry.test.Echo/Say");
        assert_eq!(*attempt as usize, index + 1);
        assert_eq!(*code, Code::Unavailable);
        assert_eq!(*kind, FailureKind::Unavailable);
        assert!(*delay <= Duration::from_micros(1200));
        assert!(!transparent);
    }
    let history = response
        .extensions()
        .get::<CallHistory>()
        .expect("a healed call carries its history");
    assert!(history.succeeded());
    assert_eq!(history.stop_reason(), StopReason::Succeeded);
    assert_eq!(history.attempt_count(), 3);
    assert_eq!(history.attempts().len(), 2, "the two that failed");
    assert_eq!(history.path(), "tonic_retry.test.Echo/Say");
    let shown = history.to_string();
    assert!(
        shown.starts_with("tonic_retry.test.Echo/Say") && shown.contains("succeeded after 3"),
        "{shown}"
    );

    // A call that passes at once carries nothing, and costs nothing.
    let response = client.say(say()).await.unwrap();
    assert!(response.extensions().get::<CallHistory>().is_none());
}

#[tokio::test]
async fn a_policy_set_on_the_request_overrides_the_layers() {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let layer = RetryLayer::builder()
        .default_policy(quick_policy())
        .build()
        .unwrap();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(server.addr())),
    );

    // A non-idempotent call: never retried, whatever the layer's policy.
    let mut once = Request::new(say());
    once.extensions_mut().insert(RetryPolicy::no_retries());
    let status = client.say(once).await.unwrap_err();
    assert_eq!(server.attempt_count_for(Method::Say), 1);
    let history = CallHistory::of(&status).unwrap();
    assert_eq!(history.stop_reason(), StopReason::AttemptsExhausted);

    // A read worth retrying harder than the layer's default of 5.
    let mut harder = Request::new(say());
    harder.extensions_mut().insert(
        RetryPolicy::builder()
            .max_attempts(7)
            .backoff(
                ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0)
                    .unwrap(),
            )
            .build()
            .unwrap(),
    );
    client.say(harder).await.unwrap_err();
    assert_eq!(server.attempt_count_for(Method::Say), 1 + 7);

    // Without an override, the layer's policy.
    client.say(say()).await.unwrap_err();
    assert_eq!(server.attempt_count_for(Method::Say), 1 + 7 + 5);
}

#[tokio::test]
async fn one_layer_over_two_channels_names_each_channels_target() {
    use tonic_retry_testkit::unused_addr;
    let (orders, users) = (unused_addr(), unused_addr());
    let layer = RetryLayer::builder()
        .default_policy(RetryPolicy::no_retries())
        .target("the layer's default label")
        .build()
        .unwrap();
    let client_for = |addr: std::net::SocketAddr, layer: RetryLayer| {
        EchoClient::new(
            ServiceBuilder::new()
                .layer(layer)
                .service(lazy_channel(addr)),
        )
    };
    let mut orders_client = client_for(orders, layer.with_target(format!("orders at {orders}")));
    let mut users_client = client_for(users, layer.with_target(format!("users at {users}")));
    let mut default_client = client_for(users, layer.clone());

    for (client, expected) in [
        (&mut orders_client, format!("orders at {orders}")),
        (&mut users_client, format!("users at {users}")),
        (&mut default_client, "the layer's default label".to_owned()),
    ] {
        let status = client.say(say()).await.unwrap_err();
        let history = CallHistory::of(&status).unwrap();
        assert_eq!(history.target(), Some(expected.as_str()));
    }
    // One layer: the counters are shared.
    assert_eq!(layer.metrics().calls(), 3);
}
