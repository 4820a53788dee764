//! Properties of the layer's state machine, against a mock inner service that plays a scripted
//! sequence of outcomes (a mock is fine here: the real-server behaviour is in `tests/layer.rs`).

use std::collections::VecDeque;
use std::future::Ready;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use proptest::prelude::*;
use tonic::Code;
use tonic::body::Body;
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{BoxError, CallHistory, RetryLayer, RetryPolicy};
use tower::{Layer, Service, ServiceExt};

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    /// A Trailers-Only response with this code (and maybe a pushback in milliseconds).
    Status(Code, Option<i64>),
    /// Nothing listens: never sent.
    Refused,
    /// The connection broke: maybe sent.
    Reset,
    /// The server refused the stream unseen: transparent retry once.
    RefusedStream,
}

impl Outcome {
    /// The code the caller sees for this outcome: a connection that failed before any response
    /// header is UNAVAILABLE, as gRPC clients report it.
    fn code(self) -> Code {
        match self {
            Outcome::Ok => Code::Ok,
            Outcome::Status(code, _) => code,
            Outcome::Refused | Outcome::RefusedStream | Outcome::Reset => Code::Unavailable,
        }
    }
}

#[derive(Clone)]
struct Scripted {
    outcomes: Arc<Mutex<VecDeque<Outcome>>>,
    played: Arc<Mutex<Vec<Outcome>>>,
}

impl Service<Request<Body>> for Scripted {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Body>) -> Self::Future {
        let outcome = self
            .outcomes
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Outcome::Ok);
        self.played.lock().unwrap().push(outcome);
        std::future::ready(match outcome {
            Outcome::Ok => Ok(Response::new(Body::empty())),
            Outcome::Status(code, pushback) => {
                let mut response = Response::new(Body::empty());
                let headers = response.headers_mut();
                headers.insert("grpc-status", (code as i32).into());
                if let Some(ms) = pushback {
                    headers.insert("grpc-retry-pushback-ms", ms.into());
                }
                Ok(response)
            }
            Outcome::Refused => Err(Box::new(tonic::ConnectError(Box::new(io::Error::from(
                io::ErrorKind::ConnectionRefused,
            ))))),
            Outcome::Reset => Err(Box::new(io::Error::from(io::ErrorKind::ConnectionReset))),
            Outcome::RefusedStream => Err(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM))),
        })
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    let code = (1i32..=16).prop_map(Code::from_i32);
    prop_oneof![
        3 => Just(Outcome::Ok),
        4 => (code, proptest::option::weighted(0.2, -5i64..2000)).prop_map(|(c, p)| Outcome::Status(c, p)),
        2 => Just(Outcome::Refused),
        1 => Just(Outcome::Reset),
        1 => Just(Outcome::RefusedStream),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn attempts_are_bounded_and_the_caller_sees_the_last_outcome(
        script in proptest::collection::vec(outcome(), 0..12),
        max_attempts in 1u32..6,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let service = Scripted {
            outcomes: Arc::new(Mutex::new(script.iter().copied().collect())),
            played: Arc::default(),
        };
        let layer = RetryLayer::builder()
            .default_policy(
                RetryPolicy::builder()
                    .max_attempts(max_attempts)
                    .backoff(
                        ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1), 2.0)
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .jitter_seed(3)
            .build()
            .unwrap();
        let mut retry = layer.layer(service.clone());
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = "/pkg.Svc/Method".parse().unwrap();

        let result = runtime.block_on(async { retry.ready().await.unwrap().call(request).await });

        let played = service.played.lock().unwrap().clone();
        let last = *played.last().expect("at least one attempt");
        // Attempts counted against the policy, plus at most one transparent retry.
        prop_assert!(played.len() as u32 <= max_attempts + 1, "{played:?}");
        match result {
            Ok(_) => prop_assert!(matches!(last, Outcome::Ok | Outcome::Status(Code::Ok, _))),
            Err(error) => {
                let status = error.downcast::<tonic::Status>().expect("the layer's error is a Status");
                prop_assert_eq!(status.code(), last.code());
                let history = CallHistory::of(&status).expect("a history on every failure");
                prop_assert_eq!(history.attempts().len(), played.len());
                // Fail-fast codes are never retried.
                for (attempt, outcome) in history.attempts().iter().zip(&played).rev().skip(1) {
                    let code = outcome.code();
                    prop_assert!(
                        !matches!(code, Code::Unimplemented | Code::PermissionDenied | Code::Unauthenticated),
                        "retried after {code:?}: {attempt:?}"
                    );
                }
            }
        }
    }
}
