//! Naming a transport failure by its cause: walk the error's source chain, looking at the types
//! the tonic/hyper/h2 stack produces, down to the operating system's `io::Error`.

use std::error::Error;
use std::io;

use crate::kind::FailureKind;

/// A transport failure, named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransportCause {
    pub(crate) kind: FailureKind,
    /// Whether the request certainly never reached the server's application.
    pub(crate) never_sent: bool,
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
        } else if err.is::<tonic::TimeoutExpired>() {
            found = Some(cause(FailureKind::TransportTimeout, false));
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
        } else if found.is_none() && looks_like_dns_failure(err) {
            found = Some(cause(FailureKind::DnsFailure, true));
        }
        source = err.source();
    }
    let mut named = found.unwrap_or(cause(FailureKind::Transport, false));
    if connecting {
        // A connection that was never established carried no request.
        named.never_sent = true;
        if named.kind == FailureKind::TransportTimeout {
            named.kind = FailureKind::ConnectTimeout;
        }
    }
    named
}

const fn cause(kind: FailureKind, never_sent: bool) -> TransportCause {
    TransportCause { kind, never_sent }
}

fn classify_h2(err: &h2::Error) -> Option<TransportCause> {
    if let Some(io) = err.get_io() {
        return classify_io(io, false);
    }
    let reason = err.reason()?;
    if err.is_go_away() {
        // A graceful GOAWAY (NO_ERROR) only fails the streams the server never processed: the
        // ones above its last stream id. An error GOAWAY fails every stream, processed or not.
        let graceful = err.is_remote() && reason == h2::Reason::NO_ERROR;
        return Some(cause(FailureKind::GoAway, graceful));
    }
    if reason == h2::Reason::REFUSED_STREAM {
        return Some(cause(FailureKind::RefusedStream, true));
    }
    if err.is_reset() {
        return Some(cause(FailureKind::StreamReset, false));
    }
    None
}

fn classify_hyper(err: &hyper::Error) -> Option<TransportCause> {
    if err.is_timeout() {
        // In hyper's HTTP/2 client the only timeout is the keep-alive ping's.
        Some(cause(FailureKind::KeepaliveTimeout, false))
    } else if err.is_canceled() {
        // hyper cancels a request it had queued but not yet written when the connection closes.
        Some(cause(FailureKind::StreamEnded, true))
    } else if err.is_incomplete_message() || err.is_closed() || err.is_body_write_aborted() {
        Some(cause(FailureKind::StreamEnded, false))
    } else {
        None
    }
}

fn classify_io(err: &io::Error, connecting: bool) -> Option<TransportCause> {
    use io::ErrorKind::*;
    let named = match err.kind() {
        ConnectionRefused => cause(FailureKind::ConnectionRefused, true),
        NetworkUnreachable | NetworkDown => cause(FailureKind::NetworkUnreachable, true),
        HostUnreachable => cause(FailureKind::HostUnreachable, true),
        AddrNotAvailable => cause(FailureKind::NoAddressReachable, true),
        TimedOut if connecting || is_connect_timeout(err) => {
            cause(FailureKind::ConnectTimeout, true)
        }
        TimedOut => cause(FailureKind::TransportTimeout, false),
        ConnectionReset | ConnectionAborted => cause(FailureKind::ConnectionReset, connecting),
        BrokenPipe if is_h2_eof(err) => cause(FailureKind::StreamEnded, connecting),
        BrokenPipe => cause(FailureKind::BrokenPipe, connecting),
        UnexpectedEof | NotConnected => cause(FailureKind::StreamEnded, connecting),
        // tokio-util's framed codec (under h2) reports a connection that closed inside a frame
        // as `Other` with this message: the stream ended mid-frame.
        Other if err.to_string() == "bytes remaining on stream" => {
            cause(FailureKind::StreamEnded, connecting)
        }
        _ if looks_like_dns_failure(err) => cause(FailureKind::DnsFailure, true),
        _ => {
            // An `io::Error` may wrap the real cause (hyper-util and tonic wrap theirs).
            return err.get_ref().and_then(|inner| {
                let named = classify_error(inner);
                (named.kind != FailureKind::Transport).then_some(named)
            });
        }
    };
    Some(named)
}

/// `Endpoint::connect_timeout` expired: tonic's connector (hyper-timeout) reports it as an
/// `io::Error` of kind `TimedOut` wrapping tokio's `Elapsed`, with no `ConnectError` around it.
/// (hyper-timeout's read and write timeouts carry no inner error, and tonic sets none.)
fn is_connect_timeout(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<tokio::time::error::Elapsed>())
}

/// h2 fails every open stream with a `BrokenPipe` of its own ("stream closed because of a broken
/// pipe") when the connection reaches end of file: the peer closed it mid-call. That is a stream
/// that ended, not a write into a closed socket (which carries the OS error, EPIPE).
fn is_h2_eof(err: &io::Error) -> bool {
    err.raw_os_error().is_none() && err.to_string().contains("closed because of a broken pipe")
}

/// Resolver failures have no error kind of their own: the standard library, hyper-util and
/// tokio report them as `io::ErrorKind::Other` (or `Uncategorized`) with the resolver's message.
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
    let message = err.to_string().to_ascii_lowercase();
    MARKERS.iter().any(|marker| message.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "test")
    }

    #[test]
    fn refused_inside_connect_error_is_never_sent() {
        let err = tonic::ConnectError(Box::new(io(io::ErrorKind::ConnectionRefused)));
        let named = classify_error(&err);
        assert_eq!(named, cause(FailureKind::ConnectionRefused, true));
    }

    #[test]
    fn reset_while_connecting_is_never_sent_but_after_is_maybe() {
        let connecting = tonic::ConnectError(Box::new(io(io::ErrorKind::ConnectionReset)));
        assert_eq!(
            classify_error(&connecting),
            cause(FailureKind::ConnectionReset, true)
        );
        let later = io(io::ErrorKind::ConnectionReset);
        assert_eq!(
            classify_error(&later),
            cause(FailureKind::ConnectionReset, false)
        );
    }

    #[test]
    fn h2_reasons() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(
            classify_error(&refused),
            cause(FailureKind::RefusedStream, true)
        );
    }

    #[test]
    fn a_connection_closed_inside_a_frame_is_a_stream_end() {
        let err = io::Error::other("bytes remaining on stream");
        assert_eq!(classify_error(&err), cause(FailureKind::StreamEnded, false));
    }

    #[test]
    fn dns_failure_by_message() {
        let err =
            io::Error::other("failed to lookup address information: Name or service not known");
        assert_eq!(classify_error(&err), cause(FailureKind::DnsFailure, true));
    }

    #[test]
    fn timeouts() {
        assert_eq!(
            classify_error(&tonic::TimeoutExpired(())),
            cause(FailureKind::TransportTimeout, false)
        );
        let connect = tonic::ConnectError(Box::new(io(io::ErrorKind::TimedOut)));
        assert_eq!(
            classify_error(&connect),
            cause(FailureKind::ConnectTimeout, true)
        );
    }

    #[test]
    fn tonic_connect_timeout_is_a_connect_timeout() {
        // What `Endpoint::connect_timeout` produces (observed with tonic 0.14.9).
        let elapsed = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                tokio::time::timeout(std::time::Duration::ZERO, std::future::pending::<()>()).await
            })
            .unwrap_err();
        let err = io::Error::new(io::ErrorKind::TimedOut, elapsed);
        assert_eq!(
            classify_error(&err),
            cause(FailureKind::ConnectTimeout, true)
        );
        // A bare timeout on an established connection is not.
        assert_eq!(
            classify_error(&io(io::ErrorKind::TimedOut)),
            cause(FailureKind::TransportTimeout, false)
        );
    }

    #[test]
    fn h2_end_of_file_is_a_stream_that_ended_not_a_broken_pipe() {
        // h2 fails open streams this way when the peer closes the connection (FIN) mid-call.
        let eof = io::Error::new(
            io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        );
        assert_eq!(classify_error(&eof), cause(FailureKind::StreamEnded, false));
        let epipe = io::Error::from_raw_os_error(32);
        assert_eq!(epipe.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(
            classify_error(&epipe),
            cause(FailureKind::BrokenPipe, false)
        );
    }

    #[test]
    fn unknown_errors_are_plain_transport() {
        let err = io::Error::other("something else");
        assert_eq!(classify_error(&err), cause(FailureKind::Transport, false));
        let connect = tonic::ConnectError("weird".into());
        assert_eq!(
            classify_error(&connect),
            cause(FailureKind::Transport, true)
        );
    }
}
