//! Build script for `kubeedge-dmi`: generates the gRPC service code of the DMI v1beta1 API
//! (`DeviceManagerService`, served by edgecore, and `DeviceMapperService`, served by mappers).
//!
//! The schema (`proto/dmi/v1beta1/api.proto`, inside this crate so that it packages; the same
//! file as `kubeedge-proto`'s, which compiles its message types from it) is parsed with
//! `protox` (pure Rust, no system `protoc`), and every message type is mapped to
//! `kubeedge_proto::dmi` so the two crates share one set of types.

use std::path::PathBuf;

const DMI_PROTO: &str = "dmi/v1beta1/api.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("proto");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", root.join(DMI_PROTO).display());
    let fds = protox::compile([DMI_PROTO], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keeps tonic from mapping .google.protobuf to prost-types (we map it ourselves).
        .compile_well_known_types(true)
        .extern_path(".v1beta1", "::kubeedge_proto::dmi")
        .extern_path(
            ".google.protobuf",
            "::kubeedge_proto::dmi::google::protobuf",
        )
        .compile_fds(fds)?;
    Ok(())
}
