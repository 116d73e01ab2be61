//! Compiles `proto/` (the kubelet pod-resources API) into Rust.
//!
//! The .proto files are parsed by `protox`, a pure-Rust protobuf compiler, so building the
//! agent never needs a `protoc` binary. tonic-prost-build then generates the messages and
//! both gRPC sides: the client is what the agent uses; the server lets the tests run a fake
//! kubelet from the very same definitions.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../proto");
    let api = proto_root.join("kubelet/podresources/v1/api.proto");
    println!("cargo:rerun-if-changed={}", api.display());

    let fds = protox::compile([&api], [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated transport helpers (`connect`) want tonic's TCP channel; we connect over a
        // unix socket ourselves.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
