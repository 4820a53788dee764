//! Every failure kind of the reference text's table (and the others the transport produces),
//! reproduced for real on loopback through the RetryLayer: the caller's status carries a
//! history whose last attempt has the right kind, and a hint a person can act on.
//!
//! Run with `--nocapture` to see the exact message each real failure produced.

use std::io;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_retry::{CallHistory, FailureKind, Retry, RetryLayer, RetryPolicy};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::other_client::OtherClient;
use tonic_retry_testkit::pb::{CountRequest, SayRequest};
use tonic_retry_testkit::{
    Action, ConnectAction, FaultProxy, GoAwayServer, RefusingServer, Script, ScriptedConnector,
    ScriptedServer, endpoint, lazy_channel, unused_addr,
};
use tower::ServiceBuilder;

/// One attempt: the failure comes back as it came, with its history.
fn layer() -> RetryLayer {
    RetryLayer::builder()
        .default_policy(RetryPolicy::builder().max_attempts(1).build().unwrap())
        .build()
        .unwrap()
}

fn echo(channel: Channel) -> EchoClient<Retry<Channel>> {
    EchoClient::new(ServiceBuilder::new().layer(layer()).service(channel))
}

fn say() -> SayRequest {
    SayRequest {
        payload: bytes::Bytes::from_static(b"x"),
        text: "hello".into(),
    }
}

/// Asserts the last attempt's kind, that there is a hint, and prints what the caller saw.
#[track_caller]
fn assert_kind(row: &str, status: &Status, expected: &[FailureKind]) -> FailureKind {
    let history =
        CallHistory::of(status).unwrap_or_else(|| panic!("{row}: no history on {status:?}"));
    let last = history.last().expect("at least one attempt");
    println!(
        "| {row} | {:?} | {:?} | {} |",
        status.code(),
        status.message(),
        last.kind()
    );
    println!("{history}\n");
    if std::env::var_os("SHOW_CHAIN").is_some() {
        let mut source = std::error::Error::source(status);
        while let Some(err) = source {
            println!("  caused by: {err:?}");
            source = err.source();
        }
    }
    assert!(
        expected.contains(&last.kind()),
        "{row}: expected one of {expected:?}, got {:?}\n{history}",
        last.kind()
    );
    assert!(!history.hint().is_empty(), "{row}: no hint");
    assert_eq!(history.hint(), last.kind().hint());
    last.kind()
}

#[tokio::test]
async fn connection_refused_nothing_listening() {
    let mut client = echo(lazy_channel(unused_addr()));
    let status = client.say(say()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_kind(
        "connection refused",
        &status,
        &[FailureKind::ConnectionRefused],
    );
    assert!(
        CallHistory::of(&status)
            .unwrap()
            .last()
            .unwrap()
            .never_sent()
    );
}

#[tokio::test]
async fn connection_reset_during_a_call() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = echo(lazy_channel(proxy.addr()));
    let call = tokio::spawn(async move { client.say(say()).await });
    server.wait_attempts(1).await;
    proxy.reset_all();
    let status = call.await.unwrap().unwrap_err();
    assert_kind("connection reset", &status, &[FailureKind::ConnectionReset]);
}

#[tokio::test]
async fn stream_ended_when_the_connection_closes_during_a_call() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let mut client = echo(lazy_channel(proxy.addr()));
    let call = tokio::spawn(async move { client.say(say()).await });
    server.wait_attempts(1).await;
    proxy.close_all();
    let status = call.await.unwrap().unwrap_err();
    assert_kind(
        "stream ended (FIN mid-call)",
        &status,
        &[FailureKind::StreamEnded],
    );
}

#[tokio::test]
async fn the_server_dying_before_answering_a_stream() {
    let server = ScriptedServer::start(Script::new().count(Action::Hang)).await;
    let mut client = echo(lazy_channel(server.addr()));
    let call = tokio::spawn(async move {
        client
            .count(CountRequest {
                start_after: 0,
                count: 10,
                padding_len: 0,
            })
            .await
            .map(|_| ())
    });
    server.wait_attempts(1).await;
    drop(server);
    let status = call.await.unwrap().unwrap_err();
    // The dying process's socket still held unread bytes, so its kernel sent RST: a reset.
    assert_kind(
        "server killed mid-call",
        &status,
        &[FailureKind::ConnectionReset, FailureKind::StreamEnded],
    );
}

#[tokio::test]
async fn unknown_service_from_a_tonic_server() {
    let server = ScriptedServer::start(Script::new()).await;
    let channel = ServiceBuilder::new()
        .layer(layer())
        .service(lazy_channel(server.addr()));
    let status = OtherClient::new(channel).ping(say()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // tonic answers an unknown service with an empty message: it cannot be told from an unknown
    // method, and the hint says how to tell them apart.
    assert_eq!(status.message(), "");
    let kind = assert_kind(
        "unknown service (tonic)",
        &status,
        &[FailureKind::Unimplemented],
    );
    assert!(kind.hint().contains("list"), "{}", kind.hint());
    assert!(kind.hint().contains("reflection"), "{}", kind.hint());
}

#[tokio::test]
async fn unknown_service_and_method_as_grpc_go_words_them() {
    let server = ScriptedServer::start(
        Script::new()
            .say(Action::fail(
                Code::Unimplemented,
                "unknown service ns.NetworkServerService",
            ))
            .say(Action::fail(
                Code::Unimplemented,
                "unknown method Say for service tonic_retry.test.Echo",
            )),
    )
    .await;
    let mut client = echo(lazy_channel(server.addr()));
    let status = client.say(say()).await.unwrap_err();
    let kind = assert_kind(
        "unknown service (grpc-go)",
        &status,
        &[FailureKind::UnknownService],
    );
    assert!(kind.hint().contains("grpcurl"), "{}", kind.hint());
    let status = client.say(say()).await.unwrap_err();
    assert_kind(
        "unknown method (grpc-go)",
        &status,
        &[FailureKind::UnknownMethod],
    );
}

#[tokio::test]
async fn permission_denied_by_an_interceptor() {
    let server = ScriptedServer::start(Script::new().deny_all()).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_kind(
        "permission denied",
        &status,
        &[FailureKind::PermissionDenied],
    );
}

#[tokio::test]
async fn unauthenticated_by_an_interceptor() {
    let server = ScriptedServer::start(Script::new().unauthenticated()).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_kind("unauthenticated", &status, &[FailureKind::Unauthenticated]);
}

/// A channel whose connects the connector fails; the host name never resolves anywhere.
fn failing(action: ConnectAction) -> Channel {
    let connector = ScriptedConnector::new(unused_addr());
    connector.set_default(action);
    Channel::from_static("http://backend.invalid:50051").connect_with_connector_lazy(connector)
}

#[tokio::test]
async fn network_unreachable_ipv4_or_ipv6() {
    // ENETUNREACH, with the operating system's own message.
    let status = echo(failing(ConnectAction::FailOs(101)))
        .say(say())
        .await
        .unwrap_err();
    let kind = assert_kind(
        "network unreachable",
        &status,
        &[FailureKind::NetworkUnreachable],
    );
    assert!(kind.hint().contains("IPv6") && kind.hint().contains("IPv4"));
    let status = echo(failing(ConnectAction::Fail(
        io::ErrorKind::NetworkUnreachable,
    )))
    .say(say())
    .await
    .unwrap_err();
    assert_kind(
        "network unreachable (kind)",
        &status,
        &[FailureKind::NetworkUnreachable],
    );
}

#[tokio::test]
async fn host_unreachable() {
    let status = echo(failing(ConnectAction::FailOs(113)))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("host unreachable", &status, &[FailureKind::HostUnreachable]);
}

#[tokio::test]
async fn no_address_reachable() {
    // EADDRNOTAVAIL: no local address can reach the destination.
    let status = echo(failing(ConnectAction::FailOs(99)))
        .say(say())
        .await
        .unwrap_err();
    assert_kind(
        "no address reachable",
        &status,
        &[FailureKind::NoAddressReachable],
    );
}

#[tokio::test]
async fn dns_failure() {
    let status = echo(failing(ConnectAction::Dns))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("DNS failure", &status, &[FailureKind::DnsFailure]);
}

#[tokio::test]
async fn connect_timeout() {
    let connector = ScriptedConnector::new(unused_addr());
    connector.set_default(ConnectAction::Hang);
    let channel = Endpoint::from_static("http://backend.invalid:50051")
        .connect_timeout(Duration::from_millis(100))
        .connect_with_connector_lazy(connector);
    let status = echo(channel).say(say()).await.unwrap_err();
    assert_kind("connect timeout", &status, &[FailureKind::ConnectTimeout]);
}

#[tokio::test]
async fn deadline_exceeded() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let mut request = Request::new(say());
    request.set_timeout(Duration::from_millis(100));
    let status = echo(lazy_channel(server.addr()))
        .say(request)
        .await
        .unwrap_err();
    assert_kind(
        "deadline exceeded",
        &status,
        &[FailureKind::DeadlineExceeded],
    );
}

#[tokio::test]
async fn transport_timeout() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let channel = endpoint(server.addr())
        .timeout(Duration::from_millis(100))
        .connect_lazy();
    let status = echo(channel).say(say()).await.unwrap_err();
    assert_kind(
        "transport timeout",
        &status,
        &[FailureKind::TransportTimeout],
    );
}

#[tokio::test]
async fn refused_stream() {
    let server = RefusingServer::start(usize::MAX).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("refused stream", &status, &[FailureKind::RefusedStream]);
}

#[tokio::test]
async fn goaway() {
    let server = GoAwayServer::start(h2::Reason::ENHANCE_YOUR_CALM).await;
    let status = echo(lazy_channel(server.addr()))
        .say(say())
        .await
        .unwrap_err();
    assert_kind("GOAWAY", &status, &[FailureKind::GoAway]);
}

#[tokio::test]
async fn keepalive_timeout_on_a_stalled_connection() {
    let server = ScriptedServer::start(Script::new().say(Action::Hang)).await;
    let proxy = FaultProxy::start(server.addr()).await;
    let channel = endpoint(proxy.addr())
        .http2_keep_alive_interval(Duration::from_millis(50))
        .keep_alive_timeout(Duration::from_millis(100))
        .connect_lazy();
    let mut client = echo(channel);
    let call = tokio::spawn(async move { client.say(say()).await });
    server.wait_attempts(1).await;
    proxy.stall_all();
    let status = call.await.unwrap().unwrap_err();
    assert_kind(
        "keepalive timeout",
        &status,
        &[FailureKind::KeepaliveTimeout],
    );
}

#[test]
fn every_kind_has_a_name_and_an_actionable_hint() {
    use FailureKind::*;
    for kind in [
        ConnectionRefused,
        NetworkUnreachable,
        HostUnreachable,
        DnsFailure,
        ConnectTimeout,
        NoAddressReachable,
        ConnectionReset,
        BrokenPipe,
        StreamEnded,
        RefusedStream,
        GoAway,
        StreamReset,
        KeepaliveTimeout,
        TransportTimeout,
        AttemptTimeout,
        DeadlineExceeded,
        UnknownService,
        UnknownMethod,
        Unimplemented,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        ResourceExhausted,
        ServerStatus,
        Transport,
    ] {
        assert!(!kind.as_str().is_empty());
        assert!(kind.hint().len() > 40, "{kind}: {}", kind.hint());
    }
    assert!(ConnectionRefused.hint().contains("nothing listens"));
    assert!(UnknownService.hint().contains("stubs"));
}
