//! Generates the dev agent's SPIFFE Workload API server (and a client, for tests) from
//! `proto/workload.proto`. The proto is compiled by `protox`, in Rust, so no `protoc` has
//! to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/workload.proto");
    let descriptors = protox::compile(["proto/workload.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Clients are built from a channel the caller makes (a unix socket).
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
