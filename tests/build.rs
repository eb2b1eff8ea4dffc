//! Generates the tests' gRPC client and server from `proto/echo.proto` with protox, a
//! protobuf compiler written in Rust: nothing needs to be installed to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let descriptors = protox::compile(["proto/echo.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
