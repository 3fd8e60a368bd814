//! Facts about the workspace that no single crate can check.

/// `kubeedge-proto` (the DMI message types) and `kubeedge-dmi` (the DMI gRPC stubs) each
/// compile KubeEdge's DMI schema from a copy inside the crate, so that each packages on its
/// own; the copies must be the same file.
#[test]
fn both_copies_of_the_dmi_schema_are_the_same() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let read = |crate_dir: &str| {
        std::fs::read(root.join(crate_dir).join("proto/dmi/v1beta1/api.proto")).unwrap()
    };
    assert!(
        read("kubeedge-proto") == read("kubeedge-dmi"),
        "kubeedge-dmi/proto/dmi/v1beta1/api.proto differs from kubeedge-proto's: copy it over"
    );
}
