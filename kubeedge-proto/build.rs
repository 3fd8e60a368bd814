//! Build script for `kubeedge-proto`.
//!
//! Without the `dmi` feature it does nothing. With it, the DMI v1beta1 schema
//! (`proto/dmi/v1beta1/api.proto`) is compiled with `protox` (pure Rust, no
//! system `protoc`) and turned into prost message types in `OUT_DIR`:
//!
//! - `v1beta1.rs`: the DMI messages (no gRPC service code);
//! - `google.protobuf.rs`: `Any` plus the wrapper messages (`StringValue`,
//!   `Int32Value`, ...) that KubeEdge packs into `CustomizedValue`, generated
//!   here so the crate needs no `prost-types` dependency.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dmi")]
    dmi::generate()?;
    Ok(())
}

#[cfg(feature = "dmi")]
mod dmi {
    use std::error::Error;
    use std::path::PathBuf;

    /// Include root for the `.proto` files, relative to the package root.
    const PROTO_ROOT: &str = "proto";
    /// The DMI schema, relative to [`PROTO_ROOT`].
    const DMI_PROTO: &str = "dmi/v1beta1/api.proto";
    /// Well-known types bundled with protox; compiled alongside so the
    /// value wrappers used inside `google.protobuf.Any` get Rust types too.
    const WRAPPERS_PROTO: &str = "google/protobuf/wrappers.proto";

    pub(crate) fn generate() -> Result<(), Box<dyn Error>> {
        let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
        let root = manifest_dir.join(PROTO_ROOT);
        let dmi_proto = root.join(DMI_PROTO);
        println!("cargo:rerun-if-changed={}", dmi_proto.display());

        // The file set includes imports (google/protobuf/any.proto), which is
        // what lets prost-build generate `Any` itself.
        let fds = protox::compile([DMI_PROTO, WRAPPERS_PROTO], [&root])?;

        let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
        prost_build::Config::new()
            .out_dir(&out_dir)
            // Generate google.protobuf.* instead of mapping to prost-types.
            .compile_well_known_types()
            // Upstream comments on the well-known types contain code samples
            // that rustdoc would try to run as doctests.
            .disable_comments([".google.protobuf"])
            // Deterministic map encoding (sorted keys).
            .btree_map(["."])
            // `prost::Name` impls with standard `type.googleapis.com/...` URLs,
            // for packing values into `Any`.
            .enable_type_names()
            .type_name_domain(["."], "type.googleapis.com")
            .compile_fds(fds)?;
        Ok(())
    }
}
