//! Classifying one attempt, in two phases like tower-http's classifiers: the response head
//! decides (Trailers-Only `grpc-status`, then the HTTP status, else the call is committed), and a
//! transport error is named by its cause.

mod status;
mod transport;

use std::error::Error;
use tonic::{Code, Status};

use crate::kind::FailureKind;

pub(crate) use self::status::{GRPC_STATUS, Pushback, pushback, trailers_only_status};
pub(crate) use self::transport::{TransportCause, classify_error};

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

/// Classifies the response head of an attempt.
pub(crate) fn classify_response<B>(response: http::Response<B>) -> Classified<http::Response<B>> {
    let headers = response.headers();
    if headers.contains_key(&GRPC_STATUS) {
        return match trailers_only_status(headers) {
            None => Classified::Pass(response),
            Some(status) => {
                let kind = kind_of_status(status.code(), status.message());
                let pushback = pushback(headers, &status);
                Classified::Failed(Failure {
                    status,
                    kind,
                    never_sent: false,
                    pushback,
                })
            }
        };
    }
    let http_status = response.status();
    if http_status == http::StatusCode::OK {
        return Classified::Pass(response);
    }
    let code = crate::code::code_from_http_status(http_status);
    // The same message tonic gives such a response, so the caller sees no difference.
    let message = format!(
        "grpc-status header missing, mapped from HTTP status code {}",
        http_status.as_u16()
    );
    Classified::Failed(Failure {
        status: Status::new(code, message),
        kind: kind_of_status(code, ""),
        never_sent: false,
        pushback: Pushback::None,
    })
}

/// Classifies an error the inner service returned instead of a response.
pub(crate) fn classify_service_error(error: Box<dyn Error + Send + Sync>) -> Failure {
    // tonic's own mapping gives the code and message the caller would have seen without us.
    let status = Status::from_error(error);
    let named = match std::error::Error::source(&status) {
        Some(source) => classify_error(source),
        None => TransportCause {
            kind: kind_of_status(status.code(), status.message()),
            never_sent: false,
        },
    };
    Failure {
        status,
        kind: named.kind,
        never_sent: named.never_sent,
        pushback: Pushback::None,
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
