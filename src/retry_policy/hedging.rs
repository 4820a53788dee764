//! gRFC A6's hedging policy: send the call again before the first attempt has failed, and keep
//! the first answer.
//!
//! Beyond A6, the delay can adapt to the method (hedge at a rolling percentile of its recent
//! attempts' latencies, as "The Tail at Scale" recommends) and the extra load can be capped (hedges
//! as a fraction of calls).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::Code;

use crate::code::CodeSet;
use crate::error::ConfigError;

/// The most attempts a hedged call may have in flight, the first included (gRFC A6's cap).
pub const MAX_HEDGED_ATTEMPTS: u32 = 5;

/// Latencies an adaptive delay is computed from: the method's most recent attempts.
const WINDOW: usize = 256;

/// An adaptive delay uses the fixed delay until the method has this many latencies.
const MIN_SAMPLES: usize = 20;

/// The percentile is computed again every this many latencies, not on every call.
const RECOMPUTE_EVERY: usize = 16;

/// A hedge costs one token of the extra-load cap; calls earn `max_extra_load` of one. In
/// thousandths, so that the count stays an integer.
const TOKEN: u64 = 1000;

/// How many hedges the extra-load cap lets through at once, when calls have earned them.
const MAX_TOKENS: u64 = 10 * TOKEN;

/// How a method's calls are hedged (gRFC A6 `hedgingPolicy`): the first attempt goes out at
/// once, another every [`delay`](HedgingPolicyBuilder::delay) while none has answered, up to
/// [`max_attempts`](HedgingPolicyBuilder::max_attempts) in all. The first attempt to answer (with
/// response headers, or with a status that is not [non-fatal](HedgingPolicyBuilder::non_fatal_codes))
/// wins; the others are cancelled. A non-fatal status lets the next hedge go out at once.
///
/// Hedging sends one request several times, so use it for idempotent methods only; a method
/// gets it only where you configure it, and one call can opt out with its own policy in its
/// extensions (`RetryPolicy::no_retries()`, say). Client-streaming and bidirectional calls are
/// hedged too: every attempt reads the same replay buffer, within the same limits as retries.
///
/// Each hedge is counted ([`Counters::hedges`](crate::Counters::hedges)), debits the throttle
/// when it fails, and carries `grpc-previous-rpc-attempts`; the call's history lists the
/// attempts that failed. The retry hook is not called for hedges, and a hedged policy has no
/// per-attempt timeout: the delay is what starts the next attempt, and the call's deadline
/// bounds them all.
///
/// ```
/// use std::time::Duration;
/// use tonic::Code;
/// use tonic_retry::{HedgingPolicy, RetryLayer, RetryPolicy};
///
/// let hedging = HedgingPolicy::builder()
///     .max_attempts(3)
///     .delay(Duration::from_millis(20))
///     .non_fatal_codes([Code::Unavailable])
///     .build()?;
/// let layer = RetryLayer::builder()
///     .method("shop.Catalog/GetItem", RetryPolicy::hedged(hedging))
///     .build()?;
/// # let _ = layer;
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
///
/// Or hedge at the method's own tail latency, with the extra load capped:
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::HedgingPolicy;
///
/// let hedging = HedgingPolicy::builder()
///     .max_attempts(2)
///     .delay(Duration::from_millis(50)) // until 20 latencies are known
///     .adaptive_delay(0.95)             // then at the p95 of the last 256
///     .max_extra_load(0.1)              // and never more than 1 hedge per 10 calls
///     .build()?;
/// assert_eq!(hedging.adaptive_percentile(), Some(0.95));
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
///
/// Clones share the latency window and the extra-load cap: give each method a policy built on
/// its own to track it on its own.
#[derive(Clone)]
pub struct HedgingPolicy(Arc<Hedging>);

struct Hedging {
    max_attempts: u32,
    delay: Duration,
    non_fatal: CodeSet,
    adaptive: Option<f64>,
    max_extra_load: Option<f64>,
    /// Recent latencies, when the delay adapts.
    window: Mutex<Window>,
    /// The adaptive delay in nanoseconds, `u64::MAX` until enough latencies are known.
    adaptive_delay: AtomicU64,
    /// The extra-load cap's tokens, in thousandths of a hedge.
    tokens: AtomicU64,
}

#[derive(Default)]
struct Window {
    /// Latencies in nanoseconds, a ring of the last `WINDOW`.
    samples: Vec<u64>,
    next: usize,
    since_recompute: usize,
}

impl HedgingPolicy {
    /// A builder: 2 attempts, no delay (A6's default: every attempt at once), no non-fatal code.
    pub fn builder() -> HedgingPolicyBuilder {
        HedgingPolicyBuilder::default()
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.0.max_attempts
    }

    /// The fixed delay between hedges (with an adaptive delay, the delay until enough latencies
    /// are known).
    pub fn delay(&self) -> Duration {
        self.0.delay
    }

    /// The codes after which the next hedge goes out at once; any other status ends the call.
    pub fn non_fatal_codes(&self) -> CodeSet {
        self.0.non_fatal
    }

    /// The latency percentile the delay adapts to, if it adapts.
    pub fn adaptive_percentile(&self) -> Option<f64> {
        self.0.adaptive
    }

    /// The cap on hedges as a fraction of calls, if any.
    pub fn max_extra_load(&self) -> Option<f64> {
        self.0.max_extra_load
    }

    /// The delay before the next hedge now: the fixed one, or the adapted one once known.
    pub(crate) fn current_delay(&self) -> Duration {
        match self.0.adaptive_delay.load(Ordering::Relaxed) {
            u64::MAX => self.0.delay,
            nanos => Duration::from_nanos(nanos),
        }
    }

    /// A call started: it earns its share of the extra-load cap.
    pub(crate) fn on_call(&self) {
        let Some(load) = self.0.max_extra_load else {
            return;
        };
        // `load` is validated finite and at most MAX_HEDGED_ATTEMPTS: the product fits.
        let earned = (load * TOKEN as f64).round() as u64;
        let _ = self
            .0
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tokens| {
                Some(tokens.saturating_add(earned).min(MAX_TOKENS))
            });
    }

    /// Whether the extra-load cap lets one more hedge go out (and takes its token if so).
    pub(crate) fn permit_hedge(&self) -> bool {
        if self.0.max_extra_load.is_none() {
            return true;
        }
        self.0
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tokens| {
                tokens.checked_sub(TOKEN)
            })
            .is_ok()
    }

    /// An attempt answered after `latency`. Only answers count, as in `tower::hedge`: an attempt
    /// cancelled when another answered has no latency of its own.
    pub(crate) fn record_latency(&self, latency: Duration) {
        let Some(percentile) = self.0.adaptive else {
            return;
        };
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX - 1);
        let mut window = self.0.window.lock().unwrap_or_else(PoisonError::into_inner);
        if window.samples.len() < WINDOW {
            window.samples.push(nanos);
        } else {
            let next = window.next;
            window.samples[next] = nanos;
        }
        window.next = (window.next + 1) % WINDOW;
        window.since_recompute += 1;
        if window.samples.len() < MIN_SAMPLES || window.since_recompute < RECOMPUTE_EVERY {
            return;
        }
        window.since_recompute = 0;
        let mut sorted = window.samples.clone();
        drop(window);
        let rank = ((sorted.len() - 1) as f64 * percentile).round() as usize;
        let rank = rank.min(sorted.len() - 1);
        let (_, at, _) = sorted.select_nth_unstable(rank);
        // `u64::MAX` means "not known yet".
        let delay = (*at).min(u64::MAX - 1);
        self.0.adaptive_delay.store(delay, Ordering::Relaxed);
    }
}

impl fmt::Debug for HedgingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgingPolicy")
            .field("max_attempts", &self.0.max_attempts)
            .field("delay", &self.0.delay)
            .field("non_fatal", &self.0.non_fatal)
            .field("adaptive", &self.0.adaptive)
            .field("max_extra_load", &self.0.max_extra_load)
            .finish()
    }
}

impl PartialEq for HedgingPolicy {
    /// Equal settings (the latencies seen so far do not count).
    fn eq(&self, other: &Self) -> bool {
        self.0.max_attempts == other.0.max_attempts
            && self.0.delay == other.0.delay
            && self.0.non_fatal == other.0.non_fatal
            && self.0.adaptive == other.0.adaptive
            && self.0.max_extra_load == other.0.max_extra_load
    }
}

/// Builds a [`HedgingPolicy`]; [`build`](Self::build) checks every field.
#[derive(Debug, Clone)]
pub struct HedgingPolicyBuilder {
    max_attempts: u32,
    delay: Duration,
    non_fatal: CodeSet,
    adaptive: Option<f64>,
    max_extra_load: Option<f64>,
}

impl Default for HedgingPolicyBuilder {
    fn default() -> Self {
        HedgingPolicyBuilder {
            max_attempts: 2,
            delay: Duration::ZERO,
            non_fatal: CodeSet::of(&[]),
            adaptive: None,
            max_extra_load: None,
        }
    }
}

impl HedgingPolicyBuilder {
    /// Attempts per call, the first included: from 2 to [`MAX_HEDGED_ATTEMPTS`] (5).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// How long to wait for an answer before sending the next hedge (A6 `hedgingDelay`; zero
    /// sends every attempt at once). A server's pushback on a failed attempt overrides it once.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The statuses after which the next hedge goes out at once (A6 `nonFatalStatusCodes`).
    /// Any other status ends the call with that status, as does a failure no attempt can change.
    /// A request that never reached the server is never fatal. OK cannot be one.
    pub fn non_fatal_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.non_fatal = codes.into_iter().collect();
        self
    }

    /// Hedge at this percentile (in `(0, 1)`, such as `0.95`) of the latencies of the method's
    /// last 256 attempts rather than after the fixed [`delay`](Self::delay), which stays the
    /// delay until 20 latencies are known. Only attempts that answered count: one cancelled
    /// because another answered first has no latency of its own (counting the time it had run
    /// would raise the percentile at every recompute).
    pub fn adaptive_delay(mut self, percentile: f64) -> Self {
        self.adaptive = Some(percentile);
        self
    }

    /// At most this many hedges per call on average (`0.1`: one hedge per ten calls; at least
    /// 0.001, since three decimal places are kept, and at most `max_attempts - 1`). A call whose
    /// hedge the cap refuses waits for its attempts in flight.
    pub fn max_extra_load(mut self, hedges_per_call: f64) -> Self {
        self.max_extra_load = Some(hedges_per_call);
        self
    }

    /// Checks every field and builds the policy.
    pub fn build(self) -> Result<HedgingPolicy, ConfigError> {
        if !(2..=MAX_HEDGED_ATTEMPTS).contains(&self.max_attempts) {
            return Err(ConfigError::new(
                "max_attempts",
                self.max_attempts.to_string(),
                format!("a hedging policy needs 2 to {MAX_HEDGED_ATTEMPTS} attempts (gRFC A6)"),
            ));
        }
        let non_fatal = self.non_fatal.reject_ok("non_fatal_codes")?;
        if let Some(percentile) = self.adaptive
            && !(percentile > 0.0 && percentile < 1.0)
        {
            return Err(ConfigError::new(
                "adaptive_delay",
                percentile.to_string(),
                "must be a percentile in (0, 1), such as 0.95",
            ));
        }
        if let Some(load) = self.max_extra_load {
            if !(load > 0.0 && load <= f64::from(self.max_attempts - 1)) {
                return Err(ConfigError::new(
                    "max_extra_load",
                    load.to_string(),
                    format!(
                        "must be above 0 and at most max_attempts - 1 ({})",
                        self.max_attempts - 1
                    ),
                ));
            }
            // Calls earn the cap in thousandths of a hedge: a share that rounds to none would
            // refuse every hedge, a policy that silently never hedges.
            if (load * TOKEN as f64).round() < 1.0 {
                return Err(ConfigError::new(
                    "max_extra_load",
                    load.to_string(),
                    "must be at least 0.001 (three decimal places are kept)",
                ));
            }
        }
        Ok(HedgingPolicy(Arc::new(Hedging {
            max_attempts: self.max_attempts,
            delay: self.delay,
            non_fatal,
            adaptive: self.adaptive,
            max_extra_load: self.max_extra_load,
            window: Mutex::new(Window::default()),
            adaptive_delay: AtomicU64::new(u64::MAX),
            // The first hedge needs no call to have earned it.
            tokens: AtomicU64::new(TOKEN),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_names_each_bad_field() {
        let err = HedgingPolicy::builder()
            .max_attempts(1)
            .build()
            .unwrap_err();
        assert!(err.to_string().starts_with("max_attempts: "), "{err}");
        let err = HedgingPolicy::builder()
            .max_attempts(6)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("6"), "{err}");
        let err = HedgingPolicy::builder()
            .non_fatal_codes([Code::Ok])
            .build()
            .unwrap_err();
        assert!(err.to_string().starts_with("non_fatal_codes"), "{err}");
        for bad in [0.0, 1.0, -0.5, f64::NAN, f64::INFINITY] {
            let err = HedgingPolicy::builder()
                .adaptive_delay(bad)
                .build()
                .unwrap_err();
            assert!(err.to_string().starts_with("adaptive_delay"), "{err}");
            let err = HedgingPolicy::builder()
                .max_extra_load(bad * 10.0)
                .build()
                .unwrap_err();
            assert!(err.to_string().starts_with("max_extra_load"), "{err}");
        }
    }

    #[test]
    fn the_delay_adapts_to_the_percentile_once_enough_latencies_are_known() {
        let policy = HedgingPolicy::builder()
            .delay(Duration::from_millis(500))
            .adaptive_delay(0.9)
            .build()
            .unwrap();
        for ms in 1..=15 {
            policy.record_latency(Duration::from_millis(ms));
        }
        assert_eq!(policy.current_delay(), Duration::from_millis(500));
        for ms in 16..=36 {
            policy.record_latency(Duration::from_millis(ms));
        }
        // Computed at the 20th latency and every 16th after: at the 36th, over 1..=36 ms, whose
        // 0.9 percentile is about 33 ms.
        let delay = policy.current_delay();
        assert!(
            (Duration::from_millis(31)..=Duration::from_millis(34)).contains(&delay),
            "{delay:?}"
        );
    }

    /// The feedback loop of a hedged method, simulated: 5% of attempts take 50 ms, the rest
    /// 1 ms; an attempt slower than the delay is hedged, and the first answer wins. The delay
    /// settles at the fast attempts' tail and stays there (counting the cancelled losers' time
    /// raised it at every recompute, towards the slow attempts' 50 ms).
    #[test]
    fn the_adaptive_delay_settles_and_does_not_ratchet_up() {
        let policy = HedgingPolicy::builder()
            .delay(Duration::from_millis(10))
            .adaptive_delay(0.95)
            .build()
            .unwrap();
        let mut seed = 7u64;
        let mut attempt = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            if (seed >> 33) % 100 < 5 {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(1)
            }
        };
        let mut hedged = 0;
        for _ in 0..5_000 {
            let delay = policy.current_delay();
            let first = attempt();
            if first <= delay {
                policy.record_latency(first);
                continue;
            }
            hedged += 1;
            let hedge = attempt();
            if first <= delay + hedge {
                policy.record_latency(first);
            } else {
                policy.record_latency(hedge);
            }
        }
        assert_eq!(policy.current_delay(), Duration::from_millis(1));
        assert!((200..=300).contains(&hedged), "about the 5% slow: {hedged}");
    }

    #[test]
    fn a_huge_latency_does_not_panic_or_mean_unknown() {
        let policy = HedgingPolicy::builder()
            .adaptive_delay(0.5)
            .build()
            .unwrap();
        for _ in 0..64 {
            policy.record_latency(Duration::MAX);
        }
        assert!(policy.current_delay() > Duration::from_secs(1_000_000));
    }

    #[test]
    fn the_extra_load_cap_lets_through_what_calls_earned() {
        let policy = HedgingPolicy::builder()
            .max_extra_load(0.1)
            .build()
            .unwrap();
        assert!(policy.permit_hedge(), "the first hedge is free");
        assert!(!policy.permit_hedge());
        for _ in 0..10 {
            policy.on_call();
        }
        assert!(policy.permit_hedge());
        assert!(!policy.permit_hedge());
        for _ in 0..1000 {
            policy.on_call();
        }
        let burst = (0..100).filter(|_| policy.permit_hedge()).count();
        assert_eq!(burst, 10, "the cap holds at most 10 hedges");
    }
}
