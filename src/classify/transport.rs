//! Naming a transport failure by its cause: walk the error's source chain, looking at the types
//! the tonic/hyper/h2 stack produces, down to the operating system's `io::Error`.
//!
//! Types first: `io::ErrorKind`, `hyper::Error`'s predicates, `h2::Error`'s reason, initiator
//! and GOAWAY/RST_STREAM flags, tonic's `ConnectError` and `TimeoutExpired`, tower's `Elapsed`.
//! Text is read in three places only, each where the type that would tell is private (see
//! [`is_codec_eof`], [`is_header_list_too_large`], [`looks_like_dns_failure`]).

use std::error::Error;
use std::io;

use tonic::Code;

use crate::kind::FailureKind;

/// A transport failure, named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransportCause {
    pub(crate) kind: FailureKind,
    /// Whether the request certainly never reached the server's application: always
    /// `kind.never_sent()` (what is known about *when* it failed is part of the kind).
    pub(crate) never_sent: bool,
    /// The code gRPC clients give this failure, when it is not the one tonic gives it: `None`
    /// keeps tonic's.
    pub(crate) code: Option<Code>,
}

impl TransportCause {
    const fn new(kind: FailureKind, code: Option<Code>) -> TransportCause {
        TransportCause {
            kind,
            never_sent: kind.never_sent(),
            code,
        }
    }

    /// A failure of the connection before any response header: UNAVAILABLE, as grpc-go and
    /// grpc-java report it (tonic says UNKNOWN "transport error", or CANCELLED).
    const fn unavailable(kind: FailureKind) -> TransportCause {
        TransportCause::new(kind, Some(Code::Unavailable))
    }

    /// A failure whose code tonic already gets right.
    const fn as_tonic_says(kind: FailureKind) -> TransportCause {
        TransportCause::new(kind, None)
    }
}

/// Names the failure behind `error` by walking its whole source chain.
///
/// The deepest recognisable cause wins for the kind (an `io::Error` says more than the hyper error
/// that wraps it), but what the outer layers know about *when* it happened is kept: an error
/// inside tonic's `ConnectError` happened while connecting, so nothing of the request was sent,
/// whatever the operating system called it.
pub(crate) fn classify_error(error: &(dyn Error + 'static)) -> TransportCause {
    let mut connecting = false;
    let mut found: Option<TransportCause> = None;
    let mut source = Some(error);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            connecting = true;
        } else if err.is::<tower::timeout::error::Elapsed>() {
            // A `tower::timeout::Timeout` under the layer: this attempt ran out of its time.
            found = Some(TransportCause::new(
                FailureKind::AttemptTimeout,
                Some(Code::DeadlineExceeded),
            ));
        } else if err.is::<tonic::TimeoutExpired>() {
            found = Some(TransportCause::as_tonic_says(FailureKind::TransportTimeout));
        } else if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if let Some(named) = classify_h2(h2) {
                found = Some(named);
            }
        } else if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if let Some(named) = classify_hyper(hyper) {
                found = Some(named);
            }
        } else if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(named) = classify_io(io, connecting) {
                found = Some(named);
            }
        } else if found.is_none() && connecting && looks_like_dns_failure(err) {
            found = Some(TransportCause::unavailable(FailureKind::DnsFailure));
        }
        source = err.source();
    }
    let named = found.unwrap_or(TransportCause::as_tonic_says(FailureKind::Transport));
    if connecting {
        // A connection that was never established carried no request.
        return TransportCause::unavailable(match named.kind {
            FailureKind::TransportTimeout | FailureKind::ConnectTimeout => {
                FailureKind::ConnectTimeout
            }
            FailureKind::ConnectionRefused
            | FailureKind::NetworkUnreachable
            | FailureKind::HostUnreachable
            | FailureKind::NoAddressReachable
            | FailureKind::DnsFailure => named.kind,
            FailureKind::ConnectionReset
            | FailureKind::BrokenPipe
            | FailureKind::StreamEnded
            | FailureKind::ClosedBeforeSent => FailureKind::ClosedBeforeSent,
            _ => FailureKind::ConnectFailed,
        });
    }
    named
}

fn classify_h2(err: &h2::Error) -> Option<TransportCause> {
    if let Some(io) = err.get_io() {
        return classify_io(io, false);
    }
    let reason = err.reason()?;
    if err.is_go_away() {
        return Some(classify_go_away(err, reason));
    }
    if err.is_reset() && !err.is_remote() {
        // This side reset the stream. hyper does it for the caller (`Initiator::User`) when the
        // request body fails; h2 itself (`Initiator::Library`) when the server's frames break
        // the protocol. Either way tonic's code (from the reason) stands.
        let kind = if err.is_library() {
            FailureKind::LocalProtocolError
        } else {
            FailureKind::RequestBodyFailed
        };
        return Some(TransportCause::as_tonic_says(kind));
    }
    // A reset the server sent, or a bare reason (hyper reports an `RST_STREAM` it saw while
    // writing the request body as `h2::Error::from(reason)`).
    if reason == h2::Reason::REFUSED_STREAM {
        return Some(TransportCause::unavailable(FailureKind::RefusedStream));
    }
    Some(TransportCause::new(
        FailureKind::StreamReset,
        Some(code_of_reset(reason)),
    ))
}

/// The code of a stream the server reset with `reason`, as grpc-go maps it (gRPC's
/// PROTOCOL-HTTP2.md "Errors"). tonic agrees for every named reason but two: it gives UNKNOWN
/// to `STREAM_CLOSED` and `HTTP_1_1_REQUIRED`, which grpc-go maps to INTERNAL. A code no
/// specification names stays UNKNOWN in both.
fn code_of_reset(reason: h2::Reason) -> Code {
    match reason {
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        reason if u32::from(reason) <= u32::from(h2::Reason::HTTP_1_1_REQUIRED) => Code::Internal,
        _ => Code::Unknown,
    }
}

/// A GOAWAY fails the streams the server never processed (above its last stream id), and every
/// stream when it carries an error: the connection is gone, so the call is UNAVAILABLE whatever
/// the reason (tonic maps the reason as if it were a stream's: INTERNAL for NO_ERROR).
fn classify_go_away(err: &h2::Error, reason: h2::Reason) -> TransportCause {
    if !err.is_remote() {
        // This side closed the connection: h2 found the server's frames invalid.
        return TransportCause::as_tonic_says(if err.is_library() {
            FailureKind::LocalProtocolError
        } else {
            FailureKind::Transport
        });
    }
    let kind = match reason {
        h2::Reason::NO_ERROR => FailureKind::GoAway,
        h2::Reason::ENHANCE_YOUR_CALM if is_header_list_too_large(err) => {
            // The same request fails the same way on any connection: tonic's
            // RESOURCE_EXHAUSTED stands, which no default policy retries.
            return TransportCause::as_tonic_says(FailureKind::MetadataTooLarge);
        }
        h2::Reason::ENHANCE_YOUR_CALM => FailureKind::GoAwayEnhanceYourCalm,
        h2::Reason::PROTOCOL_ERROR => FailureKind::GoAwayProtocolError,
        _ => FailureKind::GoAwayError,
    };
    TransportCause::unavailable(kind)
}

/// The h2 server (hyper's and tonic's) answers a request header list far above its limit with
/// `GOAWAY(ENHANCE_YOUR_CALM)` and the debug data `header_list_way_too_large`. `h2::Error` keeps
/// the debug data private (no accessor); its `Display` is the only way to it.
fn is_header_list_too_large(err: &h2::Error) -> bool {
    err.to_string().contains("header_list_way_too_large")
}

fn classify_hyper(err: &hyper::Error) -> Option<TransportCause> {
    if err.is_timeout() {
        // In hyper's HTTP/2 client the only timeout is the keep-alive ping's (tonic agrees:
        // UNAVAILABLE).
        Some(TransportCause::unavailable(FailureKind::KeepaliveTimeout))
    } else if err.is_canceled() || err.is_closed() {
        // hyper cancels a request it had queued but not yet written when the connection
        // closes, and refuses one for a connection already closed (tonic says CANCELLED).
        Some(TransportCause::unavailable(FailureKind::ClosedBeforeSent))
    } else if err.is_body_write_aborted() {
        // The request body's sender gave up: a failure on the client.
        Some(TransportCause::as_tonic_says(
            FailureKind::RequestBodyFailed,
        ))
    } else if err.is_incomplete_message() {
        Some(TransportCause::unavailable(FailureKind::StreamEnded))
    } else {
        None
    }
}

fn classify_io(err: &io::Error, connecting: bool) -> Option<TransportCause> {
    use io::ErrorKind::*;
    let kind = match err.kind() {
        ConnectionRefused => FailureKind::ConnectionRefused,
        NetworkUnreachable | NetworkDown => FailureKind::NetworkUnreachable,
        HostUnreachable => FailureKind::HostUnreachable,
        AddrNotAvailable => FailureKind::NoAddressReachable,
        TimedOut if connecting || is_connect_timeout(err) => FailureKind::ConnectTimeout,
        TimedOut => return Some(TransportCause::as_tonic_says(FailureKind::TransportTimeout)),
        ConnectionReset | ConnectionAborted => FailureKind::ConnectionReset,
        // The operating system's EPIPE: a write into a connection the peer had closed.
        BrokenPipe if err.raw_os_error().is_some() => FailureKind::BrokenPipe,
        // A library's broken pipe: h2 fails every open stream with one of its own ("stream
        // closed because of a broken pipe") when the connection reaches end of file, and keeps
        // any other io error as its kind and message only (`h2::proto::Error::Io`), so an OS
        // error that went through h2 has no code left. Either way the connection ended.
        BrokenPipe | UnexpectedEof | NotConnected => FailureKind::StreamEnded,
        Other if is_codec_eof(err) => FailureKind::StreamEnded,
        _ if looks_like_dns_failure(err) => FailureKind::DnsFailure,
        _ => {
            // An `io::Error` may wrap the real cause (hyper-util and tonic wrap theirs).
            return err.get_ref().and_then(|inner| {
                let named = classify_error(inner);
                (named.kind != FailureKind::Transport).then_some(named)
            });
        }
    };
    Some(TransportCause::unavailable(kind))
}

/// `Endpoint::connect_timeout` expired: tonic's connector (hyper-timeout) reports it as an
/// `io::Error` of kind `TimedOut` wrapping tokio's `Elapsed`, with no `ConnectError` around it.
/// (hyper-timeout's read and write timeouts carry no inner error, and tonic sets none.)
fn is_connect_timeout(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<tokio::time::error::Elapsed>())
}

/// tokio-util's framed codec (under h2) reports a connection that closed inside a frame as
/// `io::Error::other("bytes remaining on stream")`: the payload is the standard library's private
/// string error type, and no OS code is set, so its message is all there is to recognise it by.
fn is_codec_eof(err: &io::Error) -> bool {
    err.raw_os_error().is_none() && err.to_string() == "bytes remaining on stream"
}

/// Resolver failures have no type or error kind of their own: hyper-util's resolver wraps them
/// in its `ConnectError` "dns error" (a type it does not export), around the standard library's
/// `io::Error` of the unstable kind `Uncategorized` (its payload a private string type) with the
/// resolver's message. So they are recognised by message, and only inside tonic's
/// `ConnectError` (where a resolver runs) or as an `io::Error` without an OS code.
fn looks_like_dns_failure(err: &(dyn Error + 'static)) -> bool {
    const MARKERS: [&str; 7] = [
        "failed to lookup address",
        "name or service not known",
        "nodename nor servname",
        "no such host",
        "temporary failure in name resolution",
        "dns error",
        "no address associated with hostname",
    ];
    if err
        .downcast_ref::<io::Error>()
        .is_some_and(|io| io.raw_os_error().is_some())
    {
        return false;
    }
    let message = err.to_string().to_ascii_lowercase();
    MARKERS.iter().any(|marker| message.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "test")
    }

    fn kind_of(err: &(dyn Error + 'static)) -> FailureKind {
        classify_error(err).kind
    }

    #[test]
    fn refused_inside_connect_error_is_never_sent_and_unavailable() {
        let err = tonic::ConnectError(Box::new(io(io::ErrorKind::ConnectionRefused)));
        let named = classify_error(&err);
        assert_eq!(named.kind, FailureKind::ConnectionRefused);
        assert!(named.never_sent);
        assert_eq!(named.code, Some(Code::Unavailable));
    }

    #[test]
    fn reset_while_connecting_is_closed_before_sent_but_after_is_maybe_sent() {
        let connecting = tonic::ConnectError(Box::new(io(io::ErrorKind::ConnectionReset)));
        let named = classify_error(&connecting);
        assert_eq!(named.kind, FailureKind::ClosedBeforeSent);
        assert!(named.never_sent);
        let later = classify_error(&io(io::ErrorKind::ConnectionReset));
        assert_eq!(later.kind, FailureKind::ConnectionReset);
        assert!(!later.never_sent);
        assert_eq!(later.code, Some(Code::Unavailable));
    }

    #[test]
    fn a_bare_h2_reason_maps_as_a_received_reset() {
        let refused = classify_error(&h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(refused.kind, FailureKind::RefusedStream);
        assert!(refused.never_sent);
        assert_eq!(refused.code, Some(Code::Unavailable));
        let cancel = classify_error(&h2::Error::from(h2::Reason::CANCEL));
        assert_eq!(cancel.kind, FailureKind::StreamReset);
        assert_eq!(cancel.code, Some(Code::Cancelled));
    }

    #[test]
    fn reset_reasons_map_as_grpc_go_maps_them() {
        use h2::Reason;
        for (reason, code) in [
            (Reason::NO_ERROR, Code::Internal),
            (Reason::PROTOCOL_ERROR, Code::Internal),
            (Reason::INTERNAL_ERROR, Code::Internal),
            (Reason::FLOW_CONTROL_ERROR, Code::Internal),
            (Reason::SETTINGS_TIMEOUT, Code::Internal),
            (Reason::STREAM_CLOSED, Code::Internal),
            (Reason::FRAME_SIZE_ERROR, Code::Internal),
            (Reason::REFUSED_STREAM, Code::Unavailable),
            (Reason::CANCEL, Code::Cancelled),
            (Reason::COMPRESSION_ERROR, Code::Internal),
            (Reason::CONNECT_ERROR, Code::Internal),
            (Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
            (Reason::INADEQUATE_SECURITY, Code::PermissionDenied),
            (Reason::HTTP_1_1_REQUIRED, Code::Internal),
            (Reason::from(0xff), Code::Unknown),
        ] {
            assert_eq!(code_of_reset(reason), code, "{reason:?}");
        }
    }

    #[test]
    fn a_connection_closed_inside_a_frame_is_a_stream_end() {
        let err = io::Error::other("bytes remaining on stream");
        assert_eq!(kind_of(&err), FailureKind::StreamEnded);
        // The same words from the operating system would not be tokio-util's.
        assert_eq!(kind_of(&io::Error::other("other")), FailureKind::Transport);
    }

    #[test]
    fn dns_failure_inside_a_connect_error() {
        // The shape of hyper-util's resolver failure: its private `ConnectError` "dns error"
        // around the standard library's message.
        let std_error =
            io::Error::other("failed to lookup address information: Name or service not known");
        let named = classify_error(&tonic::ConnectError(Box::new(std_error)));
        assert_eq!(named.kind, FailureKind::DnsFailure);
        assert!(named.never_sent);
        #[derive(Debug)]
        struct HyperUtilConnectError;
        impl std::fmt::Display for HyperUtilConnectError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dns error")
            }
        }
        impl Error for HyperUtilConnectError {}
        let named = classify_error(&tonic::ConnectError(Box::new(HyperUtilConnectError)));
        assert_eq!(named.kind, FailureKind::DnsFailure);
        // An OS error never reads as a resolver's, whatever its text.
        assert_ne!(
            kind_of(&tonic::ConnectError(Box::new(
                io::Error::from_raw_os_error(1)
            ))),
            FailureKind::DnsFailure
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            kind_of(&tonic::TimeoutExpired(())),
            FailureKind::TransportTimeout
        );
        let connect = classify_error(&tonic::ConnectError(Box::new(io(io::ErrorKind::TimedOut))));
        assert_eq!(connect.kind, FailureKind::ConnectTimeout);
        assert!(connect.never_sent);
        assert_eq!(connect.code, Some(Code::Unavailable));
    }

    fn elapsed() -> tokio::time::error::Elapsed {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(std::time::Duration::ZERO, std::future::pending::<()>()).await
            })
            .unwrap_err()
    }

    #[test]
    fn tonic_connect_timeout_is_a_connect_timeout() {
        // What `Endpoint::connect_timeout` produces (observed with tonic 0.14.9).
        let err = io::Error::new(io::ErrorKind::TimedOut, elapsed());
        assert_eq!(kind_of(&err), FailureKind::ConnectTimeout);
        // A bare timeout on an established connection is not.
        assert_eq!(
            kind_of(&io(io::ErrorKind::TimedOut)),
            FailureKind::TransportTimeout
        );
    }

    #[test]
    fn a_tower_timeout_under_the_layer_is_an_attempt_timeout() {
        let named = classify_error(&tower::timeout::error::Elapsed::new());
        assert_eq!(named.kind, FailureKind::AttemptTimeout);
        assert_eq!(named.code, Some(Code::DeadlineExceeded));
        assert!(!named.never_sent);
    }

    #[test]
    fn h2_end_of_file_is_a_stream_that_ended_not_a_broken_pipe() {
        // h2 fails open streams this way when the peer closes the connection (FIN) mid-call.
        let eof = io::Error::new(
            io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        );
        assert_eq!(kind_of(&eof), FailureKind::StreamEnded);
        let epipe = io::Error::from_raw_os_error(32);
        assert_eq!(epipe.kind(), io::ErrorKind::BrokenPipe);
        let named = classify_error(&epipe);
        assert_eq!(named.kind, FailureKind::BrokenPipe);
        assert_eq!(named.code, Some(Code::Unavailable));
    }

    #[test]
    fn unknown_errors_are_plain_transport_with_tonics_code() {
        let named = classify_error(&io::Error::other("something else"));
        assert_eq!(named.kind, FailureKind::Transport);
        assert_eq!(named.code, None);
        let connect = classify_error(&tonic::ConnectError("weird".into()));
        assert_eq!(connect.kind, FailureKind::ConnectFailed);
        assert!(connect.never_sent);
    }

    /// Every cause the classifier can name, from errors of the types the stack produces.
    fn every_cause() -> Vec<TransportCause> {
        use io::ErrorKind::*;
        let mut errors: Vec<Box<dyn Error + Send + Sync>> = vec![
            Box::new(tonic::TimeoutExpired(())),
            Box::new(tower::timeout::error::Elapsed::new()),
            Box::new(io::Error::new(TimedOut, elapsed())),
            Box::new(io::Error::other("bytes remaining on stream")),
            Box::new(io::Error::other("failed to lookup address information")),
            Box::new(io::Error::from_raw_os_error(32)),
            Box::new(tonic::ConnectError("weird".into())),
            Box::new(io::Error::other(tonic::ConnectError("weird".into()))),
        ];
        for kind in [
            ConnectionRefused,
            NetworkUnreachable,
            NetworkDown,
            HostUnreachable,
            AddrNotAvailable,
            TimedOut,
            ConnectionReset,
            ConnectionAborted,
            BrokenPipe,
            UnexpectedEof,
            NotConnected,
            Other,
        ] {
            errors.push(Box::new(io(kind)));
            errors.push(Box::new(tonic::ConnectError(Box::new(io(kind)))));
        }
        for reason in 0..16 {
            errors.push(Box::new(h2::Error::from(h2::Reason::from(reason))));
        }
        errors.iter().map(|err| classify_error(&**err)).collect()
    }

    #[test]
    fn never_sent_is_the_kinds_own() {
        for named in every_cause() {
            assert_eq!(named.never_sent, named.kind.never_sent(), "{named:?}");
            // A failure before any response header that the request may have reached the
            // server with is UNAVAILABLE; a never-sent one too.
            if named.never_sent {
                assert_eq!(named.code, Some(Code::Unavailable), "{named:?}");
            }
        }
    }
}
