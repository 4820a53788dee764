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
    // An attempt that ran out of its own time is retried like UNAVAILABLE: the call's deadline
    // running out never gets here.
    let retryable = failure.never_sent
        || failure.kind == FailureKind::AttemptTimeout
        || policy.retryable_codes().contains(code);
    if !retryable {
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
        Pushback::Wait(delay) => (delay, true),
        _ => match policy
            .backoff()
            .delay(progress.backoff_step + 1, progress.random)
        {
            Some(delay) => (delay, false),
            None => return Decision::Stop(StopReason::BackoffExhausted),
        },
    };
    if out_of_time(delay) {
        return Decision::Stop(StopReason::Deadline);
    }
    Decision::Retry {
        delay,
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
