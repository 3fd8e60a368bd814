//! The CustomResourceDefinitions of KubeEdge's device API, `devices.kubeedge.io/v1beta1`:
//! `Device`, `DeviceModel` and `DeviceStatus`.
//!
//! The manifests live in the crate's `crds/` folder (apply them with
//! `kubectl apply --server-side -f crds/`) and are compiled in here, so that a controller can
//! install them itself with [`install_crds`]. They are written for kubeedge-rs from KubeEdge's
//! v1beta1 field list: every field KubeEdge v1.23 defines, with the same types, so that
//! KubeEdge's own Device and DeviceModel manifests apply unchanged. KubeEdge's older
//! `v1alpha2` version is not served.

/// The `Device` CRD (`devices.devices.kubeedge.io`), YAML.
pub const DEVICE_CRD: &str = include_str!("../crds/devices.kubeedge.io_devices.yaml");

/// The `DeviceModel` CRD (`devicemodels.devices.kubeedge.io`), YAML.
pub const DEVICE_MODEL_CRD: &str = include_str!("../crds/devices.kubeedge.io_devicemodels.yaml");

/// The `DeviceStatus` CRD (`devicestatuses.devices.kubeedge.io`), YAML. It has no status
/// subresource: the cloud writes `status` with a merge patch on the object.
pub const DEVICE_STATUS_CRD: &str = include_str!("../crds/devices.kubeedge.io_devicestatuses.yaml");

/// All three CRDs, in the order [`install_crds`] applies them: Device, DeviceModel,
/// DeviceStatus.
pub const ALL_CRDS: [&str; 3] = [DEVICE_CRD, DEVICE_MODEL_CRD, DEVICE_STATUS_CRD];

/// The field manager of the server-side apply in [`install_crds`].
#[cfg(feature = "kube")]
const FIELD_MANAGER: &str = "kubeedge-cloud";

/// Creates or updates the three CRDs of [`ALL_CRDS`] by server-side apply
/// (`PATCH .../customresourcedefinitions/{name}?fieldManager=kubeedge-cloud&force=true`,
/// `application/apply-patch+yaml`), taking over fields another manager set.
///
/// Stops at the first failure: a refusal of the API server is [`Error::Api`](crate::Error::Api),
/// a transport or decoding failure [`Error::Client`](crate::Error::Client). The CRDs take a
/// moment to be established after this returns.
#[cfg(feature = "kube")]
pub async fn install_crds(client: &kube::Client) -> crate::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};

    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for yaml in ALL_CRDS {
        let crd: serde_json::Value = serde_yaml_ng::from_str(yaml)
            .map_err(|e| crate::Error::InvalidObject(format!("CRD manifest: {e}")))?;
        let name = crd
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| crate::Error::InvalidObject("CRD manifest without a name".into()))?;
        api.patch(name, &params, &Patch::Apply(&crd))
            .await
            .map_err(from_kube)?;
        tracing::debug!(crd = name, "CRD applied");
    }
    Ok(())
}

/// A kube error as this crate's: the API server's `Status` as [`crate::ApiError`], anything
/// else as text.
#[cfg(feature = "kube")]
fn from_kube(error: kube::Error) -> crate::Error {
    match error {
        kube::Error::Api(status) => {
            crate::ApiError::new(status.code, status.reason, status.message).into()
        }
        other => crate::Error::Client(other.to_string()),
    }
}
