//! Compiles the scaffold's test service (proto/testing.proto).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed={}", dir.join("testing.proto").display());
    let fds = protox::compile(["testing.proto"], [&dir])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
