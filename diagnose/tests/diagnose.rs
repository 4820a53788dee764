//! `tonic_retry_diagnose` against real servers on loopback: every layer's verdict, within a
//! bounded time. No test sends a DNS query (names go through an injected resolver) or any packet
//! beyond 127.0.0.1.
//!
//! The tests run on tokio's paused clock: I/O on loopback takes no time on it and a step that
//! waits takes exactly its timeout, so the bound on a diagnosis's duration is exact and holds
//! however loaded the machine is.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

use tonic_retry::FailureKind;
use tonic_retry_diagnose::resolver::StaticResolver;
use tonic_retry_diagnose::verdict::{
    HandshakeVerdict, HealthVerdict, ReflectionVerdict, ReflectionVersion, ResolveVerdict, Step,
    TargetVerdict, TcpVerdict,
};
use tonic_retry_diagnose::{DiagnoseOptions, Diagnosis, Report};
use tonic_retry_testkit::{Script, ScriptedServer, unused_addr};

/// Short steps: everything here is on loopback.
fn options() -> DiagnoseOptions {
    // A name that is not an IP literal would reach this resolver, never the system's.
    DiagnoseOptions::new()
        .step_timeout(Duration::from_secs(2))
        .resolver(StaticResolver::error(
            io::ErrorKind::Other,
            "test resolver: no lookups",
        ))
}

/// The most steps a diagnosis takes one after the other: resolve, TCP, connect, the gRPC probe,
/// health of the server and of the service, reflection `v1` and `v1alpha`.
const MAX_STEPS: u32 = 8;

async fn diagnose(uri: &str, target: Option<&str>, options: DiagnoseOptions) -> Report {
    let bound = options.timeout() * MAX_STEPS;
    let started = Instant::now();
    let report = Diagnosis::run(uri, target, options).await.unwrap();
    println!("{report}");
    assert!(
        started.elapsed() <= bound,
        "took {:?}, more than every step's timeout together",
        started.elapsed()
    );
    report
}

fn assert_connected(report: &Report) {
    assert!(matches!(
        report.resolution(),
        ResolveVerdict::Resolved { literal: true, .. }
    ));
    assert_eq!(report.connects().len(), 1);
    assert!(matches!(
        report.connects()[0].verdict(),
        TcpVerdict::Connected(_)
    ));
    assert!(
        matches!(
            report.handshake(),
            HandshakeVerdict::Grpc {
                code: tonic::Code::Unimplemented,
                ..
            }
        ),
        "{:?}",
        report.handshake()
    );
}

fn services(report: &Report) -> &[String] {
    match report.reflection() {
        ReflectionVerdict::Listed { version, services } => {
            assert_eq!(*version, ReflectionVersion::V1);
            services
        }
        other => panic!("reflection: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_with_health_and_reflection() {
    let server = ScriptedServer::start(Script::new().health().reflection()).await;
    let uri = server.uri().to_string();

    let report = diagnose(&uri, Some("tonic_retry.test.Echo/Say"), options()).await;
    assert_connected(&report);
    assert_eq!(report.health(), &HealthVerdict::Serving);
    assert_eq!(report.service_health(), Some(&HealthVerdict::Serving));
    assert!(
        services(&report)
            .iter()
            .any(|s| s == "tonic_retry.test.Echo")
    );
    assert!(
        services(&report)
            .iter()
            .any(|s| s == "grpc.health.v1.Health")
    );
    assert_eq!(report.target_verdict(), Some(&TargetVerdict::Found));
    assert_eq!(report.conclusion().step(), Step::Application);
    assert_eq!(report.conclusion().kind(), None);
    let text = report.to_string();
    assert!(
        text.contains("SERVING") && text.contains("tonic_retry.test.Echo"),
        "{text}"
    );

    // A method the service does not have.
    let report = diagnose(&uri, Some("tonic_retry.test.Echo/Shout"), options()).await;
    match report.target_verdict() {
        Some(TargetVerdict::MethodMissing { methods }) => {
            assert_eq!(methods, &["Say", "Count", "Collect", "Chat"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.conclusion().kind(), Some(FailureKind::UnknownMethod));

    // A service in another package, with the same name: the stubs' package differs.
    let report = diagnose(&uri, Some("ns.Echo"), options()).await;
    assert_eq!(
        report.target_verdict(),
        Some(&TargetVerdict::ServiceMissing {
            similar: vec!["tonic_retry.test.Echo".to_owned()]
        })
    );
    assert_eq!(report.conclusion().step(), Step::Service);
    assert_eq!(
        report.conclusion().kind(),
        Some(FailureKind::UnknownService)
    );
    assert!(
        report
            .conclusion()
            .cause()
            .contains("tonic_retry.test.Echo")
    );

    // No target: every layer is fine.
    let report = diagnose(&uri, None, options()).await;
    assert_eq!(report.target_verdict(), None);
    assert_eq!(report.conclusion().step(), Step::Application);
}

#[tokio::test(start_paused = true)]
async fn a_server_without_reflection_or_health() {
    let server = ScriptedServer::start(Script::new()).await;
    let report = diagnose(
        &server.uri().to_string(),
        Some("tonic_retry.test.Echo/Say"),
        options(),
    )
    .await;
    assert_connected(&report);
    assert_eq!(report.health(), &HealthVerdict::NotServed);
    assert_eq!(report.reflection(), &ReflectionVerdict::NotServed);
    // tonic's empty UNIMPLEMENTED message cannot say whether the service exists.
    assert!(matches!(
        report.target_verdict(),
        Some(TargetVerdict::Undetermined(_))
    ));
    assert_eq!(report.conclusion().step(), Step::Service);
    assert!(report.conclusion().advice().contains("reflection"));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_denies_every_call() {
    let server = ScriptedServer::start(Script::new().deny_all().health().reflection()).await;
    let report = diagnose(&server.uri().to_string(), None, options()).await;
    assert!(matches!(
        report.handshake(),
        HandshakeVerdict::Grpc {
            code: tonic::Code::PermissionDenied,
            ..
        }
    ));
    assert_eq!(
        report.conclusion().kind(),
        Some(FailureKind::PermissionDenied)
    );
}

#[tokio::test(start_paused = true)]
async fn a_closed_port() {
    let addr = unused_addr();
    let report = diagnose(
        &format!("http://{addr}"),
        Some("tonic_retry.test.Echo"),
        options(),
    )
    .await;
    assert!(matches!(
        report.connects()[0].verdict(),
        TcpVerdict::Failed {
            kind: FailureKind::ConnectionRefused,
            ..
        }
    ));
    assert!(matches!(report.handshake(), HandshakeVerdict::Skipped(_)));
    assert!(matches!(report.health(), HealthVerdict::Skipped(_)));
    assert!(matches!(report.reflection(), ReflectionVerdict::Skipped(_)));
    assert_eq!(report.conclusion().step(), Step::Tcp);
    assert_eq!(
        report.conclusion().kind(),
        Some(FailureKind::ConnectionRefused)
    );
    assert!(report.conclusion().cause().contains("nothing listens"));
}

#[tokio::test(start_paused = true)]
async fn a_name_that_does_not_resolve() {
    let options = options().resolver(StaticResolver::error(
        io::ErrorKind::Other,
        "failed to lookup address information: Name or service not known",
    ));
    let report = diagnose(
        "http://backend.invalid:50051",
        Some("tonic_retry.test.Echo"),
        options,
    )
    .await;
    assert!(
        matches!(report.resolution(), ResolveVerdict::Failed(m) if m.contains("Name or service"))
    );
    assert!(report.connects().is_empty());
    assert!(matches!(report.handshake(), HandshakeVerdict::Skipped(_)));
    assert_eq!(report.conclusion().step(), Step::NameResolution);
    assert_eq!(report.conclusion().kind(), Some(FailureKind::DnsFailure));
}

#[tokio::test(start_paused = true)]
async fn a_name_whose_ipv6_address_fails_while_ipv4_works() {
    let server = ScriptedServer::start(Script::new().health()).await;
    // ::1 on the server's port: nothing listens there (the server is bound to 127.0.0.1 only).
    let v6 = std::net::SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), 0);
    let options = options().resolver(StaticResolver::addrs([v6, server.addr()]));
    let report = diagnose(
        &format!("http://backend.test:{}", server.addr().port()),
        None,
        options,
    )
    .await;
    match report.resolution() {
        ResolveVerdict::Resolved { addrs, literal, .. } => {
            assert!(!literal);
            assert_eq!(addrs.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(!matches!(
        report.connects()[0].verdict(),
        TcpVerdict::Connected(_)
    ));
    assert!(matches!(
        report.connects()[1].verdict(),
        TcpVerdict::Connected(_)
    ));
    assert!(
        report.notes().iter().any(|n| n.contains("IPv6")),
        "{:?}",
        report.notes()
    );
    assert_eq!(report.conclusion().step(), Step::Application);
}

#[tokio::test(start_paused = true)]
async fn a_port_that_accepts_but_never_speaks() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let options = options().step_timeout(Duration::from_millis(300));
    let report = diagnose(&format!("http://{addr}"), None, options).await;
    assert!(matches!(
        report.connects()[0].verdict(),
        TcpVerdict::Connected(_)
    ));
    assert!(
        matches!(
            report.handshake(),
            HandshakeVerdict::TimedOut(_) | HandshakeVerdict::Failed { .. }
        ),
        "{:?}",
        report.handshake()
    );
    assert_eq!(report.conclusion().step(), Step::Handshake);
}

#[tokio::test(start_paused = true)]
async fn malformed_inputs_are_errors_not_panics() {
    for (uri, target) in [
        ("", None),
        ("ftp://host", None),
        ("http://127.0.0.1:1", Some("not a service")),
        ("http://127.0.0.1:1", Some("a.B/c/d")),
    ] {
        let error = Diagnosis::run(uri, target, options()).await.unwrap_err();
        assert!(!error.to_string().is_empty());
    }
}

/// What a raw TCP peer does with each connection it accepts.
#[derive(Clone, Copy)]
enum Peer {
    /// Writes these bytes, closes its side, and reads until the client goes.
    Answers(&'static [u8]),
    /// Resets every connection at once (`SO_LINGER` 0, then close).
    ResetsAtAccept,
    /// Holds the first connection (the TCP step's) and resets every later one.
    ResetsAfterTheFirst,
}

/// A peer written on a raw TCP listener on loopback, doing `peer` with every connection.
async fn raw_peer(peer: Peer) -> std::net::SocketAddr {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            match peer {
                Peer::Answers(bytes) => {
                    tokio::spawn(async move {
                        let _ = socket.write_all(bytes).await;
                        let _ = socket.shutdown().await;
                        // Reading what the client sent keeps the close a FIN (closing with
                        // unread data would send a RST).
                        let _ = tokio::io::copy(&mut socket, &mut tokio::io::sink()).await;
                    });
                }
                Peer::ResetsAfterTheFirst if held.is_empty() => held.push(socket),
                Peer::ResetsAtAccept | Peer::ResetsAfterTheFirst => {
                    socket.set_zero_linger().unwrap();
                    drop(socket);
                }
            }
        }
    });
    addr
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_does_not_speak_http2() {
    use tonic_retry_diagnose::verdict::OtherProtocol;
    let cases: [(&[u8], OtherProtocol); 4] = [
        (
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            OtherProtocol::Http1("HTTP/1.1 400 Bad Request".to_owned()),
        ),
        // A TLS server's fatal alert (protocol_version) to bytes that are not a ClientHello.
        (
            &[0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46],
            OtherProtocol::Tls,
        ),
        // What Go's TLS servers answer to plaintext.
        (
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
            OtherProtocol::Tls,
        ),
        (
            b"\x00\x01garbage",
            OtherProtocol::Unknown("\\x00\\x01garbage".to_owned()),
        ),
    ];
    for (answer, protocol) in cases {
        let addr = raw_peer(Peer::Answers(answer)).await;
        let report = diagnose(&format!("http://{addr}"), Some("a.B/C"), options()).await;
        assert!(matches!(
            report.connects()[0].verdict(),
            TcpVerdict::Connected(_)
        ));
        match report.handshake() {
            HandshakeVerdict::NotHttp2 { answer, .. } => assert_eq!(answer, &protocol),
            other => panic!("{other:?}"),
        }
        let conclusion = report.conclusion();
        assert_eq!(conclusion.step(), Step::Handshake);
        assert_eq!(conclusion.kind(), Some(FailureKind::LocalProtocolError));
        assert!(
            conclusion.cause().contains("does not speak"),
            "{}",
            conclusion.cause()
        );
        if protocol == OtherProtocol::Tls {
            assert!(conclusion.advice().contains("https://"));
        }
        let text = report.to_string();
        assert!(text.contains("does not speak HTTP/2"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("goaway"), "{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_that_resets_connections_at_accept() {
    // The TCP step's own connect may see the reset (it is established, then reset), or the
    // handshake does: either way the verdict says what the server did.
    let addr = raw_peer(Peer::ResetsAtAccept).await;
    let report = diagnose(&format!("http://{addr}"), None, options()).await;
    let conclusion = report.conclusion();
    assert!(
        matches!(conclusion.step(), Step::Tcp | Step::Handshake),
        "{conclusion:?}"
    );
    assert_eq!(conclusion.kind(), Some(FailureKind::ClosedBeforeSent));
    assert!(
        conclusion.cause().contains("accepted then reset"),
        "{}",
        conclusion.cause()
    );

    // Once the TCP step connected: the handshake's connections are the ones reset.
    let addr = raw_peer(Peer::ResetsAfterTheFirst).await;
    let report = diagnose(&format!("http://{addr}"), None, options()).await;
    assert!(matches!(
        report.connects()[0].verdict(),
        TcpVerdict::Connected(_)
    ));
    assert!(
        matches!(
            report.handshake(),
            HandshakeVerdict::ClosedAfterAccept { reset: true, .. }
        ),
        "{:?}",
        report.handshake()
    );
    let conclusion = report.conclusion();
    assert_eq!(conclusion.step(), Step::Handshake);
    assert_eq!(conclusion.kind(), Some(FailureKind::ClosedBeforeSent));
    assert!(conclusion.cause().contains("accepted then reset"));
    let text = report.to_string();
    assert!(!text.to_ascii_lowercase().contains("cancel"), "{text}");
}
