//! The decision after a failed attempt: retry (after how long), or stop (and why).

use std::time::Duration;

use super::RetryPolicy;
use crate::classify::{Failure, Pushback};
use crate::history::StopReason;
use crate::kind::FailureKind;

/// Where a call stands when an attempt has failed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Counted attempts made so far, the failed one included.
    pub(crate) attempts: u32,
    /// Retries since the backoff sequence last (re)started.
    pub(crate) backoff_step: u32,
    /// Whether the call's one transparent retry was used.
    pub(crate) transparent_used: bool,
    /// Whether the request can be sent again (it fit in the replay buffer).
    pub(crate) replayable: bool,
    /// Time left before the call's deadline, if it has one.
    pub(crate) remaining: Option<Duration>,
    /// A uniform sample in `[0, 1)` for jitter.
    pub(crate) random: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Retry {
        delay: Duration,
        /// Not counted as an attempt (gRFC A6 transparent retry).
        transparent: bool,
        /// The backoff sequence restarts after this retry (server pushback).
        restart_backoff: bool,
    },
    Stop(StopReason),
}

/// The longest a server's pushback or `google.rpc.RetryInfo` can make a call without a deadline
/// wait before its next attempt. A peer's number is not a reason to wait forever
/// (`grpc-retry-pushback-ms: 18446744073709551615` is valid syntax); a call with a deadline never
/// waits past it either way.
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(60);

/// The longest backoff the layer sleeps: tokio's own bound for "never" (what
/// `tokio::time::sleep(Duration::MAX)` sleeps), about 30 years. A schedule may ask for more (up to
/// `Duration::MAX`, which its caller cannot add to the clock), and means "wait for ever" by it, as
/// a resumable stream reads it: a longer wait must never turn into no wait at all.
const LONGEST_BACKOFF: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Whether a failure is one that gRFC A6's throttle counts: every failure the policy would
/// retry (a retryable code, an attempt timeout, a request that never reached the server), but a
/// fail-fast code.
pub(crate) fn debits_throttle(policy: &RetryPolicy, failure: &Failure) -> bool {
    !policy.fail_fast_codes().contains(failure.code()) && retryable(policy, failure)
}

/// An attempt that ran out of its own time is retried like UNAVAILABLE (the call's deadline
/// running out never gets this far); one that never reached the server is always safe to retry.
/// A failure no retry can change (the caller's own request body failed, metadata too large
/// for the server, a malformed response) is never retried, whatever its code.
fn retryable(policy: &RetryPolicy, failure: &Failure) -> bool {
    if failure.retry_cannot_help() {
        return false;
    }
    failure.never_sent
        || failure.kind == FailureKind::AttemptTimeout
        || policy.retryable_codes().contains(failure.code())
}

pub(crate) fn decide(policy: &RetryPolicy, failure: &Failure, progress: Progress) -> Decision {
    let out_of_time = |delay: Duration| progress.remaining.is_some_and(|left| left <= delay);

    // A stream the server refused before its application saw it is sent again at once, once,
    // without counting (gRFC A6 transparent retry).
    let refused_unseen = matches!(
        failure.kind,
        FailureKind::RefusedStream | FailureKind::GoAway
    ) && failure.never_sent;
    if refused_unseen
        && !progress.transparent_used
        && progress.replayable
        && !out_of_time(Duration::ZERO)
    {
        return Decision::Retry {
            delay: Duration::ZERO,
            transparent: true,
            restart_backoff: false,
        };
    }

    let code = failure.code();
    if policy.fail_fast_codes().contains(code) {
        return Decision::Stop(StopReason::FailFast);
    }
    if !retryable(policy, failure) {
        return Decision::Stop(StopReason::NotRetryable);
    }
    if failure.pushback == Pushback::Stop {
        return Decision::Stop(StopReason::Pushback);
    }
    if !progress.replayable {
        return Decision::Stop(StopReason::BufferLimit);
    }
    if progress.attempts >= policy.max_attempts() {
        return Decision::Stop(StopReason::AttemptsExhausted);
    }
    let (delay, restart_backoff) = match failure.pushback {
        Pushback::Wait(delay) => (delay.min(MAX_SERVER_DELAY), true),
        _ => match policy
            .backoff()
            .delay(progress.backoff_step.saturating_add(1), progress.random)
        {
            Some(delay) => (delay, false),
            None => return Decision::Stop(StopReason::BackoffExhausted),
        },
    };
    if out_of_time(delay) {
        return Decision::Stop(StopReason::Deadline);
    }
    Decision::Retry {
        // Capped only once the deadline has seen the delay as asked.
        delay: delay.min(LONGEST_BACKOFF),
        transparent: false,
        restart_backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn failure(code: Code, kind: FailureKind, never_sent: bool) -> Failure {
        Failure {
            status: Status::new(code, ""),
            kind,
            never_sent,
            pushback: Pushback::None,
        }
    }

    fn progress(attempts: u32) -> Progress {
        Progress {
            attempts,
            backoff_step: attempts - 1,
            transparent_used: false,
            replayable: true,
            remaining: None,
            random: 0.5,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn unavailable_is_retried_with_backoff() {
        let decision = decide(
            &policy(),
            &failure(Code::Unavailable, FailureKind::Unavailable, false),
            progress(1),
        );
        assert_eq!(
            decision,
            Decision::Retry {
                delay: Duration::from_millis(100),
                transparent: false,
                restart_backoff: false
            }
        );
    }

    #[test]
    fn fail_fast_beats_retryable() {
        let policy = RetryPolicy::builder()
            .retryable_codes([Code::Unimplemented, Code::PermissionDenied])
            .build()
            .unwrap();
        for code in [
            Code::Unimplemented,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            let decision = decide(
                &policy,
                &failure(code, FailureKind::ServerStatus, false),
                progress(1),
            );
            assert_eq!(decision, Decision::Stop(StopReason::FailFast));
        }
    }

    #[test]
    fn never_sent_is_retried_whatever_its_code() {
        let unreachable = failure(Code::Unknown, FailureKind::NetworkUnreachable, true);
        assert!(matches!(
            decide(&policy(), &unreachable, progress(1)),
            Decision::Retry { .. }
        ));
        assert_eq!(
            decide(&policy(), &unreachable, progress(5)),
            Decision::Stop(StopReason::AttemptsExhausted)
        );
        let maybe_sent = failure(Code::Unknown, FailureKind::ConnectionReset, false);
        assert_eq!(
            decide(&policy(), &maybe_sent, progress(1)),
            Decision::Stop(StopReason::NotRetryable)
        );
    }

    #[test]
    fn pushback_replaces_backoff_or_stops() {
        let mut pushed = failure(Code::Unavailable, FailureKind::Unavailable, false);
        pushed.pushback = Pushback::Wait(Duration::from_millis(1000));
        assert_eq!(
            decide(&policy(), &pushed, progress(3)),
            Decision::Retry {
                delay: Duration::from_secs(1),
                transparent: false,
                restart_backoff: true
            }
        );
        pushed.pushback = Pushback::Stop;
        assert_eq!(
            decide(&policy(), &pushed, progress(1)),
            Decision::Stop(StopReason::Pushback)
        );
    }

    #[test]
    fn a_server_delay_is_capped_without_a_deadline_and_stops_with_one() {
        let mut pushed = failure(Code::Unavailable, FailureKind::Unavailable, false);
        pushed.pushback = Pushback::Wait(Duration::MAX);
        assert_eq!(
            decide(&policy(), &pushed, progress(1)),
            Decision::Retry {
                delay: MAX_SERVER_DELAY,
                transparent: false,
                restart_backoff: true
            }
        );
        let mut with_deadline = progress(1);
        with_deadline.remaining = Some(Duration::from_secs(3600));
        assert_eq!(
            decide(&policy(), &pushed, with_deadline),
            Decision::Retry {
                delay: MAX_SERVER_DELAY,
                transparent: false,
                restart_backoff: true
            }
        );
        with_deadline.remaining = Some(Duration::from_secs(30));
        assert_eq!(
            decide(&policy(), &pushed, with_deadline),
            Decision::Stop(StopReason::Deadline)
        );
    }

    /// A delay the clock cannot add (`Duration::MAX`) was retried at once by the call future.
    #[test]
    fn a_backoff_too_long_for_the_clock_is_capped_at_the_far_future_not_dropped() {
        let forever = RetryPolicy::builder()
            .backoff(
                crate::backoff::ExponentialBackoff::new(Duration::MAX, Duration::MAX, 2.0).unwrap(),
            )
            .build()
            .unwrap();
        let unavailable = failure(Code::Unavailable, FailureKind::Unavailable, false);
        let Decision::Retry { delay, .. } = decide(&forever, &unavailable, progress(1)) else {
            panic!("retried after the backoff");
        };
        assert_eq!(delay, LONGEST_BACKOFF);
        assert!(tokio::time::Instant::now().checked_add(delay).is_some());
        // A deadline sees the delay as asked: even 11,000 years left is not enough.
        let mut with_deadline = progress(1);
        with_deadline.remaining = Some(Duration::from_secs(99_999_999 * 3600));
        assert_eq!(
            decide(&forever, &unavailable, with_deadline),
            Decision::Stop(StopReason::Deadline)
        );
    }

    #[test]
    fn what_no_retry_can_change_is_never_retried_whatever_the_policy() {
        let policy = RetryPolicy::builder()
            .retryable_codes([Code::Internal, Code::ResourceExhausted])
            .build()
            .unwrap();
        for (code, kind) in [
            (Code::Internal, FailureKind::RequestBodyFailed),
            (Code::ResourceExhausted, FailureKind::MetadataTooLarge),
            (Code::Internal, FailureKind::MalformedResponse),
        ] {
            assert_eq!(
                decide(&policy, &failure(code, kind, false), progress(1)),
                Decision::Stop(StopReason::NotRetryable),
                "{kind:?}"
            );
            assert!(!debits_throttle(&policy, &failure(code, kind, false)));
        }
    }

    #[test]
    fn the_throttle_is_debited_by_every_retryable_failure() {
        let policy = policy();
        let timeout = failure(Code::DeadlineExceeded, FailureKind::AttemptTimeout, false);
        let refused = failure(Code::Unavailable, FailureKind::ConnectionRefused, true);
        let unavailable = failure(Code::Unavailable, FailureKind::Unavailable, false);
        let denied = failure(Code::PermissionDenied, FailureKind::PermissionDenied, true);
        let internal = failure(Code::Internal, FailureKind::ServerStatus, false);
        assert!(debits_throttle(&policy, &timeout));
        assert!(debits_throttle(&policy, &refused));
        assert!(debits_throttle(&policy, &unavailable));
        assert!(!debits_throttle(&policy, &denied));
        assert!(!debits_throttle(&policy, &internal));
    }

    #[test]
    fn no_sleep_past_the_deadline() {
        let mut progress = progress(1);
        progress.remaining = Some(Duration::from_millis(50));
        let decision = decide(
            &policy(),
            &failure(Code::Unavailable, FailureKind::Unavailable, false),
            progress,
        );
        assert_eq!(decision, Decision::Stop(StopReason::Deadline));
    }

    #[test]
    fn transparent_retry_once_then_counted() {
        let refused = failure(Code::Unavailable, FailureKind::RefusedStream, true);
        let mut progress = progress(1);
        assert!(matches!(
            decide(&policy(), &refused, progress),
            Decision::Retry {
                transparent: true,
                ..
            }
        ));
        progress.transparent_used = true;
        assert!(matches!(
            decide(&policy(), &refused, progress),
            Decision::Retry {
                transparent: false,
                ..
            }
        ));
    }

    #[test]
    fn unreplayable_stops() {
        let unavailable = failure(Code::Unavailable, FailureKind::Unavailable, false);
        let mut p = progress(1);
        p.replayable = false;
        assert_eq!(
            decide(&policy(), &unavailable, p),
            Decision::Stop(StopReason::BufferLimit)
        );
    }
}
