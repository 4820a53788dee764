//! Nothing panics on configuration (issue 10 §3): every public constructor and builder of the
//! crate is fed arbitrary values (durations up to `Duration::MAX`, floats including NaN and the
//! infinities, integer extremes, arbitrary code lists, strings and JSON, random service
//! configs) and either succeeds with a value that keeps its promises or returns a
//! `ConfigError` that names a field. A panic fails the property, in debug and in release
//! (`cargo test --release --test no_panic`).

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use tonic::Code;
use tonic_retry::backoff::{BackoffSchedule, ExponentialBackoff};
use tonic_retry::code::{CodeSet, code_from_name, code_name};
use tonic_retry::policy::MAX_ATTEMPTS_LIMIT;
use tonic_retry::service_config::{ConfigRetryPolicy, ConfigThrottling, MethodConfig, MethodName};
use tonic_retry::{
    ConfigError, HedgingPolicy, ResumePolicy, RetryLayer, RetryPolicy, RetryPolicyBuilder,
    RetryThrottle, ServiceConfig,
};

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        // Protobuf's largest duration, the service config's bound, and just past it.
        Just(Duration::from_secs(315_576_000_000)),
        Just(Duration::new(315_576_000_000, 1)),
        Just(Duration::from_nanos(1)),
        (0u64..10_000).prop_map(Duration::from_millis),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(0.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(1e-10),
        Just(0.0005),
        Just(1000.0),
        Just(1000.0005),
        -10.0..10.0f64,
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(MAX_ATTEMPTS_LIMIT),
        Just(MAX_ATTEMPTS_LIMIT + 1),
        Just(u32::MAX),
        any::<u32>(),
        0u32..10,
    ]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(1), Just(usize::MAX), any::<usize>()]
}

/// Any `i32`, as tonic maps it to a code (out of range is UNKNOWN).
fn codes() -> impl Strategy<Value = Vec<Code>> {
    prop::collection::vec(
        prop_oneof![0..=16i32, any::<i32>()].prop_map(Code::from),
        0..6,
    )
}

/// Strings near the names and paths the crate parses, and any other.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "[a-z]{1,4}(\\.[A-Za-z_][A-Za-z0-9_]{0,4}){0,2}(/[A-Za-z_]{0,4}){0,2}",
        "/?[a-zA-Z.]{0,8}/[a-zA-Z]{0,5}",
        prop::sample::select(vec![
            "",
            "/",
            "//",
            "pkg.Svc",
            "pkg.Svc/M",
            "/pkg.Svc/M",
            "pkg..Svc",
            ".",
            "a/b/c",
            "UNAVAILABLE",
            "unavailable",
            "Ok",
            "OK",
            "16",
            "-1",
        ])
        .prop_map(str::to_owned),
    ]
}

fn schedule() -> impl Strategy<Value = (Duration, Duration, f64)> {
    (duration(), duration(), float())
}

/// A `ConfigError` that names a field (or the document) and says what is wrong.
fn well_formed(err: &ConfigError) -> bool {
    !err.field().is_empty() && !err.reason().is_empty() && !err.to_string().is_empty()
}

/// A backoff for a builder: the arbitrary one when it is valid, otherwise none at all.
fn backoff_or_immediate(
    (initial, max, multiplier): (Duration, Duration, f64),
) -> ExponentialBackoff {
    ExponentialBackoff::new(initial, max, multiplier).unwrap_or(ExponentialBackoff::immediate())
}

/// A structured service config, valid more often than not: the parser's deep paths.
fn config_json() -> impl Strategy<Value = Value> {
    // Weighted towards valid values, so that most configs reach `apply` and `build`.
    let number = prop_oneof![
        1 => float().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        6 => (2u64..8).prop_map(Value::from),
        2 => prop::sample::select(vec![0.1, 0.5, 1.5, 2.0, 1e-10, 1000.0]).prop_map(Value::from),
    ];
    let duration_text = prop_oneof![
        1 => duration().prop_map(|d| Value::from(format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()))),
        1 => prop::sample::select(vec!["0s", "-1s", "315576000001s", "1e3s", "s"]).prop_map(Value::from),
        6 => prop::sample::select(vec!["0.1s", "1s", "315576000000s", ".000000001s"])
            .prop_map(Value::from),
    ];
    let code = prop_oneof![
        1 => (0i64..=17).prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => text().prop_map(Value::from),
        8 => prop::sample::select(vec!["UNAVAILABLE", "aborted", "PERMISSION_DENIED", "14"])
            .prop_map(Value::from),
    ];
    let policy = (
        number.clone(),
        duration_text.clone(),
        duration_text.clone(),
        number.clone(),
        prop::collection::vec(code.clone(), 1..3),
    )
        .prop_map(|(attempts, initial, max, multiplier, codes)| {
            json!({
                "maxAttempts": attempts,
                "initialBackoff": initial,
                "maxBackoff": max,
                "backoffMultiplier": multiplier,
                "retryableStatusCodes": codes,
            })
        });
    let hedging = (
        number.clone(),
        prop::option::of(duration_text.clone()),
        prop::option::of(prop::collection::vec(code, 0..3)),
    )
        .prop_map(|(attempts, delay, codes)| {
            let mut hedging = json!({ "maxAttempts": attempts });
            if let Some(delay) = delay {
                hedging["hedgingDelay"] = delay;
            }
            if let Some(codes) = codes {
                hedging["nonFatalStatusCodes"] = Value::from(codes);
            }
            hedging
        });
    let name = prop_oneof![
        1 => Just(json!({})),
        1 => text().prop_map(|service| json!({ "service": service })),
        1 => (text(), text()).prop_map(|(service, method)| json!({"service": service, "method": method})),
        8 => (prop::sample::select(vec!["a.A", "b.B", "c.C", "d.D"]), prop::option::of("[A-Z][a-z]{0,3}"))
            .prop_map(|(service, method)| json!({ "service": service, "method": method })),
    ];
    let entry = (
        prop::collection::vec(name, 1..3),
        prop::option::of(policy),
        prop::option::of(hedging),
        prop::option::of(duration_text),
    )
        .prop_map(|(names, policy, hedging, timeout)| {
            let mut entry = json!({ "name": names });
            if let Some(policy) = policy {
                entry["retryPolicy"] = policy;
            }
            if let Some(hedging) = hedging {
                entry["hedgingPolicy"] = hedging;
            }
            if let Some(timeout) = timeout {
                entry["timeout"] = timeout;
            }
            entry
        });
    (
        prop::collection::vec(entry, 0..3),
        prop::option::of((number.clone(), number)),
    )
        .prop_map(|(entries, throttling)| {
            let mut config = json!({ "methodConfig": entries });
            if let Some((max_tokens, token_ratio)) = throttling {
                config["retryThrottling"] =
                    json!({"maxTokens": max_tokens, "tokenRatio": token_ratio});
            }
            config
        })
}

/// Parses, applies and builds: a config that parses always builds a layer (alone), and the
/// layer serves every lookup.
fn parse_apply_build(json: &str) -> Result<(), TestCaseError> {
    match ServiceConfig::from_json(json) {
        Ok(config) => {
            for path in ["/a.A/M", "b.B/M", "", "/", "//x"] {
                let _ = config.lookup(path);
                let _ = config.timeout_for(path);
            }
            let layer = RetryLayer::builder().service_config(&config).build();
            prop_assert!(layer.is_ok(), "{json} parsed but did not build: {layer:?}");
            for entry in config.method_configs() {
                let policy = entry.to_policy();
                prop_assert!(policy.max_attempts() <= 5, "capped at gRFC A6's 5");
            }
            prop_assert_eq!(ServiceConfig::from_json(&config.to_json()), Ok(config));
        }
        Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn exponential_backoff_new_and_every_delay(
        (initial, max, multiplier) in schedule(),
        retry in count(),
        random in float(),
    ) {
        match ExponentialBackoff::new(initial, max, multiplier) {
            Ok(backoff) => {
                let base = backoff.base_delay(retry);
                prop_assert!(base <= max);
                let delay = backoff.delay(retry, random).unwrap();
                prop_assert!(delay.as_secs_f64() <= max.as_secs_f64() * (1.2 + 1e-12));
                let _ = backoff.delay(u32::MAX, random);
            }
            Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
        }
        let immediate = ExponentialBackoff::immediate();
        prop_assert_eq!(immediate.delay(retry, random), Some(Duration::ZERO));
        let _ = ExponentialBackoff::default().delay(retry, random);
    }

    #[test]
    fn retry_policy_builder(
        attempts in count(),
        backoff in schedule(),
        retryable in codes(),
        fail_fast in codes(),
        attempt_timeout in duration(),
        call_timeout in duration(),
        buffer_limit in size(),
        set_fail_fast: bool,
    ) {
        let mut builder = RetryPolicy::builder()
            .max_attempts(attempts)
            .backoff(backoff_or_immediate(backoff))
            .retryable_codes(retryable)
            .attempt_timeout(attempt_timeout)
            .call_timeout(call_timeout)
            .buffer_limit(buffer_limit);
        if set_fail_fast {
            builder = builder.fail_fast_codes(fail_fast);
        }
        match builder.build() {
            Ok(policy) => {
                prop_assert!((1..=MAX_ATTEMPTS_LIMIT).contains(&policy.max_attempts()));
                prop_assert!(!policy.retryable_codes().contains(Code::Ok));
                prop_assert!(!policy.fail_fast_codes().contains(Code::Ok));
                for code in policy.retryable_codes().iter() {
                    prop_assert!(!policy.fail_fast_codes().contains(code), "{:?}", policy);
                }
                let _ = policy.backoff().delay(attempts, 0.5);
                // And the policy is a valid layer.
                let layer = RetryLayer::builder()
                    .default_policy(policy.clone())
                    .service("pkg.Svc", policy.clone())
                    .method("pkg.Svc/M", policy)
                    .build();
                prop_assert!(layer.is_ok());
            }
            Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
        }
    }

    #[test]
    fn hedging_policy_builder(
        attempts in count(),
        delay in duration(),
        codes in codes(),
        percentile in float(),
        extra_load in float(),
        adaptive: bool,
        capped: bool,
    ) {
        let mut builder = HedgingPolicy::builder()
            .max_attempts(attempts)
            .delay(delay)
            .non_fatal_codes(codes);
        if adaptive {
            builder = builder.adaptive_delay(percentile);
        }
        if capped {
            builder = builder.max_extra_load(extra_load);
        }
        match builder.build() {
            Ok(hedging) => {
                prop_assert!((2..=5).contains(&hedging.max_attempts()));
                prop_assert!(!hedging.non_fatal_codes().contains(Code::Ok));
                let policy = RetryPolicy::hedged(hedging.clone());
                let with_deadline = RetryPolicyBuilder::from(policy.clone())
                    .call_timeout(delay.max(Duration::from_nanos(1)))
                    .build();
                prop_assert!(with_deadline.is_ok());
                let layer = RetryLayer::builder().default_policy(policy).build();
                prop_assert!(layer.is_ok());
            }
            Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
        }
    }

    #[test]
    fn retry_throttle_and_throttling(max_tokens in float(), token_ratio in float(), failures in 0u32..30) {
        let throttle = RetryThrottle::new(max_tokens, token_ratio);
        let throttling = ConfigThrottling::new(max_tokens, token_ratio);
        match &throttle {
            Ok(throttle) => {
                for _ in 0..failures {
                    throttle.record_failure();
                }
                throttle.record_success();
                prop_assert!((0.0..=1000.0).contains(&throttle.tokens()));
                let _ = throttle.allows_retry();
                let _ = format!("{throttle:?}");
            }
            Err(err) => prop_assert!(well_formed(err), "{err:?}"),
        }
        match throttling {
            Ok(throttling) => {
                // One validation: what the service config accepts, the throttle builds.
                prop_assert!(throttle.is_ok());
                prop_assert_eq!(throttling.to_throttle().tokens(), throttle.unwrap().tokens());
            }
            Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
        }
    }

    #[test]
    fn retry_layer_builder(
        names in prop::collection::vec(text(), 0..4),
        attempts in count(),
        buffer in size(),
        seed: u64,
        target in text(),
        gate in 0u8..4,
        max_tokens in float(),
        token_ratio in float(),
    ) {
        let policy = RetryPolicy::builder().max_attempts(attempts).build().unwrap_or_default();
        let mut builder = RetryLayer::builder()
            .default_policy(policy.clone())
            .channel_buffer_limit(buffer)
            .jitter_seed(seed)
            .target(target);
        for name in &names {
            builder = builder.service(name, policy.clone()).method(name, policy.clone());
        }
        let throttle = RetryThrottle::new(max_tokens, token_ratio).unwrap_or_else(|_| RetryThrottle::grpc_default());
        let budget = || tower::retry::budget::TpsBudget::new(Duration::from_secs(1), 1, 0.2);
        builder = match gate {
            0 => builder,
            1 => builder.throttle(throttle),
            2 => builder.budget(budget()),
            _ => builder.throttle(throttle).budget(budget()),
        };
        match builder.build() {
            Ok(layer) => {
                prop_assert!(gate != 3, "two gates must not build");
                let _ = layer.metrics();
                let _ = layer.throttle();
            }
            Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
        }
    }

    #[test]
    fn service_config_from_any_string(json in ".*") {
        parse_apply_build(&json)?;
    }

    #[test]
    fn service_config_from_structured_json(config in config_json()) {
        parse_apply_build(&config.to_string())?;
    }

    #[test]
    fn service_config_from_the_typed_api(
        names in prop::collection::vec((prop::option::of(text()), prop::option::of(text())), 0..4),
        attempts in count(),
        (initial, max, multiplier) in schedule(),
        retryable in codes(),
        timeout in duration(),
        max_tokens in float(),
        token_ratio in float(),
    ) {
        let names: Vec<MethodName> = names
            .into_iter()
            .filter_map(|name| match name {
                (None, _) => Some(MethodName::default()),
                (Some(service), None) => MethodName::service(&service).ok(),
                (Some(service), Some(method)) => MethodName::method(&service, &method).ok(),
            })
            .collect();
        for name in &names {
            let _ = name.to_string();
        }
        let policy = ConfigRetryPolicy::new(attempts, initial, max, multiplier, retryable);
        if let Ok(policy) = &policy {
            let built = policy.to_policy();
            prop_assert_eq!(built.max_attempts(), policy.max_attempts());
        }
        let Ok(mut entry) = MethodConfig::new(names) else {
            return Ok(());
        };
        if let Ok(policy) = policy {
            entry = entry.with_retry_policy(policy);
        }
        match entry.clone().with_timeout(timeout) {
            Ok(timed) => {
                prop_assert_eq!(timed.to_policy().call_timeout(), Some(timeout));
                entry = timed;
            }
            Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
        }
        let mut config = ServiceConfig::new().with_method_config(entry).unwrap();
        if let Ok(throttling) = ConfigThrottling::new(max_tokens, token_ratio) {
            config = config.with_retry_throttling(throttling);
        }
        prop_assert!(RetryLayer::builder().service_config(&config).build().is_ok());
        let _ = config.to_json();
    }

    #[test]
    fn resume_policy_builder(
        reopens in count(),
        idle in duration(),
        backoff in schedule(),
        retryable in codes(),
        fail_fast in codes(),
        seed: u64,
        retry in count(),
        random in float(),
    ) {
        let built = ResumePolicy::builder()
            .max_failed_reopens(reopens)
            .idle_timeout(idle)
            .backoff(backoff_or_immediate(backoff))
            .retryable_codes(retryable)
            .fail_fast_codes(fail_fast)
            .jitter_seed(seed)
            .throttle(RetryThrottle::grpc_default())
            .build();
        match built {
            Ok(policy) => {
                prop_assert!(policy.max_failed_reopens() >= 1);
                let _ = policy.idle_timeout();
                let _ = policy.backoff().delay(retry, random);
                let _ = format!("{policy:?}");
            }
            Err(err) => prop_assert!(well_formed(&err), "{err:?}"),
        }
        let _ = ResumePolicy::builder().no_idle_timeout().build();
    }

    #[test]
    fn code_sets_and_names(codes in codes(), name in text(), other in codes()) {
        let set: CodeSet = codes.iter().copied().collect();
        let of = CodeSet::of(&codes);
        prop_assert_eq!(set, of);
        for code in &other {
            prop_assert!(set.with(*code).contains(*code));
            prop_assert!(!set.without(*code).contains(*code));
            prop_assert_eq!(code_from_name(code_name(*code)), Some(*code));
        }
        prop_assert_eq!(set.iter().count(), set.iter().collect::<CodeSet>().iter().count());
        let _ = (set.to_string(), format!("{set:?}"), set.is_empty());
        if let Some(code) = code_from_name(&name) {
            prop_assert!(code_name(code).eq_ignore_ascii_case(&name));
        }
    }
}

#[cfg(feature = "backoff")]
proptest! {
    #[test]
    fn backoff_crate_schedule(
        initial in duration(),
        max in duration(),
        multiplier in float(),
        randomization in float(),
        elapsed in prop::option::of(duration()),
        retry in count(),
    ) {
        let template = backoff::ExponentialBackoff {
            current_interval: initial,
            initial_interval: initial,
            randomization_factor: randomization,
            multiplier,
            max_interval: max,
            max_elapsed_time: elapsed,
            ..backoff::ExponentialBackoff::default()
        };
        let schedule = tonic_retry::backoff::BackoffCrateSchedule::new(template);
        let _ = schedule.delay(retry, 0.5);
    }
}
