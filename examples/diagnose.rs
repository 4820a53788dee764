//! Walks the layers of a gRPC target with the `tonic-retry-diagnose` crate: name resolution, TCP,
//! the HTTP/2 + gRPC handshake, the health service, server reflection and the named
//! service/method; then prints the most likely cause and what to do. Run it when a call fails
//! with UNAVAILABLE, "failed to connect to all addresses" or "unknown service" (what Python's
//! grpcio shows as `_InactiveRpcError` for the same failures) and the cause is not plain.
//!
//! ```text
//! cargo run --example diagnose -- <uri> [package.Service[/Method]] [--timeout SECONDS]
//! cargo run --example diagnose -- http://127.0.0.1:50051 helloworld.Greeter/SayHello
//! ```
//!
//! Exits 0 when every layer answers, 1 when a layer fails, 2 on a usage error.

use std::process::ExitCode;
use std::time::Duration;

use tonic_retry_diagnose::verdict::Step;
use tonic_retry_diagnose::{DiagnoseOptions, Diagnosis};

const USAGE: &str =
    "usage: diagnose <uri> [package.Service[/Method]] [--timeout SECONDS]  (default 2 s a step)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut positional = Vec::new();
    let mut options = DiagnoseOptions::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--timeout" => {
                let seconds = args.next().and_then(|s| s.parse::<f64>().ok());
                match seconds.and_then(|s| Duration::try_from_secs_f64(s).ok()) {
                    Some(timeout) => options = options.step_timeout(timeout),
                    None => {
                        eprintln!("--timeout needs a number of seconds\n{USAGE}");
                        return ExitCode::from(2);
                    }
                }
            }
            _ => positional.push(arg),
        }
    }
    let (uri, target) = match positional.as_slice() {
        [uri] => (uri.as_str(), None),
        [uri, target] => (uri.as_str(), Some(target.as_str())),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match Diagnosis::run(uri, target, options).await {
        Ok(report) => {
            println!("{report}");
            if report.conclusion().step() == Step::Application {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("{error}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
