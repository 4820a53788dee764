//! Quickstart: a flaky server, a client through `RetryLayer`, and what the layer does.
//!
//! Run it with `cargo run --example quickstart`. It starts an embedded tonic server on
//! 127.0.0.1 (an ephemeral port) that answers UNAVAILABLE to its first two calls, then makes:
//!
//! 1. a call that succeeds on its third attempt (two retries with backoff);
//! 2. a call to a service the server does not serve: UNIMPLEMENTED, failed fast, no retry;
//! 3. a call to a port where nothing listens, within a 400 ms deadline: retried until the
//!    deadline, then diagnosed;
//! 4. a server stream of 2,000 numbered messages whose connection is reset in the middle
//!    (through a fault-injecting TCP proxy): `ResumableStream` reopens it after the last
//!    message received, so every message arrives exactly once.
//!
//! The layer's own tracing events (one per failed attempt) are printed too; `RUST_LOG=off` hides them.

use std::time::Duration;

use futures::StreamExt;
use tonic::Request;
use tonic_retry::backoff::ExponentialBackoff;
use tonic_retry::{CallHistory, ResumableStream, ResumePolicy, RetryLayer, RetryPolicy};
use tonic_retry_testkit::pb::echo_client::EchoClient;
use tonic_retry_testkit::pb::other_client::OtherClient;
use tonic_retry_testkit::pb::{CountRequest, SayRequest};
use tonic_retry_testkit::{
    Action, CutMode, FaultProxy, Method, Script, ScriptedServer, lazy_channel, unused_addr,
};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .compact()
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tonic_retry=debug".into()),
        )
        .init();

    // A server whose `Say` fails twice with UNAVAILABLE before it answers.
    let server = ScriptedServer::start(Script::new().then_n(
        Method::Say,
        2,
        Action::fail(tonic::Code::Unavailable, "warming up"),
    ))
    .await;
    println!("server listening on {}\n", server.addr());

    // The layer: gRFC A6 defaults, with a shorter backoff so the demo is quick.
    let policy = RetryPolicy::builder()
        .max_attempts(5)
        .backoff(ExponentialBackoff::new(
            Duration::from_millis(50),
            Duration::from_millis(400),
            2.0,
        )?)
        .build()?;
    let layer = RetryLayer::builder()
        .default_policy(policy.clone())
        // The channel hides the address from the layer: name it for the call histories.
        .target(server.uri().to_string())
        .build()?;
    let channel = ServiceBuilder::new()
        .layer(layer.clone())
        .service(lazy_channel(server.addr()));

    // 1. Retries until the server heals.
    println!("1. Echo/Say against a server that is warming up");
    let mut echo = EchoClient::new(channel.clone());
    let request = SayRequest {
        payload: "ping".into(),
        text: "hello".into(),
    };
    let reply = echo.say(request.clone()).await?.into_inner();
    println!(
        "   OK: {:?}, answered on attempt {}",
        reply.text, reply.attempt
    );
    for attempt in server.attempts_for(Method::Say) {
        println!(
            "   server saw attempt {} (grpc-previous-rpc-attempts: {})",
            attempt.number,
            attempt.header("grpc-previous-rpc-attempts").unwrap_or("-"),
        );
    }

    // 2. Fails fast: the server does not serve this service.
    println!("\n2. Other/Ping, a service the server does not serve");
    let mut other = OtherClient::new(channel);
    let status = other.ping(request.clone()).await.unwrap_err();
    println!("   {:?}: {:?}", status.code(), status.message());
    if let Some(history) = CallHistory::of(&status) {
        println!("   {}", indent(&history.to_string()));
    }

    // 3. Nothing listens: retried within the deadline, then diagnosed.
    println!("\n3. Echo/Say to a port where nothing listens, 400 ms deadline");
    let nowhere = unused_addr();
    let nowhere = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .default_policy(policy)
                .target(format!("http://{nowhere}"))
                .build()?,
        )
        .service(lazy_channel(nowhere));
    let mut echo = EchoClient::new(nowhere);
    let mut request = Request::new(request);
    request.set_timeout(Duration::from_millis(400));
    let status = echo.say(request).await.unwrap_err();
    println!("   {:?}: {:?}", status.code(), status.message());
    if let Some(history) = CallHistory::of(&status) {
        println!("   {}", indent(&history.to_string()));
    }

    // 4. A stream cut in the middle, resumed from the last message received.
    println!("\n4. Echo/Count, 2,000 messages, the connection reset after ~60 KB");
    let proxy = FaultProxy::start(server.addr()).await;
    proxy.cut_next_after_bytes(60_000, CutMode::Reset);
    let echo = EchoClient::new(lazy_channel(proxy.addr()));
    let policy = ResumePolicy::builder()
        .backoff(ExponentialBackoff::new(
            Duration::from_millis(20),
            Duration::from_millis(200),
            2.0,
        )?)
        .on_reopen(|reopen| {
            println!(
                "   stream broke after {} messages ({}: {}), reopening after the last one",
                reopen.delivered(),
                reopen.kind(),
                reopen.message(),
            )
        })
        .build()?;
    let stream = ResumableStream::with_policy(
        policy,
        // Opens the call; on a reopen, `cursor` is the last sequence number received.
        move |cursor: Option<u64>| {
            let mut echo = echo.clone();
            async move {
                let request = CountRequest {
                    start_after: cursor.unwrap_or(0),
                    count: 2_000,
                    padding_len: 100,
                };
                echo.count(request).await
            }
        },
        |message| message.seq,
    );
    let mut stream = std::pin::pin!(stream);
    let (mut received, mut expected) = (0u64, 1u64);
    while let Some(message) = stream.next().await {
        let seq = message?.seq;
        assert_eq!(seq, expected, "every message exactly once, in order");
        expected += 1;
        received += 1;
    }
    println!(
        "   received {received} messages, 1..={}, none lost, none twice; {} reopen(s)",
        expected - 1,
        stream.reopens(),
    );

    let metrics = layer.metrics();
    println!(
        "\nlayer counters: {} calls, {} attempts, {} retries, {} failed fast",
        metrics.calls(),
        metrics.attempts(),
        metrics.retries(),
        metrics.fail_fast(),
    );
    server.shutdown().await;
    Ok(())
}

fn indent(text: &str) -> String {
    text.replace('\n', "\n   ")
}
