//! Compiles `proto/demo/v1/inventory.proto` into Rust.
//!
//! `protox` parses the .proto in pure Rust, so building the demo never needs a
//! `protoc` binary (the approach of otel-gpu-receiver's build.rs).
//! tonic-prost-build generates the messages and both gRPC sides: the backend
//! serves what the gateway calls.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../proto");
    let api = proto_root.join("demo/v1/inventory.proto");
    println!("cargo:rerun-if-changed={}", api.display());

    let fds = protox::compile([&api], [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The gateway builds its channel itself, to put the client layer on it.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
