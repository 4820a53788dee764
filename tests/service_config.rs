//! The gRPC service-config JSON: gRFC A6's examples, strict validation with exact paths, the
//! maxAttempts cap, round trips, no panics on any input, and the config driving real calls.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tonic::Code;
use tonic_retry::code::CodeSet;
use tonic_retry::service_config::{ConfigRetryPolicy, ConfigThrottling, MethodConfig, MethodName};
use tonic_retry::{ConfigError, HedgingPolicy, RetryLayer, ServiceConfig};

/// gRFC A6, "Integration with Service Config": the retry policy example.
const A6_RETRY_POLICY: &str = r#"{
  "methodConfig": [
    {
      "name": [
        {
          "service": "grpc.testing.TestService"
        }
      ],
      "retryPolicy": {
        "maxAttempts": 4,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": [
          "UNAVAILABLE"
        ]
      }
    }
  ]
}"#;

/// gRFC A6, "Throttling Retry Attempts and Hedged RPCs": the throttling example.
const A6_RETRY_THROTTLING: &str = r#"{
  "retryThrottling": {
    "maxTokens": 10,
    "tokenRatio": 0.1
  }
}"#;

/// A retry policy that passes, to place one bad field at a time.
fn good_policy() -> Value {
    json!({
        "maxAttempts": 3,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]
    })
}

/// `good_policy` with one field replaced.
fn policy_with(key: &str, value: Value) -> Value {
    let mut policy = good_policy();
    policy[key] = value;
    policy
}

fn policy_without(key: &str) -> Value {
    let mut policy = good_policy();
    policy.as_object_mut().unwrap().remove(key);
    policy
}

/// One method config for `pkg.Svc` with `policy`.
fn with_policy(policy: Value) -> String {
    json!({"methodConfig": [{"name": [{"service": "pkg.Svc"}], "retryPolicy": policy}]}).to_string()
}

fn with_names(names: Value) -> String {
    json!({"methodConfig": [{"name": names, "retryPolicy": good_policy()}]}).to_string()
}

fn with_throttling(throttling: Value) -> String {
    json!({ "retryThrottling": throttling }).to_string()
}

fn parse_err(json: &str) -> ConfigError {
    match ServiceConfig::from_json(json) {
        Ok(config) => panic!("{json} parsed: {config:?}"),
        Err(err) => err,
    }
}

#[test]
fn a6_retry_policy_example_parses() {
    let config = ServiceConfig::from_json(A6_RETRY_POLICY).unwrap();
    assert_eq!(config.method_configs().len(), 1);
    let method = &config.method_configs()[0];
    assert_eq!(
        method.names(),
        [MethodName::service("grpc.testing.TestService").unwrap()]
    );
    assert_eq!(method.timeout(), None);
    let policy = method.retry_policy().unwrap();
    assert_eq!(policy.max_attempts(), 4);
    assert_eq!(policy.initial_backoff(), Duration::from_millis(100));
    assert_eq!(policy.max_backoff(), Duration::from_secs(1));
    assert_eq!(policy.backoff_multiplier(), 2.0);
    assert_eq!(
        policy.retryable_status_codes(),
        CodeSet::of(&[Code::Unavailable])
    );
    assert_eq!(config.retry_throttling(), None);

    let retry = policy.to_policy();
    assert_eq!(retry.max_attempts(), 4);
    assert_eq!(retry.retryable_codes(), CodeSet::of(&[Code::Unavailable]));
}

#[test]
fn a6_throttling_example_parses() {
    let config = ServiceConfig::from_json(A6_RETRY_THROTTLING).unwrap();
    assert!(config.method_configs().is_empty());
    let throttling = config.retry_throttling().unwrap();
    assert_eq!(throttling.max_tokens(), 10.0);
    assert_eq!(throttling.token_ratio(), 0.1);
    assert_eq!(throttling, ConfigThrottling::new(10.0, 0.1).unwrap());

    let layer = RetryLayer::builder()
        .service_config(&config)
        .build()
        .unwrap();
    assert_eq!(layer.throttle().map(|t| t.tokens()), Some(10.0));
}

#[test]
fn real_world_configs_parse_unknown_fields_ignored() {
    // grpc-go's retry example: PascalCase keys (its decoder ignores case), ".01s", waitForReady.
    let grpc_go = r#"{
        "methodConfig": [{
            "name": [{"service": "grpc.examples.echo.Echo"}],
            "waitForReady": true,
            "retryPolicy": {
                "MaxAttempts": 4,
                "InitialBackoff": ".01s",
                "MaxBackoff": ".01s",
                "BackoffMultiplier": 1.0,
                "RetryableStatusCodes": [ "UNAVAILABLE" ]
            }
        }]
    }"#;
    let config = ServiceConfig::from_json(grpc_go).unwrap();
    let policy = config.method_configs()[0].retry_policy().unwrap();
    assert_eq!(policy.max_attempts(), 4);
    assert_eq!(policy.initial_backoff(), Duration::from_millis(10));

    let everything = r#"{
        "loadBalancingConfig": [{"round_robin": {}}],
        "loadBalancingPolicy": "round_robin",
        "healthCheckConfig": {"serviceName": ""},
        "methodConfig": [
            {
                "name": [{"service": "helloworld.Greeter", "method": "SayHello"}, {"service": "helloworld.Admin", "method": null}],
                "timeout": "1.5s",
                "maxRequestMessageBytes": 1024,
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 1.5,
                    "perAttemptRecvTimeout": "1s",
                    "retryableStatusCodes": ["unavailable", 8, "Aborted"]
                }
            },
            {"name": [{}], "timeout": "30s"},
            {"name": [{"service": "helloworld.Quiet", "method": ""}]}
        ],
        "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.125}
    }"#;
    let config = ServiceConfig::from_json(everything).unwrap();
    let first = &config.method_configs()[0];
    assert_eq!(
        first.names(),
        [
            MethodName::method("helloworld.Greeter", "SayHello").unwrap(),
            MethodName::service("helloworld.Admin").unwrap(),
        ]
    );
    assert_eq!(first.timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(
        first.retry_policy().unwrap().retryable_status_codes(),
        CodeSet::of(&[Code::Unavailable, Code::ResourceExhausted, Code::Aborted])
    );
    assert!(config.method_configs()[1].names()[0].is_default());
    assert_eq!(config.method_configs()[2].retry_policy(), None);
    assert_eq!(config.method_configs()[2].to_policy().max_attempts(), 1);

    // gRPC's matching: method, then service, then the default.
    let timeout = |path| config.timeout_for(path);
    assert_eq!(
        timeout("/helloworld.Greeter/SayHello"),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        timeout("helloworld.Admin/Any"),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        timeout("/helloworld.Greeter/Other"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        timeout("/helloworld.Quiet/Any"),
        None,
        "matched, but no timeout"
    );
    assert_eq!(
        config
            .lookup("/helloworld.Quiet/Any")
            .map(MethodConfig::names),
        Some(&[MethodName::service("helloworld.Quiet").unwrap()][..])
    );
    // Behind a gateway's path prefix, the last two segments name the method.
    assert_eq!(
        config
            .lookup("/api/v1/helloworld.Quiet/Any")
            .map(MethodConfig::names),
        Some(&[MethodName::service("helloworld.Quiet").unwrap()][..])
    );

    RetryLayer::builder()
        .service_config(&config)
        .build()
        .unwrap();
}

#[test]
fn bad_configs_name_the_exact_path() {
    let rp = "methodConfig[0].retryPolicy";
    let cases: Vec<(String, String, &str)> = vec![
        ("not json".into(), "service config".into(), "valid JSON"),
        ("".into(), "service config".into(), "valid JSON"),
        ("[]".into(), "service config".into(), "JSON object"),
        (
            r#"{"methodConfig": {}}"#.into(),
            "methodConfig".into(),
            "JSON array",
        ),
        (
            r#"{"methodConfig": [7]}"#.into(),
            "methodConfig[0]".into(),
            "JSON object",
        ),
        (
            json!({"methodConfig": [{"retryPolicy": good_policy()}]}).to_string(),
            "methodConfig[0].name".into(),
            "at least one name",
        ),
        (
            with_names(json!([])),
            "methodConfig[0].name".into(),
            "at least one name",
        ),
        (
            with_names(json!({})),
            "methodConfig[0].name".into(),
            "JSON array",
        ),
        (
            with_names(json!(["pkg.Svc"])),
            "methodConfig[0].name[0]".into(),
            "JSON object",
        ),
        (
            with_names(json!([{"method": "Say"}])),
            "methodConfig[0].name[0].service".into(),
            "must be set when method is set",
        ),
        (
            with_names(json!([{"service": "", "method": "Say"}])),
            "methodConfig[0].name[0].service".into(),
            "must be set when method is set",
        ),
        (
            with_names(json!([{"service": "pkg.Svc"}, {"service": "1pkg.Svc"}])),
            "methodConfig[0].name[1].service".into(),
            "fully qualified service name",
        ),
        (
            with_names(json!([{"service": "pkg.Svc/Say"}])),
            "methodConfig[0].name[0].service".into(),
            "fully qualified service name",
        ),
        (
            with_names(json!([{"service": "pkg.Svc", "method": "Say-Hello"}])),
            "methodConfig[0].name[0].method".into(),
            "method name",
        ),
        (
            with_names(json!([{"service": 42}])),
            "methodConfig[0].name[0].service".into(),
            "must be a string",
        ),
        (
            with_names(json!([{"service": "pkg.Svc"}, {"service": "pkg.Svc", "method": ""}])),
            "methodConfig[0].name[1]".into(),
            "configured twice (first at methodConfig[0].name[0])",
        ),
        (
            json!({"methodConfig": [
                {"name": [{"service": "a.B", "method": "M"}]},
                {"name": [{"service": "c.D"}, {"service": "a.B", "method": "M"}]}
            ]})
            .to_string(),
            "methodConfig[1].name[1]".into(),
            "configured twice (first at methodConfig[0].name[0])",
        ),
        (
            json!({"methodConfig": [{"name": [{}]}, {"name": [{"service": null}]}]}).to_string(),
            "methodConfig[1].name[0]".into(),
            "configured twice (first at methodConfig[0].name[0])",
        ),
        (with_policy(json!([])), rp.into(), "JSON object"),
        (
            with_policy(policy_without("maxAttempts")),
            format!("{rp}.maxAttempts"),
            "is required",
        ),
        (
            with_policy(policy_with("maxAttempts", json!(1))),
            format!("{rp}.maxAttempts"),
            "must be >= 2",
        ),
        (
            with_policy(policy_with("maxAttempts", json!(-3))),
            format!("{rp}.maxAttempts"),
            "must be >= 2",
        ),
        (
            with_policy(policy_with("maxAttempts", json!(2.5))),
            format!("{rp}.maxAttempts"),
            "integer",
        ),
        (
            with_policy(policy_with("maxAttempts", json!("3"))),
            format!("{rp}.maxAttempts"),
            "integer",
        ),
        (
            with_policy(policy_without("initialBackoff")),
            format!("{rp}.initialBackoff"),
            "is required",
        ),
        (
            with_policy(policy_with("initialBackoff", json!("0s"))),
            format!("{rp}.initialBackoff"),
            "must be > 0",
        ),
        (
            with_policy(policy_with("initialBackoff", json!("100ms"))),
            format!("{rp}.initialBackoff"),
            "protobuf JSON duration",
        ),
        (
            with_policy(policy_with("initialBackoff", json!(0.1))),
            format!("{rp}.initialBackoff"),
            "protobuf JSON duration",
        ),
        (
            with_policy(policy_with("initialBackoff", json!("0.0000000001s"))),
            format!("{rp}.initialBackoff"),
            "at most 9 fractional digits",
        ),
        (
            with_policy(policy_with("maxBackoff", json!("-1s"))),
            format!("{rp}.maxBackoff"),
            "must not be negative",
        ),
        (
            with_policy(policy_with("maxBackoff", json!("0.05s"))),
            format!("{rp}.maxBackoff"),
            "must be >= initialBackoff (0.1s)",
        ),
        (
            with_policy(policy_with("maxBackoff", json!("315576000001s"))),
            format!("{rp}.maxBackoff"),
            "must be at most 315576000000s",
        ),
        (
            with_policy(policy_without("backoffMultiplier")),
            format!("{rp}.backoffMultiplier"),
            "is required",
        ),
        (
            with_policy(policy_with("backoffMultiplier", json!(0))),
            format!("{rp}.backoffMultiplier"),
            "must be > 0",
        ),
        (
            with_policy(policy_with("backoffMultiplier", json!("2"))),
            format!("{rp}.backoffMultiplier"),
            "must be a number",
        ),
        (
            with_policy(policy_without("retryableStatusCodes")),
            format!("{rp}.retryableStatusCodes"),
            "is required",
        ),
        (
            with_policy(policy_with("retryableStatusCodes", json!([]))),
            format!("{rp}.retryableStatusCodes"),
            "must not be empty",
        ),
        (
            with_policy(policy_with("retryableStatusCodes", json!("UNAVAILABLE"))),
            format!("{rp}.retryableStatusCodes"),
            "JSON array",
        ),
        (
            with_policy(policy_with("retryableStatusCodes", json!(["UNAVAIL"]))),
            format!("{rp}.retryableStatusCodes[0]"),
            "status code name",
        ),
        (
            with_policy(policy_with(
                "retryableStatusCodes",
                json!(["UNAVAILABLE", "OK"]),
            )),
            format!("{rp}.retryableStatusCodes[1]"),
            "must not be OK",
        ),
        (
            with_policy(policy_with("retryableStatusCodes", json!([0]))),
            format!("{rp}.retryableStatusCodes[0]"),
            "must not be OK",
        ),
        (
            with_policy(policy_with("retryableStatusCodes", json!([17]))),
            format!("{rp}.retryableStatusCodes[0]"),
            "0..=16",
        ),
        (
            with_policy(policy_with("retryableStatusCodes", json!([true]))),
            format!("{rp}.retryableStatusCodes[0]"),
            "status code name",
        ),
        (
            json!({"methodConfig": [{"name": [{}], "timeout": "1"}]}).to_string(),
            "methodConfig[0].timeout".into(),
            "protobuf JSON duration",
        ),
        (
            json!({"methodConfig": [{"name": [{}], "timeout": "0s"}]}).to_string(),
            "methodConfig[0].timeout".into(),
            "must be > 0",
        ),
        (
            with_throttling(json!(10)),
            "retryThrottling".into(),
            "JSON object",
        ),
        (
            with_throttling(json!({"tokenRatio": 0.1})),
            "retryThrottling.maxTokens".into(),
            "is required",
        ),
        (
            with_throttling(json!({"maxTokens": 0, "tokenRatio": 0.1})),
            "retryThrottling.maxTokens".into(),
            "(0, 1000]",
        ),
        (
            with_throttling(json!({"maxTokens": 1001, "tokenRatio": 0.1})),
            "retryThrottling.maxTokens".into(),
            "(0, 1000]",
        ),
        (
            with_throttling(json!({"maxTokens": 10})),
            "retryThrottling.tokenRatio".into(),
            "is required",
        ),
        (
            with_throttling(json!({"maxTokens": 10, "tokenRatio": -0.1})),
            "retryThrottling.tokenRatio".into(),
            "(0, 1000]",
        ),
        (
            with_throttling(json!({"maxTokens": 10, "tokenRatio": 0.0001})),
            "retryThrottling.tokenRatio".into(),
            "3 decimal places",
        ),
        (
            with_throttling(json!({"maxTokens": 10, "tokenRatio": 1e-10})),
            "retryThrottling.tokenRatio".into(),
            "at least 0.001",
        ),
        (
            with_throttling(json!({"maxTokens": 1e-10, "tokenRatio": 0.1})),
            "retryThrottling.maxTokens".into(),
            "at least 0.001",
        ),
    ];
    assert!(cases.len() >= 15);
    for (json, field, reason) in &cases {
        let err = parse_err(json);
        assert_eq!(err.field(), field, "{json}\n=> {err}");
        assert!(
            err.reason().contains(reason),
            "{json}\n=> {err}\nwanted: {reason}"
        );
        assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
    }
}

/// Issue 10 §3: this parsed, then building the layer panicked with `unreachable!`.
#[test]
fn a_token_ratio_too_small_to_keep_is_rejected_at_parse_time() {
    let json = r#"{"retryThrottling":{"maxTokens":10,"tokenRatio":1e-10}}"#;
    let err = parse_err(json);
    assert_eq!(
        err.to_string(),
        "retryThrottling.tokenRatio: must be at least 0.001 (three decimal places are kept), got 1e-10"
    );
    // The typed constructor shares the validation, under the JSON names.
    assert_eq!(
        ConfigThrottling::new(10.0, 1e-10).unwrap_err().field(),
        "tokenRatio"
    );
}

#[test]
fn errors_read_as_path_reason_and_value() {
    // The issue's own example: the third entry's multiplier.
    let entry = |service: &str, multiplier: Value| {
        json!({
            "name": [{"service": service}],
            "retryPolicy": policy_with("backoffMultiplier", multiplier)
        })
    };
    let json = json!({"methodConfig": [
        entry("a.A", json!(2)),
        entry("b.B", json!(1.5)),
        entry("c.C", json!(-1)),
    ]})
    .to_string();
    assert_eq!(
        parse_err(&json).to_string(),
        "methodConfig[2].retryPolicy.backoffMultiplier: must be > 0, got -1"
    );
    assert_eq!(
        parse_err(&with_policy(policy_with("maxAttempts", json!(1)))).to_string(),
        "methodConfig[0].retryPolicy.maxAttempts: must be >= 2, got 1"
    );
    assert_eq!(
        parse_err(&with_policy(policy_with("initialBackoff", json!("0.000s")))).to_string(),
        "methodConfig[0].retryPolicy.initialBackoff: must be > 0, got \"0.000s\""
    );
    assert_eq!(
        parse_err(&with_policy(policy_without("maxBackoff"))).to_string(),
        "methodConfig[0].retryPolicy.maxBackoff: is required in a retryPolicy (gRFC A6), got nothing"
    );
}

/// A `tracing` writer that keeps what it is given.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn with_logs<T>(run: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, run);
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    (result, logs)
}

#[test]
fn max_attempts_above_the_cap_is_capped_with_a_warning() {
    let json = json!({"methodConfig": [
        {"name": [{"service": "a.A"}], "retryPolicy": good_policy()},
        {"name": [{"service": "b.B"}], "retryPolicy": policy_with("maxAttempts", json!(10))},
    ]})
    .to_string();
    let attempts = |config: &ServiceConfig, i: usize| {
        config.method_configs()[i]
            .retry_policy()
            .unwrap()
            .max_attempts()
    };

    let (config, logs) = with_logs(|| ServiceConfig::from_json(&json).unwrap());
    assert_eq!(attempts(&config, 0), 3);
    assert_eq!(attempts(&config, 1), 5, "capped at the default cap");
    assert!(logs.contains("WARN"), "{logs}");
    assert!(
        logs.contains("methodConfig[1].retryPolicy.maxAttempts: maxAttempts 10 is above the cap of 5; capped to 5"),
        "{logs}"
    );
    assert_eq!(
        logs.lines().count(),
        1,
        "one warning, for the one capped value: {logs}"
    );

    let (config, logs) = with_logs(|| ServiceConfig::from_json_with_cap(&json, 7).unwrap());
    assert_eq!(attempts(&config, 1), 7);
    assert!(logs.contains("capped to 7"), "{logs}");

    let (config, logs) = with_logs(|| ServiceConfig::from_json_with_cap(&json, 10).unwrap());
    assert_eq!(attempts(&config, 1), 10);
    assert!(logs.is_empty(), "at the cap is not above it: {logs}");

    // Huge values cap too; a cap below 2 is taken as 2.
    let huge = with_policy(policy_with("maxAttempts", json!(1e30)));
    let (config, logs) = with_logs(|| ServiceConfig::from_json_with_cap(&huge, 0).unwrap());
    assert_eq!(attempts(&config, 0), 2);
    assert!(logs.contains("capped to 2"), "{logs}");
}

/// Issue 10 §5: gRFC A6 caps maxAttempts at 5; no cap a caller passes lifts a policy past
/// `MAX_ATTEMPTS_LIMIT`, and the typed constructor refuses what the builder refuses.
#[test]
fn max_attempts_never_exceeds_the_limit() {
    let huge = with_policy(policy_with("maxAttempts", json!(1e30)));
    let attempts = |config: ServiceConfig| {
        config.method_configs()[0]
            .retry_policy()
            .unwrap()
            .max_attempts()
    };
    assert_eq!(attempts(ServiceConfig::from_json(&huge).unwrap()), 5);
    let (config, _) = with_logs(|| ServiceConfig::from_json_with_cap(&huge, u32::MAX).unwrap());
    assert_eq!(attempts(config), tonic_retry::policy::MAX_ATTEMPTS_LIMIT);

    let err = ConfigRetryPolicy::new(
        u32::MAX,
        Duration::from_secs(1),
        Duration::from_secs(1),
        2.0,
        [Code::Unavailable],
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "maxAttempts: must be <= 100 (MAX_ATTEMPTS_LIMIT), got 4294967295"
    );
    let err = tonic_retry::RetryPolicy::builder()
        .max_attempts(u32::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "max_attempts");
}

/// gRFC A6, "Integration with Service Config": the hedging policy example.
const A6_HEDGING_POLICY: &str = r#"{
  "methodConfig": [
    {
      "name": [{ "service": "grpc.testing.TestService" }],
      "hedgingPolicy": {
        "maxAttempts": 4,
        "hedgingDelay": "0.5s",
        "nonFatalStatusCodes": ["UNAVAILABLE", "INTERNAL", "ABORTED"]
      }
    }
  ]
}"#;

#[test]
fn a6_hedging_policy_example_parses() {
    let config = ServiceConfig::from_json(A6_HEDGING_POLICY).unwrap();
    let entry = &config.method_configs()[0];
    assert_eq!(entry.retry_policy(), None);
    let hedging = entry.hedging_policy().unwrap();
    assert_eq!(hedging.max_attempts(), 4);
    assert_eq!(hedging.delay(), Duration::from_millis(500));
    assert_eq!(
        hedging.non_fatal_codes(),
        CodeSet::of(&[Code::Unavailable, Code::Internal, Code::Aborted])
    );
    let policy = entry.to_policy();
    assert_eq!(policy.hedging(), Some(hedging));
    assert_eq!(policy.max_attempts(), 1, "a hedged call is not retried");
    assert_eq!(
        ServiceConfig::from_json(&config.to_json()).unwrap(),
        config,
        "round trip"
    );

    // Only maxAttempts is required; the delay defaults to zero, as in A6.
    let json = json!({"methodConfig": [{
        "name": [{"service": "pkg.Svc"}],
        "timeout": "2s",
        "hedgingPolicy": {"maxAttempts": 2}
    }]})
    .to_string();
    let config = ServiceConfig::from_json(&json).unwrap();
    let policy = config.method_configs()[0].to_policy();
    assert_eq!(policy.hedging().unwrap().delay(), Duration::ZERO);
    assert_eq!(policy.call_timeout(), Some(Duration::from_secs(2)));
}

#[test]
fn bad_hedging_policies_name_the_exact_path() {
    let cases = [
        (json!({}), "methodConfig[0].hedgingPolicy.maxAttempts"),
        (
            json!({"maxAttempts": 1}),
            "methodConfig[0].hedgingPolicy.maxAttempts",
        ),
        (
            json!({"maxAttempts": "3"}),
            "methodConfig[0].hedgingPolicy.maxAttempts",
        ),
        (
            json!({"maxAttempts": 3, "hedgingDelay": "-1s"}),
            "methodConfig[0].hedgingPolicy.hedgingDelay",
        ),
        (
            json!({"maxAttempts": 3, "nonFatalStatusCodes": ["OK"]}),
            "methodConfig[0].hedgingPolicy.nonFatalStatusCodes[0]",
        ),
        (
            json!({"maxAttempts": 3, "nonFatalStatusCodes": ["NOPE"]}),
            "methodConfig[0].hedgingPolicy.nonFatalStatusCodes[0]",
        ),
        (json!([]), "methodConfig[0].hedgingPolicy"),
    ];
    for (policy, path) in cases {
        let json = json!({"methodConfig": [{
            "name": [{"service": "pkg.Svc"}],
            "hedgingPolicy": policy
        }]})
        .to_string();
        assert_eq!(parse_err(&json).field(), path, "{json}");
    }
}

#[test]
fn a_method_with_both_a_retry_and_a_hedging_policy_is_rejected_by_name() {
    let json = json!({"methodConfig": [{
        "name": [{"service": "pkg.Svc", "method": "Get"}],
        "retryPolicy": good_policy(),
        "hedgingPolicy": {"maxAttempts": 3}
    }]})
    .to_string();
    let err = parse_err(&json);
    assert_eq!(err.field(), "methodConfig[0]");
    assert!(err.to_string().contains("pkg.Svc/Get"), "{err}");
    assert!(err.to_string().contains("not both"), "{err}");
}

#[test]
fn hedged_max_attempts_above_five_are_capped_with_a_warning() {
    let json = json!({"methodConfig": [{
        "name": [{"service": "pkg.Svc"}],
        "hedgingPolicy": {"maxAttempts": 9}
    }]})
    .to_string();
    let (config, logs) = with_logs(|| ServiceConfig::from_json(&json).unwrap());
    let hedging = config.method_configs()[0].hedging_policy().unwrap();
    assert_eq!(hedging.max_attempts(), 5);
    assert!(logs.contains("capped"), "{logs}");
    // Even when the caller raised the retry cap: five attempts at once is A6's limit.
    let config = ServiceConfig::from_json_with_cap(&json, 50).unwrap();
    assert_eq!(
        config.method_configs()[0]
            .hedging_policy()
            .unwrap()
            .max_attempts(),
        5
    );
}

#[test]
fn typed_to_json_and_back_is_equal() {
    let config = ServiceConfig::new()
        .with_method_config(
            MethodConfig::new([
                MethodName::method("pkg.Svc", "Say").unwrap(),
                MethodName::service("pkg.Other").unwrap(),
            ])
            .unwrap()
            .with_timeout(Duration::new(1, 1))
            .unwrap()
            .with_retry_policy(
                ConfigRetryPolicy::new(
                    5,
                    Duration::from_millis(100),
                    Duration::from_millis(1234),
                    1.7,
                    [Code::Unavailable, Code::Aborted, Code::Unauthenticated],
                )
                .unwrap(),
            ),
        )
        .unwrap()
        .with_method_config(MethodConfig::new([MethodName::default()]).unwrap())
        .unwrap()
        .with_retry_throttling(ConfigThrottling::new(42.5, 0.125).unwrap());
    let json = config.to_json();
    assert_eq!(ServiceConfig::from_json(&json).unwrap(), config, "{json}");
    assert!(json.contains("\"timeout\": \"1.000000001s\""), "{json}");
    assert!(json.contains("\"maxBackoff\": \"1.234s\""), "{json}");

    // Parsed → JSON → parsed, for the A6 examples.
    for example in [A6_RETRY_POLICY, A6_RETRY_THROTTLING] {
        let parsed = ServiceConfig::from_json(example).unwrap();
        assert_eq!(ServiceConfig::from_json(&parsed.to_json()).unwrap(), parsed);
    }
    assert_eq!(ServiceConfig::new().to_json().trim(), "{}");
    assert_eq!(
        ServiceConfig::from_json("{}").unwrap(),
        ServiceConfig::new()
    );

    // The typed API refuses what the parser refuses.
    let err = ServiceConfig::new()
        .with_method_config(MethodConfig::new([MethodName::default()]).unwrap())
        .unwrap()
        .with_method_config(MethodConfig::new([MethodName::default()]).unwrap())
        .unwrap_err();
    assert_eq!(err.field(), "methodConfig[1].name[0]");
    assert_eq!(
        MethodConfig::new([MethodName::default(), MethodName::default()])
            .unwrap_err()
            .field(),
        "name[1]"
    );
    assert!(MethodConfig::new([]).is_err());
    assert!(
        ConfigRetryPolicy::new(
            1,
            Duration::from_secs(1),
            Duration::from_secs(1),
            2.0,
            [Code::Unavailable]
        )
        .is_err()
    );
    assert!(
        ConfigRetryPolicy::new(
            2,
            Duration::from_secs(1),
            Duration::from_secs(1),
            2.0,
            [Code::Ok]
        )
        .is_err()
    );
}

#[test]
fn service_config_policies_reach_the_layer() {
    let config = ServiceConfig::from_json(
        r#"{"methodConfig": [
            {"name": [{"service": "pkg.Svc"}],
             "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s",
                             "backoffMultiplier": 1, "retryableStatusCodes": ["PERMISSION_DENIED"]}}
        ]}"#,
    )
    .unwrap();
    let (policy, logs) = with_logs(|| config.method_configs()[0].to_policy());
    assert!(
        policy.fail_fast_codes().contains(Code::PermissionDenied),
        "fail-fast codes win over retryableStatusCodes, as everywhere in tonic-retry"
    );
    assert!(
        !policy.retryable_codes().contains(Code::PermissionDenied),
        "and the policy says so"
    );
    assert!(
        logs.contains("WARN") && logs.contains("PERMISSION_DENIED"),
        "{logs}"
    );
    assert!(policy.fail_fast_codes().contains(Code::Unimplemented));

    // The same name set on the builder directly is configured twice.
    let err = RetryLayer::builder()
        .service("pkg.Svc", tonic_retry::RetryPolicy::default())
        .service_config(&config)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("configured twice"), "{err}");
}

mod end_to_end {
    use super::*;
    use tonic_retry::{CallHistory, Retry};
    use tonic_retry_testkit::pb::SayRequest;
    use tonic_retry_testkit::pb::echo_client::EchoClient;
    use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};
    use tower::ServiceBuilder;

    fn layer(json: &str) -> RetryLayer {
        let config = ServiceConfig::from_json(json).unwrap();
        RetryLayer::builder()
            .service_config(&config)
            .jitter_seed(1)
            .build()
            .unwrap()
    }

    fn client(
        server: &ScriptedServer,
        layer: &RetryLayer,
    ) -> EchoClient<Retry<tonic::transport::Channel>> {
        EchoClient::new(
            ServiceBuilder::new()
                .layer(layer.clone())
                .service(lazy_channel(server.addr())),
        )
    }

    fn say() -> SayRequest {
        SayRequest {
            payload: bytes::Bytes::from_static(b"config"),
            text: String::new(),
        }
    }

    const POLICY: &str = r#""initialBackoff": "0.001s", "maxBackoff": "0.002s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]"#;

    #[tokio::test]
    async fn method_policy_from_json_retries() {
        let server = ScriptedServer::start(Script::new().then_n(
            Method::Say,
            3,
            Action::fail(Code::Unavailable, "warming up"),
        ))
        .await;
        let json = format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "tonic_retry.test.Echo", "method": "Say"}}],
                 "retryPolicy": {{"maxAttempts": 4, {POLICY}}}}}]}}"#
        );
        let layer = layer(&json);
        let reply = client(&server, &layer).say(say()).await.unwrap();
        assert_eq!(reply.into_inner().attempt, 4);
        assert_eq!(server.attempts_for(Method::Say).len(), 4);
    }

    #[tokio::test]
    async fn service_policy_from_json_bounds_attempts() {
        let server = ScriptedServer::start(Script::new().then_n(
            Method::Say,
            5,
            Action::fail(Code::Unavailable, "down"),
        ))
        .await;
        let json = format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "tonic_retry.test.Echo"}}],
                 "retryPolicy": {{"maxAttempts": 2, {POLICY}}}}}]}}"#
        );
        let layer = layer(&json);
        let status = client(&server, &layer).say(say()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(CallHistory::of(&status).unwrap().attempts().len(), 2);
        assert_eq!(server.attempts_for(Method::Say).len(), 2);
    }

    /// Issue 10 §5: as in gRPC, a method no `methodConfig` names (and no default name) is not
    /// retried; the builder's built-in default used to retry it up to 5 times.
    #[tokio::test]
    async fn a_method_the_config_does_not_name_is_not_retried() {
        let server = ScriptedServer::start(Script::new().then_n(
            Method::Say,
            5,
            Action::fail(Code::Unavailable, "down"),
        ))
        .await;
        let json = format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "other.Service"}}],
                 "retryPolicy": {{"maxAttempts": 4, {POLICY}}}}}]}}"#
        );
        let layer = layer(&json);
        let status = client(&server, &layer).say(say()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(CallHistory::of(&status).unwrap().attempts().len(), 1);
        assert_eq!(server.attempts_for(Method::Say).len(), 1);
    }

    /// An explicit default policy wins over that fallback, given before or after the config.
    #[tokio::test]
    async fn an_explicit_default_policy_applies_to_unnamed_methods_in_either_order() {
        let config = ServiceConfig::from_json(r#"{"methodConfig": []}"#).unwrap();
        let default = || {
            tonic_retry::RetryPolicy::builder()
                .max_attempts(3)
                .backoff(tonic_retry::backoff::ExponentialBackoff::immediate())
                .build()
                .unwrap()
        };
        let before = RetryLayer::builder()
            .default_policy(default())
            .service_config(&config)
            .build()
            .unwrap();
        let after = RetryLayer::builder()
            .service_config(&config)
            .default_policy(default())
            .build()
            .unwrap();
        for layer in [before, after] {
            let server = ScriptedServer::start(Script::new().then_n(
                Method::Say,
                5,
                Action::fail(Code::Unavailable, "down"),
            ))
            .await;
            let status = client(&server, &layer).say(say()).await.unwrap_err();
            assert_eq!(CallHistory::of(&status).unwrap().attempts().len(), 3);
            assert_eq!(server.attempts_for(Method::Say).len(), 3);
        }
    }

    #[tokio::test]
    async fn entry_without_retry_policy_means_no_retries() {
        let server = ScriptedServer::start(Script::new().then_n(
            Method::Say,
            5,
            Action::fail(Code::Unavailable, "down"),
        ))
        .await;
        let layer = layer(r#"{"methodConfig": [{"name": [{}]}]}"#);
        let status = client(&server, &layer).say(say()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(server.attempts_for(Method::Say).len(), 1);
    }
}

/// A default policy from the builder and from the config's default name is configured twice,
/// whichever comes first.
#[test]
fn a_default_policy_from_two_sources_is_an_error() {
    let config =
        ServiceConfig::from_json(r#"{"methodConfig": [{"name": [{"service": "a.A"}, {}]}]}"#)
            .unwrap();
    let policy = tonic_retry::RetryPolicy::default;
    let errors = [
        RetryLayer::builder()
            .default_policy(policy())
            .service_config(&config)
            .build()
            .unwrap_err(),
        RetryLayer::builder()
            .service_config(&config)
            .default_policy(policy())
            .build()
            .unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err.field(), "default_policy", "{err}");
        assert!(err.reason().contains("configured twice"), "{err}");
        assert!(err.reason().contains("methodConfig[0].name[1]"), "{err}");
    }
    // Two configs that both name the default.
    let err = RetryLayer::builder()
        .service_config(&config)
        .service_config(&ServiceConfig::from_json(r#"{"methodConfig": [{"name": [{}]}]}"#).unwrap())
        .build()
        .unwrap_err();
    assert!(err.reason().contains("configured twice"), "{err}");
}

/// Issue 10 §5: `throttle`, `budget` and `retryThrottling` used to replace one another silently.
#[test]
fn two_retry_gates_are_an_error_naming_both() {
    use tonic_retry::RetryThrottle;
    use tower::retry::budget::TpsBudget;

    let throttling = ServiceConfig::from_json(A6_RETRY_THROTTLING).unwrap();
    let budget = || TpsBudget::new(Duration::from_secs(10), 1, 0.2);
    let throttle = RetryThrottle::grpc_default;
    let cases = [
        (
            RetryLayer::builder().throttle(throttle()).budget(budget()),
            "budget",
            "RetryLayerBuilder::throttle",
        ),
        (
            RetryLayer::builder().budget(budget()).throttle(throttle()),
            "throttle",
            "RetryLayerBuilder::budget",
        ),
        (
            RetryLayer::builder()
                .throttle(throttle())
                .service_config(&throttling),
            "retryThrottling",
            "RetryLayerBuilder::throttle",
        ),
        (
            RetryLayer::builder()
                .service_config(&throttling)
                .budget(budget()),
            "budget",
            "the service config's retryThrottling",
        ),
        (
            RetryLayer::builder()
                .service_config(&throttling)
                .service_config(&throttling),
            "retryThrottling",
            "the service config's retryThrottling",
        ),
    ];
    for (builder, field, other) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err.field(), field, "{err}");
        assert!(err.reason().contains(other), "{err}");
        assert!(err.reason().contains("one retry gate"), "{err}");
    }

    // One setter twice replaces its own value.
    let layer = RetryLayer::builder()
        .throttle(RetryThrottle::new(100.0, 1.0).unwrap())
        .throttle(RetryThrottle::new(20.0, 1.0).unwrap())
        .build()
        .unwrap();
    assert_eq!(layer.throttle().unwrap().tokens(), 20.0);
    // And the config's throttling alone is the layer's.
    let layer = RetryLayer::builder()
        .service_config(&throttling)
        .build()
        .unwrap();
    assert_eq!(layer.throttle().unwrap().tokens(), 10.0);
}

/// Issue 10 §5: the duplicate-name check was quadratic (40,000 names took 33 s). Asserts the
/// outcome, not the time: every name is found, and a duplicate is placed exactly.
#[test]
fn forty_thousand_names_are_checked_and_found() {
    const NAMES: usize = 40_000;
    let names: Vec<Value> = (0..NAMES)
        .map(|i| json!({"service": format!("pkg.S{i}"), "method": "M"}))
        .collect();

    // All in one entry.
    let json = json!({"methodConfig": [{"name": names, "timeout": "1s"}]}).to_string();
    let config = ServiceConfig::from_json(&json).unwrap();
    assert_eq!(config.method_configs()[0].names().len(), NAMES);
    assert_eq!(
        config.timeout_for("/pkg.S39999/M"),
        Some(Duration::from_secs(1))
    );
    assert_eq!(config.timeout_for("/pkg.S40000/M"), None);

    // One entry each, the last one repeating an early name.
    let mut entries: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"name": [name], "timeout": format!("{}s", i + 1)}))
        .collect();
    let config = ServiceConfig::from_json(&json!({ "methodConfig": entries }).to_string()).unwrap();
    assert_eq!(config.method_configs().len(), NAMES);
    assert_eq!(
        config.timeout_for("pkg.S12345/M"),
        Some(Duration::from_secs(12346))
    );
    let layer = RetryLayer::builder().service_config(&config).build();
    assert!(layer.is_ok());
    entries.push(json!({"name": [{"service": "pkg.S7", "method": "M"}]}));
    let err = parse_err(&json!({ "methodConfig": entries }).to_string());
    assert_eq!(err.field(), format!("methodConfig[{NAMES}].name[0]"));
    assert!(
        err.reason().contains("first at methodConfig[7].name[0]"),
        "{err}"
    );

    // The typed API is linear too.
    let mut typed = ServiceConfig::new();
    for i in 0..NAMES {
        let name = MethodName::method(&format!("pkg.S{i}"), "M").unwrap();
        typed = typed
            .with_method_config(MethodConfig::new([name]).unwrap())
            .unwrap();
    }
    let again = MethodConfig::new([MethodName::method("pkg.S39999", "M").unwrap()]).unwrap();
    let err = typed.with_method_config(again).unwrap_err();
    assert!(
        err.reason()
            .contains("first at methodConfig[39999].name[0]"),
        "{err}"
    );
}

/// Keys the parser knows, so that generated objects reach deep into it.
const KEYS: &[&str] = &[
    "methodConfig",
    "name",
    "service",
    "method",
    "retryPolicy",
    "maxAttempts",
    "initialBackoff",
    "maxBackoff",
    "backoffMultiplier",
    "retryableStatusCodes",
    "timeout",
    "retryThrottling",
    "maxTokens",
    "tokenRatio",
    "hedgingPolicy",
    "MAXATTEMPTS",
    "loadBalancingConfig",
];

fn arb_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6..1e6f64).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0..20i64).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "0.1s",
            "1s",
            "-1s",
            ".5s",
            "1.0000000001s",
            "99999999999999s",
            "UNAVAILABLE",
            "ok",
            "pkg.Svc",
            "Say",
            "a..b",
            "1x",
            "s",
            "15s",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_leaf().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(KEYS).prop_map(str::to_owned),
                        "[a-z]{0,6}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

fn arb_name() -> impl Strategy<Value = MethodName> {
    prop_oneof![
        Just(MethodName::default()),
        "[a-z]{1,4}\\.[A-Z][a-z]{0,4}".prop_map(|s| MethodName::service(&s).unwrap()),
        ("[a-z]{1,4}\\.[A-Z][a-z]{0,4}", "[A-Z][a-zA-Z0-9_]{0,6}")
            .prop_map(|(s, m)| MethodName::method(&s, &m).unwrap()),
    ]
}

fn arb_policy() -> impl Strategy<Value = ConfigRetryPolicy> {
    (
        2..=5u32,
        1..10_000_000_000u64,
        0..10_000_000_000u64,
        prop_oneof![Just(2.0), 0.001..100.0f64],
        prop::collection::vec(1..=16i32, 1..5),
    )
        .prop_map(|(attempts, initial, extra, multiplier, codes)| {
            ConfigRetryPolicy::new(
                attempts,
                Duration::from_nanos(initial),
                Duration::from_nanos(initial + extra),
                multiplier,
                codes.into_iter().map(Code::from),
            )
            .unwrap()
        })
}

fn arb_hedging() -> impl Strategy<Value = HedgingPolicy> {
    (
        2..=5u32,
        0..10_000_000_000u64,
        prop::collection::vec(1..=16i32, 0..4),
    )
        .prop_map(|(attempts, delay, codes)| {
            HedgingPolicy::builder()
                .max_attempts(attempts)
                .delay(Duration::from_nanos(delay))
                .non_fatal_codes(codes.into_iter().map(Code::from))
                .build()
                .unwrap()
        })
}

fn arb_config() -> impl Strategy<Value = ServiceConfig> {
    (
        prop::collection::vec(
            (
                prop::collection::vec(arb_name(), 1..4),
                prop::option::of(arb_policy()),
                prop::option::of(arb_hedging()),
                prop::option::of(1..100_000_000_000u64),
            ),
            0..4,
        ),
        prop::option::of((1..=1_000_000_u32, 1..=1_000_000_u32)),
    )
        .prop_map(|(entries, throttling)| {
            let mut config = ServiceConfig::new();
            for (names, policy, hedging, timeout) in entries {
                let mut unique: Vec<MethodName> = Vec::new();
                for name in names {
                    if !unique.contains(&name) && is_free(&config, &name) {
                        unique.push(name);
                    }
                }
                let Ok(mut entry) = MethodConfig::new(unique) else {
                    continue;
                };
                if let Some(policy) = policy {
                    entry = entry.with_retry_policy(policy);
                }
                if let Some(hedging) = hedging {
                    entry = entry.with_hedging_policy(hedging);
                }
                if let Some(nanos) = timeout {
                    entry = entry.with_timeout(Duration::from_nanos(nanos)).unwrap();
                }
                config = config.with_method_config(entry).unwrap();
            }
            if let Some((tokens, ratio)) = throttling {
                config = config.with_retry_throttling(
                    ConfigThrottling::new(f64::from(tokens) / 1000.0, f64::from(ratio) / 1000.0)
                        .unwrap(),
                );
            }
            config
        })
}

/// Whether no method config of `config` uses `name` yet.
fn is_free(config: &ServiceConfig, name: &MethodName) -> bool {
    config
        .method_configs()
        .iter()
        .all(|entry| !entry.names().contains(name))
}

proptest! {
    #[test]
    fn no_string_panics_the_parser(json in ".*") {
        let _ = ServiceConfig::from_json(&json);
    }

    #[test]
    fn no_json_value_panics_the_parser(value in arb_value()) {
        let json = value.to_string();
        let _ = ServiceConfig::from_json(&json);
        let _ = ServiceConfig::from_json(&json!({"methodConfig": [value.clone()]}).to_string());
        let _ = ServiceConfig::from_json(&json!({"methodConfig": [{"name": [{}], "retryPolicy": value.clone()}]}).to_string());
        let _ = ServiceConfig::from_json(&json!({"retryThrottling": value}).to_string());
    }

    #[test]
    fn every_error_names_a_path(value in arb_value()) {
        let json = json!({"methodConfig": [value]}).to_string();
        if let Err(err) = ServiceConfig::from_json(&json) {
            prop_assert!(err.field().starts_with("methodConfig"), "{}", err);
        }
    }

    #[test]
    fn typed_configs_round_trip(config in arb_config()) {
        let json = config.to_json();
        let parsed = ServiceConfig::from_json(&json);
        prop_assert_eq!(parsed.as_ref(), Ok(&config), "{}", json);
        // And a parsed config always builds a layer.
        prop_assert!(RetryLayer::builder().service_config(&config).build().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn the_config_timeout_is_the_deadline_of_calls_without_one() {
    use tonic_retry_testkit::pb::SayRequest;
    use tonic_retry_testkit::pb::echo_client::EchoClient;
    use tonic_retry_testkit::{Action, Method, Script, ScriptedServer, lazy_channel};

    let server = ScriptedServer::start(Script::new().then(Method::Say, Action::Hang)).await;
    let config = ServiceConfig::from_json(
        r#"{"methodConfig": [{"name": [{"service": "tonic_retry.test.Echo"}], "timeout": "0.3s"}]}"#,
    )
    .unwrap();
    let layer = RetryLayer::builder()
        .service_config(&config)
        .build()
        .unwrap();
    let channel = tower::ServiceBuilder::new()
        .layer(layer)
        .service(lazy_channel(server.addr()));
    let mut client = EchoClient::new(channel);

    let started = tokio::time::Instant::now();
    let status = client.say(SayRequest::default()).await.unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(350),
        "{elapsed:?}"
    );
    assert_eq!(server.attempts()[0].grpc_timeout(), Some("300000u"));

    // A caller's shorter deadline wins.
    let mut request = tonic::Request::new(SayRequest::default());
    request.set_timeout(Duration::from_millis(100));
    server.push(Method::Say, Action::Hang);
    let started = tokio::time::Instant::now();
    client.say(request).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(150));
}
