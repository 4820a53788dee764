//! Adversarial pass over the diagnosis: a target is diagnosed because it misbehaves, so nothing
//! it answers may panic a step (the crate's promise). The answers come from a bare HTTP/2 server
//! on 127.0.0.1 written field by field ([`ReplyServer`]); the clock is paused, as in the crate's
//! other tests.

use std::io;
use std::time::Duration;

use prost::Message as _;
use tonic::Code;
use tonic_retry_diagnose::verdict::{HandshakeVerdict, HealthVerdict};
use tonic_retry_diagnose::{DiagnoseOptions, Diagnosis, Report};
use tonic_retry_testkit::{RawReply, ReplyServer};

fn options() -> DiagnoseOptions {
    DiagnoseOptions::new()
        .step_timeout(Duration::from_secs(2))
        .resolver(tonic_retry_diagnose::resolver::StaticResolver::error(
            io::ErrorKind::Other,
            "test resolver: no lookups",
        ))
}

/// Runs a diagnosis of `server` on a task of its own, so that a panic is seen as one.
async fn diagnose(server: &ReplyServer) -> Report {
    let uri = format!("http://{}", server.addr());
    let task = tokio::spawn(async move { Diagnosis::run(&uri, None, options()).await });
    match task.await {
        Ok(report) => report.unwrap(),
        Err(join) => panic!("the diagnosis panicked on the server's answer: {join}"),
    }
}

/// `grpc-status-details-bin` that is not base64 in a Trailers-Only answer: tonic's client
/// `expect`s base64 there, and the handshake probe panicked. The details say nothing readable;
/// the status stands without them.
#[tokio::test(start_paused = true)]
async fn details_that_are_not_base64_in_a_status_do_not_panic_the_probe() {
    let server = ReplyServer::start(vec![
        RawReply::ok()
            .header("grpc-status", b"12")
            .header("grpc-message", b"no%20such%20method")
            .header("grpc-status-details-bin", b"!!not base64!!"),
    ])
    .await;

    let report = diagnose(&server).await;

    match report.handshake() {
        HandshakeVerdict::Grpc { code, message, .. } => {
            assert_eq!(*code, Code::Unimplemented);
            assert_eq!(message, "no such method");
        }
        other => panic!("{other:?}"),
    }
}

/// The same details in the trailers that end a health check's answer, after its message.
#[tokio::test(start_paused = true)]
async fn details_that_are_not_base64_in_trailers_do_not_panic_the_health_check() {
    let serving = tonic_health::pb::HealthCheckResponse { status: 1 }.encode_to_vec();
    let server = ReplyServer::start(vec![
        // The handshake probe: a method no server has.
        RawReply::ok().header("grpc-status", b"12"),
        // Health, then every later request (reflection).
        RawReply::ok()
            .message(&serving)
            .trailer("grpc-status", b"0")
            .trailer("grpc-status-details-bin", b"%%%"),
    ])
    .await;

    let report = diagnose(&server).await;

    assert!(report.handshake().is_ok(), "{:?}", report.handshake());
    assert_eq!(*report.health(), HealthVerdict::Serving);
}
