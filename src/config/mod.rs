//! The standard gRPC service config (JSON): `methodConfig[]` with `name[]`, `retryPolicy` or
//! `hedgingPolicy`, and `timeout`, and the top-level `retryThrottling` of gRFC A6.
//!
//! Parsing lives in `parse`, writing in `write`, protobuf JSON durations in `duration`; this file
//! holds the typed configuration. It knows nothing of the layer: the layer's builder reads a
//! config through its accessors
//! ([`RetryLayerBuilder::service_config`](crate::RetryLayerBuilder::service_config)), so the
//! dependency goes one way, layer to config.

mod duration;
mod parse;
mod write;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tonic::Code;

use crate::backoff::ExponentialBackoff;
use crate::code::CodeSet;
use crate::error::ConfigError;
use crate::retry_policy::{
    DEFAULT_MAX_ATTEMPTS, HedgingPolicy, MAX_ATTEMPTS_LIMIT, RetryPolicy, validate_method,
    validate_service,
};
use crate::throttle::{RetryThrottle, bucket_settings};

use self::duration::{MAX_DURATION, format_duration};

/// A gRPC service config: the JSON that gRPC clients in other languages take through
/// `WithDefaultServiceConfig` or from their name resolver, typed and validated.
///
/// Paste the config your other clients use and give it to
/// [`RetryLayerBuilder::service_config`](crate::RetryLayerBuilder::service_config):
///
/// ```
/// use tonic_retry::{RetryLayer, ServiceConfig};
///
/// let config = ServiceConfig::from_json(r#"{
///   "loadBalancingConfig": [{ "round_robin": {} }],
///   "methodConfig": [{
///     "name": [{ "service": "helloworld.Greeter" }],
///     "timeout": "5s",
///     "retryPolicy": {
///       "maxAttempts": 4,
///       "initialBackoff": "0.1s",
///       "maxBackoff": "1s",
///       "backoffMultiplier": 2,
///       "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
///     }
///   }],
///   "retryThrottling": { "maxTokens": 10, "tokenRatio": 0.1 }
/// }"#)?;
///
/// let layer = RetryLayer::builder().service_config(&config).build()?;
/// // tower::ServiceBuilder::new().layer(layer).service(channel)
/// # let _ = layer;
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
///
/// # What is read, and how strictly
///
/// - `methodConfig[]`: each entry needs at least one `name` (`{"service": "pkg.Svc"}` for a whole
///   service, `{"service": "pkg.Svc", "method": "M"}` for one method, `{}` for the default); a
///   `method` without a `service` is an error, and so is a name used twice anywhere in the
///   config. Names must be well formed (`package.Service`, `Method`). gRPC skips an entry
///   without names; this parser rejects it, since it applies to nothing and is most likely a
///   typo.
/// - `retryPolicy`: all five fields are required (gRFC A6): `maxAttempts` >= 2 (above the cap,
///   5 as gRFC A6 requires ([`DEFAULT_MAX_ATTEMPTS`]) unless
///   [`from_json_with_cap`](Self::from_json_with_cap) says otherwise, it is taken as the cap,
///   with a `tracing` warning), `initialBackoff` and `maxBackoff` > 0,
///   `backoffMultiplier` > 0, `retryableStatusCodes` non-empty, without OK. Unlike grpc-go,
///   which drops an invalid retry policy with a log line, this parser rejects the config.
/// - `maxBackoff` below `initialBackoff` is an error. gRFC A6 is silent and grpc-go accepts it
///   (every delay is then `maxBackoff`); here it is almost certainly a slip, and
///   [`ExponentialBackoff`] rejects it too.
/// - `timeout`: the per-call default timeout, > 0. The layer gives it to calls as their
///   deadline ([`RetryPolicyBuilder::call_timeout`](crate::RetryPolicyBuilder::call_timeout)); a
///   call whose own `grpc-timeout` is shorter keeps it.
/// - `retryThrottling`: `maxTokens` in (0, 1000], `tokenRatio` in (0, 1000] with at most three
///   decimal places (gRFC A6), each at least 0.001: the validation of [`RetryThrottle::new`],
///   so that a config that parses always builds.
/// - A call no name matches (and no default name `{}`) is not retried, as in gRPC, unless the
///   builder is given a [`default_policy`](crate::RetryLayerBuilder::default_policy): see
///   [`RetryLayerBuilder::service_config`](crate::RetryLayerBuilder::service_config).
/// - Durations are protobuf JSON strings: `"1s"`, `"0.1s"`, `".01s"`, `"1.000000001s"`; at most
///   nine fractional digits, a final `s`, never negative. Codes are names in any case
///   (`"UNAVAILABLE"`, `"unavailable"`) or numbers 1..=16.
/// - Unknown fields are ignored, at every level, as grpc-go ignores them: real configs carry
///   `loadBalancingConfig`, `waitForReady`, `maxRequestMessageBytes`, `perAttemptRecvTimeout`
///   and more. Fields are matched as grpc-go's JSON decoder matches them: by exact name, else
///   ignoring ASCII case (`"MaxAttempts"` works); `null` is the same as absent.
/// - `hedgingPolicy` (gRFC A6): `maxAttempts` >= 2, required, capped at 5 like a retry policy's
///   (and never above [`MAX_HEDGED_ATTEMPTS`](crate::policy::MAX_HEDGED_ATTEMPTS)),
///   `hedgingDelay` (default `"0s"`: every attempt at once) and `nonFatalStatusCodes` (default
///   none), read into a [`HedgingPolicy`]. An entry with both a `retryPolicy` and a
///   `hedgingPolicy` is an error naming the entry (gRFC A6 allows one or the other).
///
/// Every error is a [`ConfigError`] whose [`field`](ConfigError::field) is the exact path, such as
/// `methodConfig[2].retryPolicy.backoffMultiplier`.
#[derive(Clone, Default)]
pub struct ServiceConfig {
    method_configs: Vec<MethodConfig>,
    retry_throttling: Option<ConfigThrottling>,
    /// Where each name is, as (entry, position in its `name` list): duplicate checks and lookups
    /// in constant time (a config of 40,000 names once took 33 s to check).
    places: HashMap<MethodName, (usize, usize)>,
}

impl PartialEq for ServiceConfig {
    fn eq(&self, other: &Self) -> bool {
        // `places` follows from `method_configs`.
        self.method_configs == other.method_configs
            && self.retry_throttling == other.retry_throttling
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("method_configs", &self.method_configs)
            .field("retry_throttling", &self.retry_throttling)
            .finish()
    }
}

impl ServiceConfig {
    /// An empty config: no method configs, no throttling.
    pub fn new() -> ServiceConfig {
        ServiceConfig::default()
    }

    /// Parses and validates a service config, capping `maxAttempts` at
    /// [`DEFAULT_MAX_ATTEMPTS`] (5, as gRPC does). `str::parse` does the same.
    ///
    /// An error names the exact place and the value at fault:
    ///
    /// ```
    /// use tonic_retry::ServiceConfig;
    ///
    /// let err = ServiceConfig::from_json(r#"{"methodConfig": [{
    ///     "name": [{"service": "helloworld.Greeter"}],
    ///     "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
    ///                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILIBLE"]}}]}"#)
    /// .unwrap_err();
    /// assert_eq!(err.field(), "methodConfig[0].retryPolicy.retryableStatusCodes[0]");
    /// ```
    pub fn from_json(json: &str) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::from_json_with_cap(json, DEFAULT_MAX_ATTEMPTS)
    }

    /// Parses and validates a service config, capping `maxAttempts` at `max_attempts_cap`
    /// (gRPC's channel option of the same purpose). A value above the cap is lowered to it and a
    /// `tracing` warning names its path; a cap below 2 is taken as 2, a cap above
    /// [`MAX_ATTEMPTS_LIMIT`](crate::policy::MAX_ATTEMPTS_LIMIT) (100) as that limit.
    ///
    /// ```
    /// use tonic_retry::ServiceConfig;
    ///
    /// let json = r#"{"methodConfig": [{"name": [{}], "retryPolicy": {
    ///     "maxAttempts": 8, "initialBackoff": "0.1s", "maxBackoff": "1s",
    ///     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#;
    /// let attempts = |config: ServiceConfig| {
    ///     config.method_configs()[0].retry_policy().unwrap().max_attempts()
    /// };
    /// assert_eq!(attempts(ServiceConfig::from_json(json)?), 5);
    /// assert_eq!(attempts(ServiceConfig::from_json_with_cap(json, 10)?), 8);
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn from_json_with_cap(
        json: &str,
        max_attempts_cap: u32,
    ) -> Result<ServiceConfig, ConfigError> {
        parse::parse(json, max_attempts_cap.clamp(2, MAX_ATTEMPTS_LIMIT))
    }

    /// The config as pretty-printed JSON, fields in gRFC A6's order. Parsing it again gives an
    /// equal config (as long as no `maxAttempts` exceeds the parser's cap).
    pub fn to_json(&self) -> String {
        write::write(self)
    }

    /// Adds a method config. Its names must not repeat a name already in the config; the error
    /// names both places (`methodConfig[1].name[0]`, first at `methodConfig[0].name[2]`).
    pub fn with_method_config(
        mut self,
        config: MethodConfig,
    ) -> Result<ServiceConfig, ConfigError> {
        let index = self.method_configs.len();
        for (j, name) in config.names.iter().enumerate() {
            if let Some(first) = self.place_of(name) {
                return Err(
                    duplicate(name, &first).within(&format!("methodConfig[{index}].name[{j}]"))
                );
            }
        }
        self.push(config);
        Ok(self)
    }

    /// Sets gRFC A6 retry throttling.
    pub fn with_retry_throttling(mut self, throttling: ConfigThrottling) -> ServiceConfig {
        self.retry_throttling = Some(throttling);
        self
    }

    /// The method configs, in order.
    pub fn method_configs(&self) -> &[MethodConfig] {
        &self.method_configs
    }

    /// The retry throttling, if the config sets one.
    pub fn retry_throttling(&self) -> Option<ConfigThrottling> {
        self.retry_throttling
    }

    /// The method config for a call, by gRPC's matching: `service/method`, then the service,
    /// then the default name. `path` is a request path (`/package.Service/Method`, or with a
    /// gateway's prefix such as `/api/package.Service/Method`: its last two segments name the
    /// method) or the same without the leading slash.
    pub fn lookup(&self, path: &str) -> Option<&MethodConfig> {
        let path = crate::head::grpc_path(path);
        let path = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let find = |wanted: &MethodName| {
            let &(entry, _) = self.places.get(wanted)?;
            self.method_configs.get(entry)
        };
        let exact = MethodName {
            service: Some(service.to_owned()),
            method: Some(method.to_owned()),
        };
        let whole = MethodName {
            service: Some(service.to_owned()),
            method: None,
        };
        find(&exact)
            .or_else(|| find(&whole))
            .or_else(|| find(&MethodName::default()))
    }

    /// The per-call default `timeout` of the method config a call matches, if it sets one.
    pub fn timeout_for(&self, path: &str) -> Option<Duration> {
        self.lookup(path).and_then(MethodConfig::timeout)
    }

    /// Where `name` is used, as a path.
    fn place_of(&self, name: &MethodName) -> Option<String> {
        let &(entry, position) = self.places.get(name)?;
        Some(name_place(entry, position))
    }

    /// Adds an entry whose names are known to be new to the config.
    fn push(&mut self, config: MethodConfig) {
        let index = self.method_configs.len();
        for (j, name) in config.names.iter().enumerate() {
            self.places.insert(name.clone(), (index, j));
        }
        self.method_configs.push(config);
    }
}

impl FromStr for ServiceConfig {
    type Err = ConfigError;

    /// The same as [`ServiceConfig::from_json`].
    fn from_str(json: &str) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::from_json(json)
    }
}

/// The path of a name in a config, `methodConfig[entry].name[position]`, as errors give it.
pub(crate) fn name_place(entry: usize, position: usize) -> String {
    format!("methodConfig[{entry}].name[{position}]")
}

fn duplicate(name: &MethodName, first: &str) -> ConfigError {
    ConfigError::new(
        "",
        name.to_json(),
        format!("is configured twice (first at {first})"),
    )
}

/// One `methodConfig` entry: the names it applies to, its retry policy and its timeout.
///
/// ```
/// use std::time::Duration;
/// use tonic::Code;
/// use tonic_retry::ServiceConfig;
/// use tonic_retry::service_config::{ConfigRetryPolicy, MethodConfig, MethodName};
///
/// let config = MethodConfig::new([
///     MethodName::service("helloworld.Greeter")?,
///     MethodName::method("helloworld.Admin", "Reload")?,
/// ])?
/// .with_timeout(Duration::from_secs(5))?
/// .with_retry_policy(ConfigRetryPolicy::new(
///     3,
///     Duration::from_millis(100),
///     Duration::from_secs(1),
///     2.0,
///     [Code::Unavailable],
/// )?);
/// let config = ServiceConfig::new().with_method_config(config)?;
/// assert_eq!(ServiceConfig::from_json(&config.to_json())?, config);
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MethodConfig {
    names: Vec<MethodName>,
    retry_policy: Option<ConfigRetryPolicy>,
    hedging_policy: Option<HedgingPolicy>,
    timeout: Option<Duration>,
}

impl MethodConfig {
    /// A method config for `names`, with no retry policy and no timeout. There must be at least
    /// one name, none twice.
    pub fn new(names: impl IntoIterator<Item = MethodName>) -> Result<MethodConfig, ConfigError> {
        let names: Vec<MethodName> = names.into_iter().collect();
        if names.is_empty() {
            return Err(ConfigError::new(
                "name",
                "[]",
                "must list at least one name (an entry without names applies to nothing)",
            ));
        }
        let mut seen = HashMap::with_capacity(names.len());
        for (j, name) in names.iter().enumerate() {
            if let Some(i) = seen.insert(name, j) {
                return Err(duplicate(name, &format!("name[{i}]")).within(&format!("name[{j}]")));
            }
        }
        Ok(MethodConfig {
            names,
            retry_policy: None,
            hedging_policy: None,
            timeout: None,
        })
    }

    /// Sets the retry policy (and drops any hedging policy: gRFC A6 gives a method one or the
    /// other).
    pub fn with_retry_policy(mut self, policy: ConfigRetryPolicy) -> MethodConfig {
        self.retry_policy = Some(policy);
        self.hedging_policy = None;
        self
    }

    /// Sets the hedging policy (`hedgingPolicy`), and drops any retry policy: gRFC A6 gives a
    /// method one or the other.
    pub fn with_hedging_policy(mut self, policy: HedgingPolicy) -> MethodConfig {
        self.hedging_policy = Some(policy);
        self.retry_policy = None;
        self
    }

    /// Sets the per-call default timeout: more than zero, at most protobuf's largest duration
    /// (10,000 years).
    pub fn with_timeout(mut self, timeout: Duration) -> Result<MethodConfig, ConfigError> {
        check_duration("timeout", timeout)?;
        self.timeout = Some(timeout);
        Ok(self)
    }

    /// The names this config applies to.
    pub fn names(&self) -> &[MethodName] {
        &self.names
    }

    /// The retry policy; `None` means the calls are not retried.
    pub fn retry_policy(&self) -> Option<&ConfigRetryPolicy> {
        self.retry_policy.as_ref()
    }

    /// The hedging policy, if the calls are hedged.
    pub fn hedging_policy(&self) -> Option<&HedgingPolicy> {
        self.hedging_policy.as_ref()
    }

    /// The per-call default timeout (`timeout`), if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The [`RetryPolicy`] for these calls: the retry policy's, [`RetryPolicy::hedged`] with the
    /// hedging policy, or [`RetryPolicy::no_retries`] when there is neither, with the `timeout`
    /// as its call timeout.
    pub fn to_policy(&self) -> RetryPolicy {
        let policy = match (&self.retry_policy, &self.hedging_policy) {
            (_, Some(hedging)) => RetryPolicy::hedged(hedging.clone()),
            (Some(retry), None) => retry.to_policy(),
            (None, None) => RetryPolicy::no_retries(),
        };
        // `with_timeout` and the parser checked the timeout as the policy builder would.
        policy.with_call_timeout(self.timeout)
    }
}

/// One entry of a method config's `name` list: a method, a whole service, or the default.
///
/// ```
/// use tonic_retry::service_config::MethodName;
///
/// let name = MethodName::method("helloworld.Greeter", "SayHello")?;
/// assert_eq!(name.to_string(), "helloworld.Greeter/SayHello");
/// assert!(MethodName::default().is_default());
/// assert!(MethodName::service("not a service").is_err());
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct MethodName {
    service: Option<String>,
    method: Option<String>,
}

impl MethodName {
    /// Every method of `service`, a fully qualified name such as `helloworld.Greeter`.
    pub fn service(service: &str) -> Result<MethodName, ConfigError> {
        validate_service(service)?;
        Ok(MethodName {
            service: Some(service.to_owned()),
            method: None,
        })
    }

    /// One method: `service` such as `helloworld.Greeter`, `method` such as `SayHello`.
    pub fn method(service: &str, method: &str) -> Result<MethodName, ConfigError> {
        validate_service(service)?;
        validate_method(method)?;
        Ok(MethodName {
            service: Some(service.to_owned()),
            method: Some(method.to_owned()),
        })
    }

    /// The service, unless this is the default name.
    pub fn service_name(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// The method, if this names one method.
    pub fn method_name(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// Whether this is the default name (`{}`), which matches every call no other name does.
    pub fn is_default(&self) -> bool {
        self.service.is_none()
    }

    /// The name as a JSON object: `{"service":"pkg.Svc","method":"M"}`.
    fn to_json(&self) -> String {
        let mut out = String::from("{");
        if let Some(service) = &self.service {
            out.push_str("\"service\":");
            out.push_str(&write::string(service));
        }
        if let Some(method) = &self.method {
            out.push_str(",\"method\":");
            out.push_str(&write::string(method));
        }
        out.push('}');
        out
    }
}

impl fmt::Display for MethodName {
    /// `package.Service/Method`, `package.Service`, or `(default)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.service, &self.method) {
            (None, _) => f.write_str("(default)"),
            (Some(service), None) => f.write_str(service),
            (Some(service), Some(method)) => write!(f, "{service}/{method}"),
        }
    }
}

/// A method config's `retryPolicy` (gRFC A6), validated.
///
/// Errors name the JSON fields (`maxAttempts`, `initialBackoff`, ...), so that the parser can
/// place them in the config.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    backoff_multiplier: f64,
    retryable_status_codes: CodeSet,
}

impl ConfigRetryPolicy {
    /// A retry policy. `max_attempts` counts the first attempt and must be at least 2 and at most
    /// [`MAX_ATTEMPTS_LIMIT`](crate::policy::MAX_ATTEMPTS_LIMIT) (gRFC A6's cap of 5 is the parser's, see
    /// [`ServiceConfig::from_json_with_cap`]); both backoffs more than zero, `max_backoff` at
    /// least `initial_backoff`; the multiplier finite and more than zero; at least one
    /// retryable code, and not OK.
    pub fn new(
        max_attempts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
        backoff_multiplier: f64,
        retryable_status_codes: impl IntoIterator<Item = Code>,
    ) -> Result<ConfigRetryPolicy, ConfigError> {
        if max_attempts < 2 {
            return Err(ConfigError::new(
                "maxAttempts",
                max_attempts.to_string(),
                "must be >= 2",
            ));
        }
        if max_attempts > MAX_ATTEMPTS_LIMIT {
            return Err(ConfigError::new(
                "maxAttempts",
                max_attempts.to_string(),
                format!("must be <= {MAX_ATTEMPTS_LIMIT} (MAX_ATTEMPTS_LIMIT)"),
            ));
        }
        check_duration("initialBackoff", initial_backoff)?;
        check_duration("maxBackoff", max_backoff)?;
        if max_backoff < initial_backoff {
            return Err(ConfigError::new(
                "maxBackoff",
                write::string(&format_duration(max_backoff)),
                format!(
                    "must be >= initialBackoff ({})",
                    format_duration(initial_backoff)
                ),
            ));
        }
        if !(backoff_multiplier.is_finite() && backoff_multiplier > 0.0) {
            return Err(ConfigError::new(
                "backoffMultiplier",
                backoff_multiplier.to_string(),
                "must be > 0",
            ));
        }
        // The schedule's own validation, so that `to_policy` cannot fail on anything accepted.
        ExponentialBackoff::new(initial_backoff, max_backoff, backoff_multiplier).map_err(
            |err| {
                let field = match err.field() {
                    "initial_backoff" => "initialBackoff",
                    "max_backoff" => "maxBackoff",
                    _ => "backoffMultiplier",
                };
                ConfigError::new(field, err.value(), err.reason())
            },
        )?;
        let codes: CodeSet = retryable_status_codes.into_iter().collect();
        if codes.is_empty() {
            return Err(ConfigError::new(
                "retryableStatusCodes",
                "[]",
                "must not be empty",
            ));
        }
        codes.reject_ok("retryableStatusCodes")?;
        Ok(ConfigRetryPolicy {
            max_attempts,
            initial_backoff,
            max_backoff,
            backoff_multiplier,
            retryable_status_codes: codes,
        })
    }

    /// `maxAttempts`: attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// `initialBackoff`: the base delay before the first retry.
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// `maxBackoff`: the largest base delay.
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// `backoffMultiplier`: the growth of the base delay per retry.
    pub fn backoff_multiplier(&self) -> f64 {
        self.backoff_multiplier
    }

    /// `retryableStatusCodes`.
    pub fn retryable_status_codes(&self) -> CodeSet {
        self.retryable_status_codes
    }

    /// The [`RetryPolicy`]: these attempts, an [`ExponentialBackoff`] with A6 jitter, these
    /// retryable codes. The fail-fast codes (UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED)
    /// still fail fast even when listed as retryable, exactly as with
    /// [`RetryPolicyBuilder::retryable_codes`](crate::RetryPolicyBuilder::retryable_codes): retrying cannot fix a missing method or a caller
    /// who is not allowed. Such a listing is left out of the policy's retryable codes with a
    /// `tracing` warning, never dropped silently.
    pub fn to_policy(&self) -> RetryPolicy {
        // `new` validated these fields with the same constructors; they cannot fail here.
        let backoff = ExponentialBackoff::new(
            self.initial_backoff,
            self.max_backoff,
            self.backoff_multiplier,
        )
        .unwrap_or_else(|err| unreachable!("validated by ConfigRetryPolicy::new: {err}"));
        RetryPolicy::builder()
            .max_attempts(self.max_attempts)
            .backoff(backoff)
            .retryable_codes(self.retryable_status_codes.iter())
            .build()
            .unwrap_or_else(|err| unreachable!("validated by ConfigRetryPolicy::new: {err}"))
    }
}

/// gRFC A6 retry throttling (`retryThrottling`): a token bucket of `maxTokens`, one token taken
/// per failure, `tokenRatio` given back per success; retries only while more than half is left.
///
/// ```
/// use tonic_retry::service_config::ConfigThrottling;
///
/// let throttling = ConfigThrottling::new(10.0, 0.1)?;
/// assert_eq!(throttling.max_tokens(), 10.0);
/// assert!(ConfigThrottling::new(10.0, 0.0001).is_err(), "at most three decimal places");
/// let throttle = throttling.to_throttle();
/// assert_eq!(throttle.tokens(), 10.0);
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigThrottling {
    max_tokens: f64,
    token_ratio: f64,
}

impl ConfigThrottling {
    /// `max_tokens` in (0, 1000]; `token_ratio` in (0, 1000] with at most three decimal places;
    /// each at least 0.001. This is [`RetryThrottle::new`]'s own validation (under the JSON
    /// names), so every accepted value builds a throttle; only the decimal places are stricter
    /// here, where the throttle rounds.
    pub fn new(max_tokens: f64, token_ratio: f64) -> Result<ConfigThrottling, ConfigError> {
        let thousandths = token_ratio * 1000.0;
        if thousandths.is_finite() && (thousandths - thousandths.round()).abs() > 1e-6 {
            return Err(ConfigError::new(
                "tokenRatio",
                token_ratio.to_string(),
                "must have at most 3 decimal places",
            ));
        }
        bucket_settings(max_tokens, token_ratio, ("maxTokens", "tokenRatio"))?;
        Ok(ConfigThrottling {
            max_tokens,
            token_ratio,
        })
    }

    /// `maxTokens`: the size of the bucket, which starts full.
    pub fn max_tokens(&self) -> f64 {
        self.max_tokens
    }

    /// `tokenRatio`: the tokens each success gives back.
    pub fn token_ratio(&self) -> f64 {
        self.token_ratio
    }

    /// A fresh [`RetryThrottle`] with these settings, for
    /// [`RetryLayerBuilder::throttle`](crate::RetryLayerBuilder::throttle).
    pub fn to_throttle(&self) -> RetryThrottle {
        RetryThrottle::new(self.max_tokens, self.token_ratio)
            .unwrap_or_else(|err| unreachable!("validated by the same bucket_settings: {err}"))
    }
}

/// A positive duration that protobuf can represent.
fn check_duration(field: &str, duration: Duration) -> Result<(), ConfigError> {
    let written = || write::string(&format_duration(duration));
    if duration.is_zero() {
        return Err(ConfigError::new(field, written(), "must be > 0"));
    }
    if duration > MAX_DURATION {
        return Err(ConfigError::new(
            field,
            written(),
            format!("must be at most {}", format_duration(MAX_DURATION)),
        ));
    }
    Ok(())
}
