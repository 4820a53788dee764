//! Classifying one attempt, in two phases like tower-http's classifiers: the response head
//! decides (Trailers-Only `grpc-status`, then the HTTP status, else the call is committed), and a
//! transport error is named by its cause.

mod status;
mod transport;

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use tonic::{Code, Status};

use crate::kind::FailureKind;

pub(crate) use self::status::{
    GRPC_STATUS, Pushback, drop_undecodable_details, pushback, trailers_only_status,
};
pub(crate) use self::transport::classify_error;

/// One attempt's outcome, as far as retrying is concerned.
#[derive(Debug)]
pub(crate) enum Classified<R> {
    /// The response passes through: OK, or headers that commit the call.
    Pass(R),
    /// The attempt failed before the call committed.
    Failed(Failure),
}

/// A failed attempt: the status the caller would see, and what is known about why.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: Status,
    pub(crate) kind: FailureKind,
    /// The request certainly never reached the server's application.
    pub(crate) never_sent: bool,
    /// The server's `grpc-retry-pushback-ms`, if any.
    pub(crate) pushback: Pushback,
}

impl Failure {
    pub(crate) fn code(&self) -> Code {
        self.status.code()
    }

    /// Retrying the same request cannot change this outcome, whatever the policy says about its
    /// code (see [`FailureKind::retry_cannot_help`]).
    // Read by the retry decision (policy/decide.rs), which is wired separately.
    #[allow(dead_code)]
    pub(crate) fn retry_cannot_help(&self) -> bool {
        self.kind.retry_cannot_help()
    }

    /// A failure this crate produced itself (timeouts, deadlines), not one a peer sent.
    pub(crate) fn local(code: Code, kind: FailureKind, message: String) -> Failure {
        Failure {
            status: Status::new(code, message),
            kind,
            never_sent: false,
            pushback: Pushback::None,
        }
    }
}

/// Whether a response head carries `grpc-status`. A head holds a few headers: comparing their
/// names costs less than hashing one.
fn has_grpc_status(headers: &http::HeaderMap) -> bool {
    if headers.len() > 8 {
        return headers.contains_key(&GRPC_STATUS);
    }
    headers.keys().any(|name| *name == GRPC_STATUS)
}

/// Classifies the response head of an attempt.
pub(crate) fn classify_response<B>(
    mut response: http::Response<B>,
) -> Classified<http::Response<B>> {
    match classify_head(&mut response) {
        None => Classified::Pass(response),
        Some(failure) => Classified::Failed(failure),
    }
}

/// Classifies the response head of an attempt in place: `None` when it passes. The response is
/// not moved: it is large, and the happy path then copies it once less.
pub(crate) fn classify_head<B>(response: &mut http::Response<B>) -> Option<Failure> {
    let headers = response.headers();
    if has_grpc_status(headers) {
        if headers.get_all(&GRPC_STATUS).iter().nth(1).is_some() {
            return Some(malformed(headers));
        }
        return match trailers_only_status(headers) {
            None => {
                // Details mean nothing on OK; tonic's client panics on ones that are not base64.
                drop_undecodable_details(response.headers_mut());
                None
            }
            Some(status) => {
                let kind = kind_of_status(status.code(), status.message());
                let pushback = pushback(headers, &status);
                Some(Failure {
                    status,
                    kind,
                    never_sent: kind.never_sent(),
                    pushback,
                })
            }
        };
    }
    let http_status = response.status();
    if http_status == http::StatusCode::OK {
        return None;
    }
    let code = crate::code::code_from_http_status(http_status);
    // The same message tonic gives such a response, so the caller sees no difference.
    let message = format!(
        "grpc-status header missing, mapped from HTTP status code {}",
        http_status.as_u16()
    );
    let kind = if http_status == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        // What an HTTP/2 server (h2's, under tonic) answers to a request whose header list is
        // above its limit, but not far above (see `FailureKind::MetadataTooLarge`).
        FailureKind::MetadataTooLarge
    } else {
        kind_of_status(code, "")
    };
    Some(Failure {
        status: Status::new(code, message),
        kind,
        never_sent: kind.never_sent(),
        pushback: Pushback::None,
    })
}

/// A Trailers-Only head with more than one `grpc-status`: which one the server meant is
/// unknowable. INTERNAL, as grpc-go gives a `grpc-status` it cannot read ("malformed
/// grpc-status"), and never retried ([`Failure::retry_cannot_help`]): the server's answer is not
/// known, so neither is whether retrying is welcome (the rule gRFC A6 clients apply to a
/// repeated pushback).
fn malformed(headers: &http::HeaderMap) -> Failure {
    let count = headers.get_all(&GRPC_STATUS).iter().count();
    Failure {
        status: Status::internal(format!(
            "malformed response: grpc-status appears {count} times in the response head"
        )),
        kind: FailureKind::MalformedResponse,
        never_sent: false,
        pushback: Pushback::None,
    }
}

/// Classifies an error the inner service returned instead of a response.
///
/// The code and message are tonic's (what the caller would have seen without the layer), except
/// where gRPC clients disagree with tonic: a connection that failed before any response header
/// is UNAVAILABLE, a stream the server reset has the code of its reason, a lower
/// `tower::timeout::Timeout` is DEADLINE_EXCEEDED. The source chain is the error, untouched.
pub(crate) fn classify_service_error(error: Box<dyn Error + Send + Sync>) -> Failure {
    let named = classify_error(&*error);
    let status = match error.downcast::<Status>() {
        // A status an inner service made on purpose: it stands as it is.
        Ok(status) => *status,
        Err(error) => match named.code {
            Some(code) => status_with_code(error, code),
            None => Status::from_error(error),
        },
    };
    let kind = if named.kind == FailureKind::Transport && status.source().is_none() {
        kind_of_status(status.code(), status.message())
    } else {
        named.kind
    };
    Failure {
        status,
        kind,
        never_sent: kind.never_sent(),
        pushback: Pushback::None,
    }
}

/// tonic's status for `error`, with `code` instead of tonic's, and `error` as its source.
fn status_with_code(error: Box<dyn Error + Send + Sync>, code: Code) -> Status {
    let error: Arc<dyn Error + Send + Sync> = Arc::from(error);
    // tonic takes the error by value; it reads the same chain through a transparent handle.
    let tonic = Status::from_error(Box::new(Transparent(Arc::clone(&error))));
    let message = match error.downcast_ref::<h2::Error>() {
        // tonic names a bare h2 error (seen only at the top) this way.
        Some(h2) => format!("h2 protocol error: {h2}"),
        None => tonic.message().to_owned(),
    };
    let mut status = Status::with_details_and_metadata(
        code,
        message,
        bytes::Bytes::copy_from_slice(tonic.details()),
        tonic.metadata().clone(),
    );
    status.set_source(error);
    status
}

/// An error seen through a shared handle: the handle's first source is the error itself, so a
/// walk of the chain meets every error of it, the first included.
struct Transparent(Arc<dyn Error + Send + Sync>);

impl fmt::Debug for Transparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Transparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Error for Transparent {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// Names the failure behind a status the server sent.
pub(crate) fn kind_of_status(code: Code, message: &str) -> FailureKind {
    match code {
        Code::Unimplemented if message.starts_with("unknown service") => {
            FailureKind::UnknownService
        }
        // grpc-go says "unknown method"; grpc-java and C-core say "Method not found".
        Code::Unimplemented
            if message.starts_with("unknown method") || message.starts_with("Method not found") =>
        {
            FailureKind::UnknownMethod
        }
        Code::Unimplemented => FailureKind::Unimplemented,
        Code::PermissionDenied => FailureKind::PermissionDenied,
        Code::Unauthenticated => FailureKind::Unauthenticated,
        Code::Unavailable => FailureKind::Unavailable,
        Code::ResourceExhausted => FailureKind::ResourceExhausted,
        Code::DeadlineExceeded => FailureKind::DeadlineExceeded,
        _ => FailureKind::ServerStatus,
    }
}

/// The classifier, for code that makes its own calls outside the layer (such as the
/// `tonic-retry-diagnose` crate): the same names the layer gives the attempts of a call.
impl FailureKind {
    /// Names the transport failure behind `error` by walking its source chain, as the layer does
    /// for a failed attempt: [`FailureKind::Transport`] when no cause in the chain is known.
    ///
    /// An error met while connecting says more wrapped in a [`tonic::ConnectError`]: then nothing
    /// of a request was sent, whatever the operating system called the failure.
    ///
    /// ```
    /// use std::io;
    /// use tonic_retry::FailureKind;
    ///
    /// let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    /// assert_eq!(FailureKind::of_error(&refused), FailureKind::ConnectionRefused);
    ///
    /// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
    /// let while_connecting = tonic::ConnectError(Box::new(reset));
    /// assert_eq!(
    ///     FailureKind::of_error(&while_connecting),
    ///     FailureKind::ClosedBeforeSent
    /// );
    /// ```
    pub fn of_error(error: &(dyn Error + 'static)) -> FailureKind {
        classify_error(error).kind
    }

    /// Names the failure behind a status a server sent, from its code and message: UNIMPLEMENTED
    /// "unknown service X" is [`FailureKind::UnknownService`], PERMISSION_DENIED is
    /// [`FailureKind::PermissionDenied`], a code with no kind of its own is
    /// [`FailureKind::ServerStatus`].
    ///
    /// ```
    /// use tonic::Code;
    /// use tonic_retry::FailureKind;
    ///
    /// let kind = FailureKind::of_status(Code::Unimplemented, "unknown service pkg.Greeter");
    /// assert_eq!(kind, FailureKind::UnknownService);
    /// ```
    pub fn of_status(code: Code, message: &str) -> FailureKind {
        kind_of_status(code, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&'static str, &'static str)]) -> http::Response<()> {
        let mut response = http::Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(*name, http::HeaderValue::from_static(value));
        }
        response
    }

    fn failed(classified: Classified<http::Response<()>>) -> Failure {
        match classified {
            Classified::Failed(failure) => failure,
            Classified::Pass(_) => panic!("expected a failure"),
        }
    }

    #[test]
    fn trailers_only_status_is_the_outcome() {
        let failure = failed(classify_response(response(
            200,
            &[("grpc-status", "14"), ("grpc-message", "try%20later")],
        )));
        assert_eq!(failure.code(), Code::Unavailable);
        assert_eq!(failure.status.message(), "try later");
        assert_eq!(failure.kind, FailureKind::Unavailable);
    }

    #[test]
    fn grpc_status_wins_over_http_status() {
        let failure = failed(classify_response(response(503, &[("grpc-status", "7")])));
        assert_eq!(failure.code(), Code::PermissionDenied);
    }

    #[test]
    fn http_status_maps_when_no_grpc_status() {
        let failure = failed(classify_response(response(404, &[])));
        assert_eq!(failure.code(), Code::Unimplemented);
        assert!(failure.status.message().contains("404"));
        let failure = failed(classify_response(response(429, &[])));
        assert_eq!(failure.code(), Code::Unavailable);
    }

    #[test]
    fn plain_headers_and_ok_pass() {
        assert!(matches!(
            classify_response(response(200, &[])),
            Classified::Pass(_)
        ));
        assert!(matches!(
            classify_response(response(200, &[("grpc-status", "0")])),
            Classified::Pass(_)
        ));
    }

    #[test]
    fn a_repeated_grpc_status_is_malformed_and_not_retried() {
        let mut head = response(200, &[]);
        for value in ["14", "14"] {
            head.headers_mut()
                .append("grpc-status", http::HeaderValue::from_static(value));
        }
        let failure = failed(classify_response(head));
        assert_eq!(failure.code(), Code::Internal);
        assert_eq!(failure.kind, FailureKind::MalformedResponse);
        assert!(failure.retry_cannot_help());
        assert!(failure.status.message().contains("2 times"));
        // Repeated OK is no better: which one counts is unknowable.
        let mut head = response(200, &[]);
        for value in ["0", "0"] {
            head.headers_mut()
                .append("grpc-status", http::HeaderValue::from_static(value));
        }
        assert_eq!(failed(classify_response(head)).code(), Code::Internal);
    }

    #[test]
    fn headers_too_large_is_named() {
        let failure = failed(classify_response(response(431, &[])));
        assert_eq!(failure.code(), Code::Unknown);
        assert_eq!(failure.kind, FailureKind::MetadataTooLarge);
        assert!(failure.kind.hint().contains("metadata"));
        assert!(failure.retry_cannot_help());
    }

    #[test]
    fn ok_with_details_tonic_would_panic_on_passes_without_them() {
        let head = response(
            200,
            &[("grpc-status", "0"), ("grpc-status-details-bin", "!!!")],
        );
        let Classified::Pass(head) = classify_response(head) else {
            panic!("OK passes");
        };
        assert!(head.headers().get("grpc-status-details-bin").is_none());
        assert_eq!(head.headers().get("grpc-status").unwrap(), "0");
        // And tonic reads what passes without panicking.
        assert_eq!(
            Status::from_header_map(head.headers()).map(|status| status.code()),
            Some(Code::Ok)
        );
        let valid = response(
            200,
            &[("grpc-status", "0"), ("grpc-status-details-bin", "AQID")],
        );
        let Classified::Pass(valid) = classify_response(valid) else {
            panic!("OK passes");
        };
        assert!(valid.headers().get("grpc-status-details-bin").is_some());
    }

    #[test]
    fn a_connection_reset_before_headers_is_unavailable_with_tonics_message_and_chain() {
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let tonic = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(tonic.code(), Code::Unknown);
        let failure = classify_service_error(Box::new(error));
        assert_eq!(failure.code(), Code::Unavailable);
        assert_eq!(failure.kind, FailureKind::ConnectionReset);
        assert!(!failure.never_sent);
        assert_eq!(failure.status.message(), tonic.message());
        let source = failure.status.source().expect("the error is the source");
        assert_eq!(
            source.downcast_ref::<std::io::Error>().map(|io| io.kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[test]
    fn a_tower_timeout_is_an_attempt_timeout() {
        let failure = classify_service_error(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(failure.code(), Code::DeadlineExceeded);
        assert_eq!(failure.kind, FailureKind::AttemptTimeout);
        assert_eq!(failure.status.message(), "request timed out");
        assert!(
            failure
                .status
                .source()
                .unwrap()
                .is::<tower::timeout::error::Elapsed>()
        );
    }

    #[test]
    fn a_status_from_the_inner_service_stands() {
        let failure = classify_service_error(Box::new(Status::permission_denied("no")));
        assert_eq!(failure.code(), Code::PermissionDenied);
        assert_eq!(failure.kind, FailureKind::PermissionDenied);
        // A bare h2 error keeps tonic's wording too.
        let failure = classify_service_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        let tonic = Status::from_error(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        assert_eq!(failure.code(), Code::Cancelled);
        assert_eq!(failure.status.message(), tonic.message());
    }

    #[test]
    fn unknown_method_in_every_wording() {
        for message in [
            "unknown method Say for service x.Y",
            "Method not found: x.Y/Say",
        ] {
            assert_eq!(
                kind_of_status(Code::Unimplemented, message),
                FailureKind::UnknownMethod
            );
        }
    }

    #[test]
    fn unknown_service_is_named() {
        assert_eq!(
            kind_of_status(
                Code::Unimplemented,
                "unknown service ns.NetworkServerService"
            ),
            FailureKind::UnknownService
        );
    }
}
