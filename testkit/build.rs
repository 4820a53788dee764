//! Generates the gRPC code for `proto/echo.proto` without a system `protoc`:
//! `protox` parses the proto into a descriptor set that `tonic-prost-build` turns into Rust.
//! The encoded descriptor set is also written to `$OUT_DIR/echo_descriptor.bin`, for the
//! server reflection service (`tonic_retry_testkit::FILE_DESCRIPTOR_SET`).

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["echo.proto"], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("echo_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".tonic_retry.test")
        .compile_fds(fds)?;
    Ok(())
}
