//! Adversarial pass, configuration extremes at run time: every setting at its edge builds (or is
//! rejected by name), and a call made under it against a real tonic server on 127.0.0.1 does what
//! the setting says, without a panic.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{
    CallHistory, HedgingPolicy, Retry, RetryLayer, RetryPolicy, RetryThrottle, ServiceConfig,
    StopReason,
};
use tonic_retry_testkit::pb::SayRequest;
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
use tower::ServiceBuilder;

const GUARD: Duration = Duration::from_secs(30);

fn quick() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1), 1.0).unwrap()
}

fn client(server: &ScriptedServer, layer: RetryLayer) -> EchoClient<Retry<Channel>> {
    EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(lazy_channel(server.addr())),
    )
}

fn say(payload: &[u8]) -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::copy_from_slice(payload),
        text: String::new(),
    }
}

/// A server whose first `Say` fails UNAVAILABLE (Trailers-Only), the rest succeed.
async fn fails_once() -> ScriptedServer {
    ScriptedServer::start(Script::new().say(Action::fail(Code::Unavailable, "once"))).await
}

async fn say_within(
    client: &mut EchoClient<Retry<Channel>>,
    request: impl tonic::IntoRequest<SayRequest>,
) -> Result<u32, tonic::Status> {
    tokio::time::timeout(GUARD, client.say(request))
        .await
        .expect("the call hung")
        .map(|reply| reply.into_inner().attempt)
}

/// An extra-load cap so small that calls earn nothing of it, once kept to the thousandths a
/// token is counted in: `build` took it, and the method was never hedged (every hedge refused),
/// a setting that silently does nothing. It is rejected, as `RetryThrottle::new` rejects a
/// token ratio that rounds to nothing.
#[tokio::test]
async fn an_extra_load_cap_that_rounds_to_nothing_is_rejected_by_name() {
    for load in [1e-9, 0.0001, 0.000_499] {
        let built = HedgingPolicy::builder()
            .max_attempts(2)
            .max_extra_load(load)
            .build();
        let err = built
            .err()
            .unwrap_or_else(|| panic!("max_extra_load {load} built a policy that never hedges"));
        assert_eq!(err.field(), "max_extra_load");
        assert!(err.to_string().contains("0.001"), "{err}");
    }
    // The least cap kept builds.
    let least = HedgingPolicy::builder()
        .max_attempts(2)
        .max_extra_load(0.001)
        .build()
        .unwrap();
    assert_eq!(least.max_extra_load(), Some(0.001));
}

/// The widest per-attempt and call timeouts (`Duration::MAX`: more than the clock can add) mean
/// no time limit: the call is retried and healed, and no attempt tells the server a deadline.
#[tokio::test]
async fn the_widest_timeouts_mean_no_limit() {
    let server = fails_once().await;
    let policy = RetryPolicy::builder()
        .backoff(quick())
        .attempt_timeout(Duration::MAX)
        .call_timeout(Duration::MAX)
        .build()
        .unwrap();
    let mut client = client(
        &server,
        RetryLayer::builder()
            .default_policy(policy)
            .build()
            .unwrap(),
    );

    assert_eq!(say_within(&mut client, say(b"x")).await.unwrap(), 2);
    for attempt in server.attempts() {
        assert_eq!(attempt.grpc_timeout(), None);
    }
}

/// The longest service-config timeout (protobuf's largest duration, 10,000 years) is a deadline
/// every attempt can state in `grpc-timeout`.
#[tokio::test]
async fn the_longest_service_config_timeout_is_a_deadline_attempts_state() {
    let server = fails_once().await;
    let config: ServiceConfig = r#"{"methodConfig": [{
        "name": [{}],
        "timeout": "315576000000s",
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.001s", "maxBackoff": "0.001s",
                        "backoffMultiplier": 1, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#
        .parse()
        .unwrap();
    let mut client = client(
        &server,
        RetryLayer::builder()
            .service_config(&config)
            .build()
            .unwrap(),
    );

    assert_eq!(say_within(&mut client, say(b"x")).await.unwrap(), 2);
    for attempt in server.attempts() {
        let timeout = attempt.grpc_timeout().expect("a deadline");
        assert!(timeout.ends_with('H'), "{timeout}");
        let hours: u64 = timeout.trim_end_matches('H').parse().unwrap();
        assert!((87_659_999..=87_660_000).contains(&hours), "{timeout}");
    }
}

/// A replay budget of zero bytes, for the call or for the whole layer: a unary request (even of
/// an empty message, a frame of five bytes) is sent once, whole, and not retried.
#[tokio::test]
async fn a_zero_byte_budget_replays_no_unary_request() {
    for (per_call, per_layer) in [(0, usize::MAX), (usize::MAX, 0), (0, 0)] {
        let server = ScriptedServer::start(
            Script::new()
                .say(Action::fail(Code::Unavailable, "once"))
                .say(Action::Ok)
                .say(Action::fail(Code::Unavailable, "again")),
        )
        .await;
        let policy = RetryPolicy::builder()
            .backoff(quick())
            .buffer_limit(per_call)
            .build()
            .unwrap();
        let layer = RetryLayer::builder()
            .default_policy(policy)
            .channel_buffer_limit(per_layer)
            .build()
            .unwrap();
        let mut client = client(&server, layer);

        // An empty message is an empty gRPC frame of five bytes: not an empty body. It is the
        // body with no message at all that holds nothing; a unary call always has one message.
        let status = say_within(&mut client, say(b"")).await;
        let status = match status {
            // Five bytes of frame do not fit in zero: not retried.
            Err(status) => status,
            Ok(attempt) => panic!("retried with a budget of 0 (attempt {attempt})"),
        };
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            CallHistory::of(&status).unwrap().stop_reason(),
            StopReason::BufferLimit,
            "({per_call}, {per_layer})"
        );
        // The next call finds the server healed.
        assert_eq!(say_within(&mut client, say(b"x")).await.unwrap(), 2);
    }
}

/// A layer whose retries back off quickly and go through `throttle`.
fn throttled(throttle: RetryThrottle) -> RetryLayer {
    RetryLayer::builder()
        .default_policy(RetryPolicy::builder().backoff(quick()).build().unwrap())
        .throttle(throttle)
        .build()
        .unwrap()
}

/// The smallest and the largest throttles gRFC A6 allows: the smallest (0.001 tokens) allows no
/// retry once one failure took its token; the largest never throttles a single call.
#[tokio::test]
async fn the_extreme_throttles_do_what_their_numbers_say() {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let smallest = throttled(RetryThrottle::new(0.001, 0.001).unwrap());
    let status = say_within(&mut client(&server, smallest.clone()), say(b"x"))
        .await
        .unwrap_err();
    assert_eq!(
        CallHistory::of(&status).unwrap().stop_reason(),
        StopReason::Throttled
    );
    assert_eq!(server.attempt_count(), 1);

    let largest = throttled(RetryThrottle::new(1000.0, 1000.0).unwrap());
    let status = say_within(&mut client(&server, largest.clone()), say(b"x"))
        .await
        .unwrap_err();
    assert_eq!(
        CallHistory::of(&status).unwrap().stop_reason(),
        StopReason::AttemptsExhausted
    );
    assert_eq!(server.attempt_count(), 1 + 5);
    assert_eq!(largest.throttle().unwrap().tokens(), 995.0);
}

/// The most attempts a policy may make, with no backoff at all and a server that never heals:
/// exactly that many attempts, each telling the server how many came before it.
#[tokio::test]
async fn the_most_attempts_with_no_backoff_are_counted_exactly() {
    let server = ScriptedServer::start(
        Script::new().default_action(Method::Say, Action::fail(Code::Unavailable, "down")),
    )
    .await;
    let policy = RetryPolicy::builder()
        .max_attempts(tonic_retry::policy::MAX_ATTEMPTS_LIMIT)
        .backoff(ExponentialBackoff::immediate())
        .build()
        .unwrap();
    let mut client = client(
        &server,
        RetryLayer::builder()
            .default_policy(policy)
            .build()
            .unwrap(),
    );

    let status = say_within(&mut client, Request::new(say(b"x")))
        .await
        .unwrap_err();

    let limit = tonic_retry::policy::MAX_ATTEMPTS_LIMIT;
    assert_eq!(CallHistory::of(&status).unwrap().attempt_count(), limit);
    let previous: Vec<Option<u32>> = server
        .attempts()
        .iter()
        .map(|attempt| attempt.previous_rpc_attempts())
        .collect();
    let expected: Vec<Option<u32>> = (0..limit).map(|n| (n > 0).then_some(n)).collect();
    assert_eq!(previous, expected);
}

/// Keepalive settings as wide as `Keepalive::new` takes them (`Duration::MAX`, read as "never"):
/// hyper adds them to the clock unchecked (`Instant + Duration`), so its connection task panicked
/// at the first ping it scheduled and every call on the channel failed. The calls must go on as
/// with no keepalive at all.
#[tokio::test(start_paused = true)]
async fn the_widest_keepalive_settings_leave_the_connection_working() {
    let server = ScriptedServer::start(Script::new()).await;
    for (interval, timeout) in [
        (Duration::MAX, Duration::from_secs(20)),
        (Duration::from_millis(10), Duration::MAX),
        (Duration::MAX, Duration::MAX),
    ] {
        let keepalive = tonic_retry::Keepalive::new(interval, timeout).unwrap();
        let channel = keepalive
            .apply(tonic_retry_testkit::endpoint(server.addr()))
            .connect_lazy();
        let layer = RetryLayer::builder()
            .default_policy(RetryPolicy::no_retries())
            .build()
            .unwrap();
        let mut client = EchoClient::new(ServiceBuilder::new().layer(layer).service(channel));
        for round in 0..3 {
            let outcome = tokio::time::timeout(GUARD, client.say(say(b"x"))).await;
            let reply = outcome
                .unwrap_or_else(|_| panic!("({interval:?}, {timeout:?}) round {round}: hung"))
                .unwrap_or_else(|status| {
                    panic!("({interval:?}, {timeout:?}) round {round}: {status:?}")
                });
            assert_eq!(reply.into_inner().payload.as_ref(), b"x");
            // Time for the pings the interval asks for (the clock is paused: this is exact).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Service-config JSON at its extremes: nesting far past any parser's stack, numbers past
/// `f64`, durations past protobuf's, huge lists. Each is an error naming where, or a config
/// within the limits; none panics or overflows the stack.
#[test]
fn extreme_service_config_json_is_an_error_or_a_bounded_config() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        r#"{{"methodConfig": [{{"name": [{{}}], "retryPolicy": {}1{}}}]}}"#,
        r#"{"a":"#.repeat(50_000),
        "}".repeat(50_000)
    );
    let policy = |fields: &str| {
        format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "a.B"}}], "retryPolicy": {{{fields}}}}}]}}"#
        )
    };
    let base = r#""maxAttempts": 3, "initialBackoff": "1s", "maxBackoff": "2s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]"#;
    let with = |key: &str, value: &str| {
        let replaced: Vec<String> = base
            .split(", ")
            .map(|field| {
                if field.starts_with(&format!("\"{key}\"")) {
                    format!("\"{key}\": {value}")
                } else {
                    field.to_owned()
                }
            })
            .collect();
        policy(&replaced.join(", "))
    };
    let errors = [
        (deep.clone(), "service config"),
        (deep_object, "service config"),
        (with("maxAttempts", "1e400"), "service config"),
        (
            with("maxAttempts", "-0.0"),
            "methodConfig[0].retryPolicy.maxAttempts",
        ),
        (
            with("maxAttempts", "2.5"),
            "methodConfig[0].retryPolicy.maxAttempts",
        ),
        (
            with("initialBackoff", r#""1e400s""#),
            "methodConfig[0].retryPolicy.initialBackoff",
        ),
        (
            with("initialBackoff", r#""-0s""#),
            "methodConfig[0].retryPolicy.initialBackoff",
        ),
        (
            with("initialBackoff", r#"".s""#),
            "methodConfig[0].retryPolicy.initialBackoff",
        ),
        (
            with("maxBackoff", r#""315576000001s""#),
            "methodConfig[0].retryPolicy.maxBackoff",
        ),
        (with("backoffMultiplier", "1e400"), "service config"),
        (
            with("backoffMultiplier", "0"),
            "methodConfig[0].retryPolicy.backoffMultiplier",
        ),
        (
            with("backoffMultiplier", "-1e308"),
            "methodConfig[0].retryPolicy.backoffMultiplier",
        ),
    ];
    for (json, field) in errors {
        let err = json.parse::<ServiceConfig>().unwrap_err();
        assert_eq!(err.field(), field, "{err}");
    }

    // Within the limits, however large: capped or taken as written.
    let huge_attempts: ServiceConfig = with("maxAttempts", "1e19").parse().unwrap();
    let retry = huge_attempts.method_configs()[0].retry_policy().unwrap();
    assert_eq!(retry.max_attempts(), 5);
    let steepest: ServiceConfig = with("backoffMultiplier", "1e308").parse().unwrap();
    let policy = steepest.method_configs()[0].to_policy();
    assert_eq!(
        policy.backoff().delay(3, 1.0),
        Some(Duration::from_millis(2400))
    );
    let names: Vec<String> = (0..20_000)
        .map(|i| format!(r#"{{"service": "s{i}.S"}}"#))
        .collect();
    let many = format!(r#"{{"methodConfig": [{{"name": [{}]}}]}}"#, names.join(","));
    let many: ServiceConfig = many.parse().unwrap();
    assert_eq!(many.method_configs()[0].names().len(), 20_000);
}
