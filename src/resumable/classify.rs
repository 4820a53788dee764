//! Deciding whether a stream that ended with an error status is reopened: by the cause in the
//! status's source chain first (the same classifier as the layer's), then by its code.

use std::error::Error;

use tonic::{Code, Status};

use crate::classify::{classify_error, kind_of_status};
use crate::history::StopReason;
use crate::kind::FailureKind;
use crate::resumable::policy::ResumePolicy;

/// The start of tonic's message for a stream that ended without `grpc-status` trailers (an
/// HTTP/2 stream closed cleanly, or reset with NO_ERROR/CANCEL, before the final status).
const MISSING_TRAILERS: &str = "protocol error: missing grpc-status trailer";

/// What to do about a stream that ended with an error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Reopen the call: the failure is of this kind.
    Reopen(FailureKind),
    /// End the stream with the status, for this reason; the failure is of this kind.
    End(StopReason, FailureKind),
}

/// Classifies `status`, which ended a stream (or an attempt to open one).
///
/// In this order: a fail-fast code ends the stream; a transport failure named from the source
/// chain reopens it; a stream that ended without trailers reopens it; a retryable code reopens
/// it; anything else (a status the server sent on purpose) ends it.
pub(crate) fn classify_status(status: &Status, policy: &ResumePolicy) -> Verdict {
    let code = status.code();
    if policy.fail_fast.contains(code) {
        return Verdict::End(StopReason::FailFast, kind_of_status(code, status.message()));
    }
    if let Some(kind) = transport_kind(status) {
        // The caller's own request failing, metadata the server refuses: no reopen changes it.
        if kind.retry_cannot_help() {
            return Verdict::End(StopReason::NotRetryable, kind);
        }
        return Verdict::Reopen(kind);
    }
    if code == Code::Unknown && status.message().starts_with(MISSING_TRAILERS) {
        return Verdict::Reopen(FailureKind::StreamEnded);
    }
    let kind = kind_of_status(code, status.message());
    if policy.retryable.contains(code) {
        Verdict::Reopen(kind)
    } else {
        Verdict::End(StopReason::NotRetryable, kind)
    }
}

/// The transport failure behind `status`, if its source chain holds one: a kind the classifier
/// names, or an error of the transport stack (tonic, hyper, h2, io) of no known cause.
fn transport_kind(status: &Status) -> Option<FailureKind> {
    let source = status.source()?;
    let named = classify_error(source);
    if named.kind != FailureKind::Transport {
        return Some(named.kind);
    }
    let mut err = Some(source);
    while let Some(e) = err {
        if e.is::<tonic::transport::Error>()
            || e.is::<hyper::Error>()
            || e.is::<h2::Error>()
            || e.is::<std::io::Error>()
            || e.is::<tonic::ConnectError>()
        {
            return Some(FailureKind::Transport);
        }
        err = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Arc;

    use super::*;

    fn with_source(
        code: Code,
        message: &str,
        source: impl Error + Send + Sync + 'static,
    ) -> Status {
        let mut status = Status::new(code, message);
        status.set_source(Arc::new(source));
        status
    }

    #[test]
    fn transport_ends_reopen_whatever_the_code() {
        let policy = ResumePolicy::default();
        let reset = with_source(
            Code::Unknown,
            "h2 protocol error: error reading a body from connection",
            io::Error::from(io::ErrorKind::ConnectionReset),
        );
        assert_eq!(
            classify_status(&reset, &policy),
            Verdict::Reopen(FailureKind::ConnectionReset)
        );
        let refused = with_source(
            Code::Unavailable,
            "tcp connect error",
            tonic::ConnectError(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused))),
        );
        assert_eq!(
            classify_status(&refused, &policy),
            Verdict::Reopen(FailureKind::ConnectionRefused)
        );
        let odd = with_source(Code::Internal, "odd", io::Error::other("odd"));
        assert_eq!(
            classify_status(&odd, &policy),
            Verdict::Reopen(FailureKind::Transport)
        );
    }

    #[test]
    fn missing_trailers_is_a_stream_end() {
        let status = Status::unknown(
            "protocol error: missing grpc-status trailer, stream was terminated without a final \
             status (possible truncation by a proxy or load balancer)",
        );
        assert_eq!(
            classify_status(&status, &ResumePolicy::default()),
            Verdict::Reopen(FailureKind::StreamEnded)
        );
    }

    #[test]
    fn server_statuses_end_unless_retryable() {
        let policy = ResumePolicy::default();
        assert_eq!(
            classify_status(&Status::invalid_argument("bad"), &policy),
            Verdict::End(StopReason::NotRetryable, FailureKind::ServerStatus)
        );
        assert_eq!(
            classify_status(&Status::permission_denied("no"), &policy),
            Verdict::End(StopReason::FailFast, FailureKind::PermissionDenied)
        );
        assert_eq!(
            classify_status(&Status::unavailable("later"), &policy),
            Verdict::Reopen(FailureKind::Unavailable)
        );
        assert_eq!(
            classify_status(&Status::unknown("boom"), &policy),
            Verdict::End(StopReason::NotRetryable, FailureKind::ServerStatus)
        );
        // A user error type as source is not a transport failure.
        let custom = with_source(Code::Aborted, "x", std::fmt::Error);
        assert!(matches!(
            classify_status(&custom, &policy),
            Verdict::End(StopReason::NotRetryable, _)
        ));
    }

    #[test]
    fn fail_fast_wins_over_retryable() {
        let policy = ResumePolicy::builder()
            .retryable_codes([Code::Unavailable, Code::PermissionDenied, Code::Aborted])
            .build()
            .unwrap();
        assert!(matches!(
            classify_status(&Status::permission_denied("no"), &policy),
            Verdict::End(StopReason::FailFast, _)
        ));
        assert!(matches!(
            classify_status(&Status::aborted("again"), &policy),
            Verdict::Reopen(FailureKind::ServerStatus)
        ));
    }
}
