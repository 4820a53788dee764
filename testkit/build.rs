//! Generates the gRPC code for `proto/echo.proto` without a system `protoc`:
//! `protox` parses the proto into a descriptor set that `tonic-prost-build` turns into Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["echo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".tonic_retry.test")
        .compile_fds(fds)?;
    Ok(())
}
