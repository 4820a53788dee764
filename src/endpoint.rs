//! HTTP/2 keepalive for the tonic `Endpoint` under the layer: how a dead connection is found.
//!
//! A connection can die without a word: the peer's host crashed, a NAT or load balancer dropped
//! its mapping, a route went away. Such a half-open TCP connection sends no FIN and no RST, so
//! neither hyper nor tonic learns that it is dead, and tonic's `Channel` keeps handing calls to
//! it. A retry does not help: the next attempt goes down the same dead connection. Only HTTP/2
//! keepalive pings find it out: when a ping is not answered within the timeout, hyper closes the
//! connection and every call on it fails: a call still waiting for response headers with
//! UNAVAILABLE, which the layer retries, and the `Channel` dials a new connection for that
//! retry; a response stream already flowing ends with an error (the call is committed, so that
//! is for the caller or a [`ResumableStream`](crate::ResumableStream) to handle).

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::error::ConfigError;

/// HTTP/2 keepalive settings for a tonic [`Endpoint`], so that a connection that went silent is
/// detected and replaced.
///
/// A connection that stops answering is closed at most [`detection_time`](Self::detection_time)
/// (interval + timeout) after it went silent; the call on it fails and is retried on a new
/// connection. Keep the policy's [`attempt_timeout`](crate::RetryPolicyBuilder::attempt_timeout)
/// *longer* than that: an attempt that times out first is retried down the same dead
/// connection, which tonic still holds for alive.
///
/// ```
/// use std::time::Duration;
/// use tonic::transport::Endpoint;
/// use tonic_retry::{Keepalive, RetryLayer, RetryPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tonic_retry::ConfigError> {
/// let keepalive = Keepalive::new(Duration::from_secs(10), Duration::from_secs(5))?;
/// let channel = keepalive
///     .apply(Endpoint::from_static("http://127.0.0.1:50051"))
///     .connect_lazy();
/// let policy = RetryPolicy::builder()
///     // Longer than the 15 s it takes to find a dead connection.
///     .attempt_timeout(Duration::from_secs(20))
///     .build()?;
/// let layer = RetryLayer::builder().default_policy(policy).build()?;
/// let channel = tower::ServiceBuilder::new().layer(layer).service(channel);
/// # let _ = channel;
/// # Ok(()) }
/// ```
///
/// # The server must allow the pings
///
/// gRPC servers police pings. grpc-go and gRPC C-core (C++, Python, Ruby...) servers by default
/// accept one ping per 5 minutes and none while no call is open; a client that pings more
/// often is sent `GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings")` and its calls fail. Against such
/// a server, either allow the pings there (grpc-go: `keepalive.EnforcementPolicy{MinTime,
/// PermitWithoutStream: true}`; C-core: `grpc.http2.min_recv_ping_interval_without_data_ms`,
/// `grpc.keepalive_permit_without_calls`), or ping no more often than it allows and turn
/// [`while_idle`](Self::while_idle) off. tonic (hyper) servers do not police pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    interval: Duration,
    timeout: Duration,
    while_idle: bool,
}

impl Keepalive {
    /// The default time between pings: 20 s.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(20);

    /// The default time to wait for a ping's answer: 20 s, gRPC's `KEEPALIVE_TIMEOUT` default.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

    /// Pings every `interval`, and closes the connection when one is not answered within
    /// `timeout`; pings idle connections too (see [`while_idle`](Self::while_idle)).
    ///
    /// Both must be more than zero:
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic_retry::Keepalive;
    ///
    /// let err = Keepalive::new(Duration::ZERO, Duration::from_secs(1)).unwrap_err();
    /// assert_eq!(err.field(), "keepalive.interval");
    /// ```
    pub fn new(interval: Duration, timeout: Duration) -> Result<Keepalive, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::new("keepalive.interval", "0s", "must be > 0"));
        }
        if timeout.is_zero() {
            return Err(ConfigError::new("keepalive.timeout", "0s", "must be > 0"));
        }
        Ok(Keepalive {
            interval,
            timeout,
            while_idle: true,
        })
    }

    /// Whether to ping a connection that has no call open (default true). With it, a
    /// connection that died while idle is replaced before the next call needs it; without it,
    /// the next call finds out, at most [`detection_time`](Self::detection_time) after it
    /// started, and is retried.
    pub fn while_idle(mut self, while_idle: bool) -> Keepalive {
        self.while_idle = while_idle;
        self
    }

    /// The time between pings.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a ping may go unanswered before the connection is closed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether idle connections are pinged.
    pub fn pings_while_idle(&self) -> bool {
        self.while_idle
    }

    /// The longest a dead connection goes unnoticed: interval + timeout (saturating).
    pub fn detection_time(&self) -> Duration {
        self.interval.saturating_add(self.timeout)
    }

    /// Sets these keepalive settings on `endpoint`.
    pub fn apply(&self, endpoint: Endpoint) -> Endpoint {
        endpoint
            .http2_keep_alive_interval(self.interval)
            .keep_alive_timeout(self.timeout)
            .keep_alive_while_idle(self.while_idle)
    }
}

impl Default for Keepalive {
    /// A ping every 20 s, answered within 20 s, idle connections included: a dead connection
    /// is replaced within 40 s.
    fn default() -> Self {
        Keepalive {
            interval: Keepalive::DEFAULT_INTERVAL,
            timeout: Keepalive::DEFAULT_TIMEOUT,
            while_idle: true,
        }
    }
}

/// Sets [`Keepalive::default`] on `endpoint`: a connection that goes silent (no FIN, no RST) is
/// closed within 40 s and the calls after it go to a new one.
///
/// ```
/// use tonic::transport::Endpoint;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let channel = tonic_retry::keepalive(Endpoint::from_static("http://127.0.0.1:50051"))
///     .connect_lazy();
/// # let _ = channel;
/// # }
/// ```
pub fn keepalive(endpoint: Endpoint) -> Endpoint {
    Keepalive::default().apply(endpoint)
}

/// Put by the layer in the extensions of a retry whose previous attempt ran out of time with
/// no response: the connection that attempt went down may be dead (a half-open connection
/// answers nothing, and tonic keeps handing it calls until keepalive finds it out). A service
/// under the layer can act on it: open a new connection for this attempt rather than wait for
/// keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterAttemptTimeout {
    timed_out_attempt_started: tokio::time::Instant,
}

impl AfterAttemptTimeout {
    pub(crate) fn new(timed_out_attempt_started: tokio::time::Instant) -> AfterAttemptTimeout {
        AfterAttemptTimeout {
            timed_out_attempt_started,
        }
    }

    /// When the attempt that timed out was sent (tokio's clock): a connection opened after it
    /// is not the one it went down.
    pub fn timed_out_attempt_started(&self) -> tokio::time::Instant {
        self.timed_out_attempt_started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_durations_are_rejected_by_name() {
        let err = Keepalive::new(Duration::from_secs(1), Duration::ZERO).unwrap_err();
        assert_eq!(err.field(), "keepalive.timeout");
        assert_eq!(err.to_string(), "keepalive.timeout: must be > 0, got 0s");
    }

    #[test]
    fn detection_time_saturates() {
        let keepalive = Keepalive::new(Duration::MAX, Duration::MAX).unwrap();
        assert_eq!(keepalive.detection_time(), Duration::MAX);
        assert_eq!(
            Keepalive::default().detection_time(),
            Duration::from_secs(40)
        );
    }
}
