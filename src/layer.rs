//! `RetryLayer`: the configuration every clone of the retrying service shares, and its builder.

use std::sync::Arc;

use tower::Layer;

use crate::backoff::Jitter;
use crate::body::BufferBudget;
use crate::config::{ServiceConfig, name_place};
use crate::error::ConfigError;
use crate::hook::OnRetry;
use crate::metrics::Counters;
use crate::retry_policy::{PolicyTableBuilder, RetryPolicy};
use crate::service::Retry;
use crate::shared::Shared;
use crate::throttle::{RetryGate, RetryThrottle};

/// The default bound on the bytes all calls of one layer hold for replay.
pub const DEFAULT_CHANNEL_BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// A [`tower::Layer`] that retries tonic calls by the policy of their service and method.
///
/// Put it over a tonic `Channel` (or anything a generated client accepts) and hand the result
/// to the generated client; where other `tower` layers go relative to it is the
/// [guide](crate::guide)'s subject.
///
/// ```
/// use std::time::Duration;
/// use tonic::transport::Channel;
/// use tonic_retry::{RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = Channel::from_static("http://127.0.0.1:50051").connect_lazy();
/// let layer = RetryLayer::builder()
///     // Calls no other policy names: 5 attempts, UNAVAILABLE retried.
///     .default_policy(RetryPolicy::default())
///     // Every method of one service.
///     .service(
///         "helloworld.Greeter",
///         RetryPolicy::builder().max_attempts(3).build()?,
///     )
///     // One method: it wins over its service's policy.
///     .method(
///         "helloworld.Greeter/SayHello",
///         RetryPolicy::builder()
///             .attempt_timeout(Duration::from_secs(1))
///             .build()?,
///     )
///     // A method that must never run twice.
///     .method("helloworld.Greeter/Charge", RetryPolicy::no_retries())
///     .build()?;
/// let channel = tower::ServiceBuilder::new().layer(layer).service(channel);
/// // Any generated client takes it unchanged: GreeterClient::new(channel)
/// # let _ = channel;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
    /// The label of the services this layer makes: where their calls go, for the history.
    target: Option<Arc<str>>,
}

impl RetryLayer {
    /// A layer with the default policy for every call (see [`RetryPolicy::default`]).
    ///
    /// ```
    /// use tonic::transport::Channel;
    /// use tonic_retry::RetryLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let channel = tower::ServiceBuilder::new()
    ///     .layer(RetryLayer::new())
    ///     .service(Channel::from_static("http://127.0.0.1:50051").connect_lazy());
    /// # let _ = channel;
    /// # }
    /// ```
    pub fn new() -> RetryLayer {
        RetryLayer::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the default configuration is valid"))
    }

    /// A builder for per-service and per-method policies, a throttle, a hook... (see
    /// [`RetryLayerBuilder`]).
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, RetryPolicy};
    ///
    /// let layer = RetryLayer::builder()
    ///     .service("helloworld.Greeter", RetryPolicy::builder().max_attempts(3).build()?)
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            policies: PolicyTableBuilder::new(),
            jitter_seed: None,
            channel_buffer_limit: DEFAULT_CHANNEL_BUFFER_LIMIT,
            gate: None,
            gate_conflict: None,
            target: None,
            on_retry: None,
            #[cfg(feature = "opentelemetry")]
            telemetry: None,
        }
    }

    /// The layer's counters, shared by every service it made (see [`Counters`] for an example).
    pub fn metrics(&self) -> &Counters {
        &self.shared.counters
    }

    /// The layer's retry throttle, if it has one: the one given to
    /// [`RetryLayerBuilder::throttle`], or made from a service config's `retryThrottling`.
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, RetryThrottle};
    ///
    /// let layer = RetryLayer::builder().throttle(RetryThrottle::grpc_default()).build()?;
    /// let throttle = layer.throttle().expect("a throttle was given");
    /// assert_eq!(throttle.tokens(), 10.0);
    /// assert!(RetryLayer::new().throttle().is_none());
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn throttle(&self) -> Option<&RetryThrottle> {
        self.shared.gate.throttle()
    }

    /// The same layer (policies, throttle, counters and replay budget shared) whose services
    /// name `target` as where their calls go: for one layer used over several channels, so
    /// that each channel's histories name its own target.
    ///
    /// ```
    /// use tonic::transport::Channel;
    /// use tonic_retry::RetryLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = RetryLayer::new();
    /// let orders = tower::ServiceBuilder::new()
    ///     .layer(layer.with_target("orders.internal:443"))
    ///     .service(Channel::from_static("http://127.0.0.1:50051").connect_lazy());
    /// let users = tower::ServiceBuilder::new()
    ///     .layer(layer.with_target("users.internal:443"))
    ///     .service(Channel::from_static("http://127.0.0.1:50052").connect_lazy());
    /// # let _ = (orders, users);
    /// # }
    /// ```
    pub fn with_target(&self, target: impl Into<String>) -> RetryLayer {
        RetryLayer {
            shared: Arc::clone(&self.shared),
            target: Some(Arc::from(target.into())),
        }
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, Arc::clone(&self.shared), self.target.clone())
    }
}

/// Builds a [`RetryLayer`]; [`build`](RetryLayerBuilder::build) validates every name and policy.
///
/// The order of the calls never matters. A setter called twice replaces its own value (the last
/// [`default_policy`](Self::default_policy), [`throttle`](Self::throttle), ...); two different
/// settings for the same thing are an error from `build`, never a silent override: a name given
/// twice (directly or by a service config), a default policy given both by
/// [`default_policy`](Self::default_policy) and by a service config's default name, or more than
/// one retry gate ([`throttle`](Self::throttle), [`budget`](Self::budget), a service config's
/// `retryThrottling`).
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::{RetryLayer, RetryPolicy, RetryThrottle};
///
/// let layer = RetryLayer::builder()
///     .default_policy(RetryPolicy::builder().call_timeout(Duration::from_secs(30)).build()?)
///     .service("helloworld.Greeter", RetryPolicy::builder().max_attempts(3).build()?)
///     .method("helloworld.Greeter/Charge", RetryPolicy::no_retries())
///     .throttle(RetryThrottle::grpc_default())
///     .target("greeter.internal:443")
///     .on_retry(|event| tracing::warn!(method = event.method, attempt = event.attempt, "retrying"))
///     .build()?;
/// # let _ = layer;
///
/// // Names are checked by `build`, which says what is wrong and where.
/// let err = RetryLayer::builder()
///     .method("helloworld.Greeter.SayHello", RetryPolicy::default())
///     .build()
///     .unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"method: must be "package.Service/Method", got "helloworld.Greeter.SayHello""#
/// );
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct RetryLayerBuilder {
    policies: PolicyTableBuilder,
    jitter_seed: Option<u64>,
    channel_buffer_limit: usize,
    /// The retry gate and the setting that gave it.
    gate: Option<(RetryGate, GateSetting)>,
    /// The first clash of two gate settings: `build` reports it.
    gate_conflict: Option<ConfigError>,
    target: Option<Arc<str>>,
    on_retry: Option<OnRetry>,
    #[cfg(feature = "opentelemetry")]
    telemetry: Option<crate::telemetry::Telemetry>,
}

/// The settings that give a layer its one retry gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateSetting {
    Throttle,
    Budget,
    ServiceConfigThrottling,
}

impl GateSetting {
    fn name(self) -> &'static str {
        match self {
            GateSetting::Throttle => "throttle",
            GateSetting::Budget => "budget",
            GateSetting::ServiceConfigThrottling => "retryThrottling",
        }
    }

    fn described(self) -> &'static str {
        match self {
            GateSetting::Throttle => "RetryLayerBuilder::throttle",
            GateSetting::Budget => "RetryLayerBuilder::budget",
            GateSetting::ServiceConfigThrottling => "the service config's retryThrottling",
        }
    }
}

impl RetryLayerBuilder {
    /// Calls `hook` before each retry, with the method, the attempt that failed, its failure and
    /// the delay chosen (as go-grpc-middleware's `WithOnRetryCallback`). The hook runs inside the
    /// call's future: keep it quick and never block. A layer without a hook pays nothing.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use tonic_retry::RetryLayer;
    ///
    /// let retries = Arc::new(AtomicU64::new(0));
    /// let counted = Arc::clone(&retries);
    /// let layer = RetryLayer::builder()
    ///     .on_retry(move |event| {
    ///         counted.fetch_add(1, Ordering::Relaxed);
    ///         tracing::warn!(
    ///             method = event.method,
    ///             attempt = event.attempt,
    ///             kind = %event.kind,
    ///             delay_ms = event.delay.as_millis() as u64,
    ///             "retrying"
    ///         );
    ///     })
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn on_retry(
        mut self,
        hook: impl Fn(&crate::RetryEvent<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.on_retry = Some(OnRetry(Arc::new(hook)));
        self
    }

    /// The policy for calls that no service or method policy matches.
    ///
    /// Without it, such calls get [`RetryPolicy::default`], unless a
    /// [service config](Self::service_config) was applied: then, as in gRPC, a call the config
    /// does not name is not retried ([`RetryPolicy::no_retries`]), unless the config has a
    /// default name (`{"name": [{}]}`). A `default_policy` given before or after the service
    /// config wins over that fallback; given together with a config's default name, it is
    /// configured twice and [`build`](Self::build) says so. A second `default_policy` replaces
    /// the first.
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, RetryPolicy};
    ///
    /// // Retry nothing, except the one service that is known to be idempotent.
    /// let layer = RetryLayer::builder()
    ///     .default_policy(RetryPolicy::no_retries())
    ///     .service("catalog.Products", RetryPolicy::default())
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn default_policy(mut self, policy: RetryPolicy) -> Self {
        self.policies.set_default(policy);
        self
    }

    /// Sets the retry gate, unless another setting already did: two settings for one gate are
    /// a conflict (the same setting twice replaces, as any setter does; a service config's is
    /// never replaced, since two configs that both throttle contradict each other).
    fn set_gate(mut self, gate: RetryGate, setting: GateSetting) -> Self {
        match &self.gate {
            Some((_, previous))
                if *previous != setting || setting == GateSetting::ServiceConfigThrottling =>
            {
                if self.gate_conflict.is_none() {
                    self.gate_conflict = Some(ConfigError::new(
                        setting.name(),
                        format!("{gate:?}"),
                        format!(
                            "conflicts with {}: a layer has one retry gate, set either \
                             (throttle, budget or the service config's retryThrottling)",
                            previous.described()
                        ),
                    ));
                }
            }
            _ => self.gate = Some((gate, setting)),
        }
        self
    }

    /// The policy for every method of `service`, a fully qualified name such as
    /// `helloworld.Greeter` (the proto package, a dot, the service), as the generated client
    /// sends it in the request path `/helloworld.Greeter/SayHello`. A method policy of the same
    /// service wins over it.
    pub fn service(mut self, service: &str, policy: RetryPolicy) -> Self {
        self.policies.insert_service(service, policy);
        self
    }

    /// The policy for one method, named `package.Service/Method`. It wins over the service's.
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, RetryPolicy};
    ///
    /// let layer = RetryLayer::builder()
    ///     .method("bank.Ledger/Transfer", RetryPolicy::no_retries())
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn method(mut self, path: &str, policy: RetryPolicy) -> Self {
        self.policies.insert_method(path, policy);
        self
    }

    /// Adds the policies and retry throttling of a gRPC service config; validation happened
    /// when the config was parsed.
    ///
    /// The config's default name becomes the [`default_policy`](Self::default_policy), a service
    /// name a [`service`](Self::service) policy, a method name a [`method`](Self::method)
    /// policy. Each `retryPolicy` becomes a [`RetryPolicy`] (see
    /// [`ConfigRetryPolicy::to_policy`](crate::service_config::ConfigRetryPolicy::to_policy));
    /// an entry without one becomes [`RetryPolicy::no_retries`], as in gRPC. `retryThrottling`
    /// becomes the layer's [`RetryThrottle`].
    ///
    /// Calls the config does not name are not retried, as in gRPC (they get
    /// [`RetryPolicy::no_retries`], which keeps gRFC A6's transparent retry), unless the config
    /// has a default name or the builder is given a [`default_policy`](Self::default_policy),
    /// before or after: an explicit default wins over this fallback. Two settings for one thing
    /// are errors from [`build`](Self::build), never silent overrides: a name also given to the
    /// builder directly, the config's default name together with `default_policy`, or
    /// `retryThrottling` together with [`throttle`](Self::throttle) or
    /// [`budget`](Self::budget).
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, RetryPolicy, ServiceConfig};
    ///
    /// let config: ServiceConfig = r#"{"methodConfig": [{
    ///     "name": [{"service": "helloworld.Greeter"}],
    ///     "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
    ///                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}"#
    ///     .parse()?;
    /// // Calls to other services keep the crate's default policy rather than no retries.
    /// let layer = RetryLayer::builder()
    ///     .service_config(&config)
    ///     .default_policy(RetryPolicy::default())
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn service_config(mut self, config: &ServiceConfig) -> Self {
        // The builder reads the config, never the other way round: the config stays a plain
        // description that knows nothing of layers.
        for (entry, method_config) in config.method_configs().iter().enumerate() {
            let policy = method_config.to_policy();
            for (position, name) in method_config.names().iter().enumerate() {
                match (name.service_name(), name.method_name()) {
                    (None, _) => self
                        .policies
                        .set_service_config_default(policy.clone(), &name_place(entry, position)),
                    (Some(service), None) => self.policies.insert_service(service, policy.clone()),
                    (Some(service), Some(method)) => self
                        .policies
                        .insert_method(&format!("{service}/{method}"), policy.clone()),
                }
            }
        }
        if let Some(throttling) = config.retry_throttling() {
            self = self.set_gate(
                RetryGate::Throttle(throttling.to_throttle()),
                GateSetting::ServiceConfigThrottling,
            );
        }
        self.policies.service_config_applied();
        self
    }

    /// Names where the calls go (such as `"orders.internal:443"` or the endpoint's URI), so that
    /// the history of a failed call can say it: a tonic `Channel` adds the address below the
    /// layer, out of its sight. A request whose URI has an authority is named by it instead. For
    /// one layer over several channels, label each with [`RetryLayer::with_target`].
    ///
    /// ```
    /// use tonic_retry::{CallHistory, RetryLayer, RetryPolicy};
    /// use tonic_retry_testkit::pb::{SayRequest, echo_client::EchoClient};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let channel = tonic_retry_testkit::lazy_channel(tonic_retry_testkit::unused_addr());
    /// let layer = RetryLayer::builder()
    ///     .default_policy(RetryPolicy::no_retries())
    ///     .target("orders.internal:443")
    ///     .build()?;
    /// let mut client = EchoClient::new(tower::ServiceBuilder::new().layer(layer).service(channel));
    /// let status = client.say(SayRequest::default()).await.unwrap_err();
    /// let history = CallHistory::of(&status).unwrap();
    /// assert_eq!(history.target(), Some("orders.internal:443"));
    /// # Ok(()) }
    /// ```
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(Arc::from(target.into()));
        self
    }

    /// Seeds the jitter, so that a test can replay the exact same delays. Without it, the jitter
    /// is seeded from the system's entropy.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// Bounds the bytes all calls through this layer hold for replay together (default 16 MiB).
    /// A call that finds no room is sent unbuffered and is not retried.
    ///
    /// ```
    /// use tonic_retry::RetryLayer;
    ///
    /// // At most 4 MiB held for replay across all calls; each call keeps its own limit too
    /// // (`RetryPolicyBuilder::buffer_limit`, 256 KiB by default).
    /// let layer = RetryLayer::builder().channel_buffer_limit(4 * 1024 * 1024).build()?;
    /// # let _ = layer;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn channel_buffer_limit(mut self, bytes: usize) -> Self {
        self.channel_buffer_limit = bytes;
        self
    }

    /// Throttles retries with gRFC A6's token bucket, shared by every clone of the layer.
    ///
    /// A layer has one retry gate: this, a [`budget`](Self::budget), or a service config's
    /// `retryThrottling`. Giving two of them is an error from [`build`](Self::build) that names
    /// both; a second `throttle` replaces the first.
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, RetryThrottle};
    ///
    /// // gRPC's usual setting: retries stop while 5 or fewer of the 10 tokens are left, and each
    /// // call that ends OK gives back a tenth of one.
    /// let throttle = RetryThrottle::new(10.0, 0.1)?;
    /// let layer = RetryLayer::builder().throttle(throttle.clone()).build()?;
    /// // Clones share the bucket: the throttle kept here reads the layer's tokens.
    /// throttle.record_failure();
    /// assert_eq!(layer.throttle().map(|shared| shared.tokens()), Some(9.0));
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn throttle(self, throttle: RetryThrottle) -> Self {
        self.set_gate(RetryGate::Throttle(throttle), GateSetting::Throttle)
    }

    /// Bounds retries with a tower retry budget (for example `TpsBudget`) instead: each call
    /// deposits, each retry withdraws.
    ///
    /// Not together with a [`throttle`](Self::throttle) or a service config's `retryThrottling`:
    /// [`build`](Self::build) rejects two retry gates. A second `budget` replaces the first.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_retry::{RetryLayer, RetryThrottle};
    /// use tower::retry::budget::TpsBudget;
    ///
    /// // Retries add at most 20% to the calls of the last 10 s, plus 10 retries a second.
    /// let budget = TpsBudget::new(Duration::from_secs(10), 10, 0.2);
    /// let layer = RetryLayer::builder().budget(budget).build()?;
    /// # let _ = layer;
    ///
    /// // One retry gate per layer.
    /// let err = RetryLayer::builder()
    ///     .throttle(RetryThrottle::grpc_default())
    ///     .budget(TpsBudget::new(Duration::from_secs(10), 10, 0.2))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.field(), "budget");
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn budget(self, budget: impl tower::retry::budget::Budget + Send + Sync + 'static) -> Self {
        self.set_gate(RetryGate::Budget(Box::new(budget)), GateSetting::Budget)
    }

    /// Validates the configuration and builds the layer: every service and method name, each
    /// name given once, one default policy, one retry gate. The error names the setting and the
    /// value at fault.
    pub fn build(self) -> Result<RetryLayer, ConfigError> {
        let policies = self.policies.build()?;
        if let Some(conflict) = self.gate_conflict {
            return Err(conflict);
        }
        let gate = self.gate.map_or(RetryGate::Unlimited, |(gate, _)| gate);
        let jitter = self
            .jitter_seed
            .map_or_else(Jitter::from_entropy, Jitter::seeded);
        Ok(RetryLayer {
            shared: Arc::new(Shared {
                policies,
                jitter,
                buffer_budget: Arc::new(BufferBudget::new(self.channel_buffer_limit)),
                counters: Counters::default(),
                gate,
                on_retry: self.on_retry,
                #[cfg(feature = "opentelemetry")]
                telemetry: self.telemetry,
            }),
            target: self.target,
        })
    }

    /// Records gRPC's OpenTelemetry client metrics (gRFC A66 and A96) with `meter`, under the
    /// names, units and bucket boundaries gRPC's own clients use, so that the dashboards of
    /// grpc-go and grpc-java clients show tonic calls too. A layer without a meter records
    /// nothing and pays one check per call.
    ///
    /// | instrument | kind, unit | attributes | recorded |
    /// |---|---|---|---|
    /// | `grpc.client.attempt.started` | counter, `{attempt}` | method, target | per attempt, as it starts |
    /// | `grpc.client.attempt.duration` | histogram, `s` | method, target, status | per attempt, as it ends |
    /// | `grpc.client.call.duration` | histogram, `s` | method, target, status | per call, as it ends |
    /// | `grpc.client.call.retries` | histogram, `{retry}` | method, target | per call with retries |
    /// | `grpc.client.call.transparent_retries` | histogram, `{transparent_retry}` | method, target | per call with transparent retries |
    /// | `grpc.client.call.hedges` | histogram, `{hedge}` | method, target | per call with hedges |
    /// | `grpc.client.call.retry_delay` | histogram, `s` | method, target | per call: the time no attempt was in flight |
    ///
    /// - `grpc.method` is `package.Service/Method` as a generated client names it (tonic's
    ///   `GrpcMethod` request extension); a request without one (a hand-built path, a generic
    ///   proxy) is recorded as `"other"`, as gRFC A66 records unregistered methods, so that
    ///   arbitrary paths cannot grow the metrics' cardinality.
    /// - `grpc.target` is the target of the call's [history](crate::CallHistory::target): the
    ///   request's authority, else the layer's [`target`](Self::target) (or
    ///   [`RetryLayer::with_target`]) label, else `"unknown"`.
    /// - `grpc.status` is the code's name as gRPC writes it (`"OK"`, `"UNAVAILABLE"`, ...). A
    ///   call ends when the caller gets its error, or when its response's trailers arrive: a
    ///   streaming call is recorded when its stream ends. A response body that fails in the
    ///   middle is recorded UNAVAILABLE (the transport broke under it), one that ends without a
    ///   `grpc-status` UNKNOWN (as tonic reports it), and a call the caller drops before it ends
    ///   (the response future, or the body before its trailers) CANCELLED, with its attempt.
    ///
    /// The histograms carry gRPC's bucket boundaries as advice: a view set in the SDK wins.
    /// Requires the `opentelemetry` feature (the `opentelemetry` crate's metrics API, 0.33);
    /// the [`Counters`](crate::Counters) stay as the dependency-free way to count.
    ///
    /// ```
    /// use opentelemetry::metrics::MeterProvider;
    /// use opentelemetry_sdk::metrics::SdkMeterProvider;
    /// use tonic_retry::RetryLayer;
    ///
    /// // Your provider, with its exporter (OTLP, Prometheus...).
    /// let provider = SdkMeterProvider::builder().build();
    /// let layer = RetryLayer::builder()
    ///     .target("orders.internal:443")
    ///     .opentelemetry(provider.meter("tonic-retry"))
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn opentelemetry(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.telemetry = Some(crate::telemetry::Telemetry::new(&meter));
        self
    }
}
