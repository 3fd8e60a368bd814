//! Build script for `kubeedge-edged`: with the `cri` feature, generates the gRPC client code of
//! the CRI API (`runtime.v1`: `RuntimeService` and `ImageService`) from the vendored
//! `proto/runtime/v1/api.proto`.
//!
//! The schema is parsed with `protox` (pure Rust, no system `protoc`) and turned into message
//! types and clients by `tonic-prost-build`; no server code is generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "cri")]
    cri()?;
    Ok(())
}

#[cfg(feature = "cri")]
fn cri() -> Result<(), Box<dyn std::error::Error>> {
    const CRI_PROTO: &str = "runtime/v1/api.proto";
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed={}", root.join(CRI_PROTO).display());
    let fds = protox::compile([CRI_PROTO], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
