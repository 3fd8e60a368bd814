//! Devices from `Device` and `DeviceModel` YAML files (`devices.kubeedge.io/v1beta1`), the
//! way `kubectl apply -f` reads them: files or directories, several documents per file.
//!
//! Every problem is an [`Error::InvalidDevice`] naming the file and the object (or the
//! document, when it is too broken to name anything); the other devices still load. Documents
//! are split on their `---` lines before parsing, so a syntax error in one document does not
//! hide the next.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::instance::{DeviceInstance, describe};
use crate::error::{Error, Result};

/// The largest YAML file read.
pub const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;
/// The most files read from one directory.
pub const MAX_DIR_FILES: usize = 4096;
/// The most documents read from one file.
pub const MAX_DOCUMENTS: usize = 4096;

/// The apiVersion of the CRDs this loader reads.
pub const API_VERSION: &str = "devices.kubeedge.io/v1beta1";

/// What [`load_yaml`] found: the devices it could join with their models, and an error for
/// each file, document or object it could not use.
#[derive(Debug, Default)]
pub struct LoadedDevices {
    /// The devices, in file and document order.
    pub devices: Vec<LoadedDevice>,
    /// One per problem; none of them stopped the other devices from loading.
    pub errors: Vec<Error>,
}

/// A device and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDevice {
    /// The file (or the origin given to [`load_yaml_str`]).
    pub file: PathBuf,
    /// The device, joined with its model.
    pub device: DeviceInstance,
}

impl LoadedDevices {
    /// Keeps only the devices of `protocol` (`spec.protocol.protocolName`, compared without
    /// case), as edgecore gives a mapper only its protocol's devices; returns how many were
    /// dropped.
    pub fn retain_protocol(&mut self, protocol: &str) -> usize {
        let before = self.devices.len();
        self.devices.retain(|d| {
            d.device
                .protocol
                .protocol_name
                .eq_ignore_ascii_case(protocol)
        });
        before - self.devices.len()
    }
}

/// Loads every `Device` and `DeviceModel` in `paths`: YAML files, or directories whose
/// `*.yaml` and `*.yml` files are read (not recursively, in name order). Models may be in
/// another file than their devices. Other kinds (a `DeviceStatus`, a `ConfigMap`...) are
/// skipped.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("thermo.yaml"), r#"
/// apiVersion: devices.kubeedge.io/v1beta1
/// kind: DeviceModel
/// metadata: {name: thermo-model}
/// spec:
///   protocol: modbus
///   properties: [{name: temperature, type: INT, accessMode: ReadWrite}]
/// ---
/// apiVersion: devices.kubeedge.io/v1beta1
/// kind: Device
/// metadata: {name: thermo-1}
/// spec:
///   deviceModelRef: {name: thermo-model}
///   protocol: {protocolName: modbus, configData: {ip: 127.0.0.1, port: 502, slaveID: 1}}
///   properties:
///     - name: temperature
///       collectCycle: 1000
///       reportCycle: 1000
///       reportToCloud: true
///       visitors: {protocolName: modbus, configData: {register: HoldingRegister, offset: 2}}
/// ---
/// kind: Device
/// metadata: {name: broken}
/// spec: {deviceModelRef: {name: no-such-model}}
/// "#).unwrap();
///
/// let loaded = kubeedge_mapper::runtime::load_yaml([dir.path()]);
/// assert_eq!(loaded.devices[0].device.id.to_string(), "default/thermo-1");
/// assert!(loaded.errors[0].to_string().ends_with(
///     "thermo.yaml: Device default/broken: DeviceModel default/no-such-model not found"));
/// ```
pub fn load_yaml<I, P>(paths: I) -> LoadedDevices
where
    I: IntoIterator<Item = P>,
    P: AsRef<Path>,
{
    let mut objects = Objects::default();
    let mut errors = Vec::new();
    for path in paths {
        let path = path.as_ref();
        match files(path) {
            Ok(files) => {
                for file in files {
                    match read_bounded(&file) {
                        Ok(text) => objects.add_text(&file, &text, &mut errors),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    objects.resolve(errors)
}

/// [`load_yaml`] for YAML text already in memory; `origin` names it in errors.
pub fn load_yaml_str(origin: impl AsRef<Path>, text: &str) -> LoadedDevices {
    let mut objects = Objects::default();
    let mut errors = Vec::new();
    objects.add_text(origin.as_ref(), text, &mut errors);
    objects.resolve(errors)
}

/// The files a path stands for.
fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path.display(), e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path.display(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path.display(), e))?;
        let file = entry.path();
        let is_yaml = file
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if is_yaml && std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            if files.len() == MAX_DIR_FILES {
                return Err(Error::io(
                    path.display(),
                    std::io::Error::other(format!(
                        "more than {MAX_DIR_FILES} YAML files; split the directory"
                    )),
                ));
            }
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

fn read_bounded(file: &Path) -> Result<String> {
    let handle = std::fs::File::open(file).map_err(|e| Error::io(file.display(), e))?;
    let mut bytes = Vec::new();
    handle
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(file.display(), e))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(Error::io(
            file.display(),
            std::io::Error::other(format!("larger than {MAX_FILE_LEN} bytes")),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::io(
            file.display(),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text ({})", e.utf8_error()),
            ),
        )
    })
}

/// The documents of a YAML stream, each with the line it starts on: split at `---` lines (and
/// at `...` document-end lines); chunks with nothing but blank lines, comments and directives
/// are dropped.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut flush = |current: &mut String, start: usize| {
        let meaningful = current.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !l.starts_with('%')
        });
        if meaningful {
            docs.push((start, std::mem::take(current)));
        }
        current.clear();
    };
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let rest = line
            .strip_prefix("---")
            .filter(|r| r.is_empty() || r.starts_with([' ', '\t']));
        if let Some(rest) = rest {
            flush(&mut current, start);
            start = line_no;
            current.push_str(rest);
            current.push('\n');
        } else if line
            .strip_prefix("...")
            .is_some_and(|r| r.trim().is_empty())
        {
            flush(&mut current, start);
            start = line_no + 1;
        } else {
            if current.is_empty() {
                start = line_no;
            }
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, start);
    docs
}

/// Devices and models read so far.
#[derive(Default)]
struct Objects {
    /// `<ns>/<name>` -> (file, model JSON).
    models: HashMap<String, (PathBuf, Json)>,
    /// (file, device JSON), in order.
    devices: Vec<(PathBuf, Json)>,
}

impl Objects {
    fn add_text(&mut self, file: &Path, text: &str, errors: &mut Vec<Error>) {
        let origin = file.display().to_string();
        let docs = documents(text);
        if docs.len() > MAX_DOCUMENTS {
            errors.push(Error::invalid_device(
                &origin,
                "file",
                format!("more than {MAX_DOCUMENTS} documents"),
            ));
            return;
        }
        for (index, (line, doc)) in docs.into_iter().enumerate() {
            let what = || format!("document {} (line {line})", index + 1);
            let value: Json = match serde_yaml_ng::from_str(&doc) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(Error::invalid_device(
                        &origin,
                        what(),
                        format!("not YAML: {e}"),
                    ));
                    continue;
                }
            };
            if value.is_null() {
                continue;
            }
            let Some(obj) = value.as_object() else {
                errors.push(Error::invalid_device(
                    &origin,
                    what(),
                    "not a Kubernetes object (a mapping with kind and metadata)",
                ));
                continue;
            };
            let kind = obj.get("kind").and_then(Json::as_str).unwrap_or("");
            if kind != "Device" && kind != "DeviceModel" {
                if kind.is_empty() {
                    errors.push(Error::invalid_device(&origin, what(), "it has no kind"));
                } else {
                    tracing::debug!(file = %origin, kind, "skipping a document that is not a Device or DeviceModel");
                }
                continue;
            }
            let object = describe(&value, kind);
            if let Some(version) = obj.get("apiVersion").filter(|v| !v.is_null())
                && version.as_str() != Some(API_VERSION)
            {
                errors.push(Error::invalid_device(
                    &origin,
                    &object,
                    format!("apiVersion {version} is not supported (only {API_VERSION})"),
                ));
                continue;
            }
            if kind == "Device" {
                self.devices.push((file.to_owned(), value));
                continue;
            }
            let key = match kubeedge_twin::dmi::convert::object_namespaced_name(&value) {
                Ok((ns, name)) => format!("{}/{name}", if ns.is_empty() { "default" } else { &ns }),
                Err(e) => {
                    errors.push(Error::invalid_device(&origin, &object, e));
                    continue;
                }
            };
            if let Some((first, _)) = self.models.get(&key) {
                errors.push(Error::invalid_device(
                    &origin,
                    &object,
                    format!(
                        "defined again (first in {}); this one is ignored",
                        first.display()
                    ),
                ));
                continue;
            }
            self.models.insert(key, (file.to_owned(), value));
        }
    }

    fn resolve(self, mut errors: Vec<Error>) -> LoadedDevices {
        let mut devices: Vec<LoadedDevice> = Vec::new();
        for (file, device) in self.devices {
            let origin = file.display().to_string();
            let object = describe(&device, "Device");
            let model_ref = kubeedge_twin::dmi::convert::device_model_ref(&device);
            let namespace = device
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Json::as_str)
                .filter(|ns| !ns.is_empty())
                .unwrap_or("default");
            let Some(model_ref) = model_ref else {
                errors.push(Error::invalid_device(
                    &origin,
                    &object,
                    "spec.deviceModelRef.name is missing",
                ));
                continue;
            };
            let key = format!("{namespace}/{model_ref}");
            let Some((_, model)) = self.models.get(&key) else {
                errors.push(Error::invalid_device(
                    &origin,
                    &object,
                    format!("DeviceModel {key} not found"),
                ));
                continue;
            };
            match DeviceInstance::from_crds(&device, model, &origin) {
                Ok(instance) => {
                    if let Some(first) = devices.iter().find(|d| d.device.id == instance.id) {
                        errors.push(Error::invalid_device(
                            &origin,
                            &object,
                            format!(
                                "defined again (first in {}); this one is ignored",
                                first.file.display()
                            ),
                        ));
                        continue;
                    }
                    devices.push(LoadedDevice {
                        file,
                        device: instance,
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        LoadedDevices { devices, errors }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::PropertyType;

    const MODEL: &str = "
apiVersion: devices.kubeedge.io/v1beta1
kind: DeviceModel
metadata:
  name: m
spec:
  protocol: modbus
  properties:
    - {name: t, type: INT, accessMode: ReadWrite}
    - {name: s, type: STRING, accessMode: ReadOnly}
";

    fn device(name: &str, props: &str) -> String {
        format!(
            "
apiVersion: devices.kubeedge.io/v1beta1
kind: Device
metadata:
  name: {name}
spec:
  deviceModelRef: {{name: m}}
  protocol: {{protocolName: modbus, configData: {{ip: 127.0.0.1, port: 1502}}}}
  properties: {props}
"
        )
    }

    #[test]
    fn documents_split_on_separator_lines_only() {
        let docs = documents("# c\n%YAML 1.2\n---\na: 1\n--- # x\nb: '---'\n...\n\n---\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0], (3, "\na: 1\n".to_owned()));
        assert_eq!(docs[1].0, 5);
        assert!(docs[1].1.contains("b: '---'"));
    }

    #[test]
    fn one_broken_document_does_not_hide_the_others() {
        let text = format!(
            "{MODEL}---\n{}---\nkind: Device\nmetadata: {{name: [unclosed\n---\n{}---\n{}---\n{}---\n{}",
            device(
                "good-1",
                "[{name: t, visitors: {configData: {register: HoldingRegister, offset: 0}}}]"
            ),
            device("good-2", "[{name: s}]"),
            device("no-such-prop", "[{name: humidity}]"),
            device("good-1", "[]"),
            "apiVersion: devices.kubeedge.io/v1alpha2\nkind: Device\nmetadata: {name: old}\n",
        );
        let loaded = load_yaml_str("devices.yaml", &text);
        let names: Vec<String> = loaded
            .devices
            .iter()
            .map(|d| d.device.id.to_string())
            .collect();
        assert_eq!(names, ["default/good-1", "default/good-2"]);
        assert_eq!(
            loaded.devices[0].device.properties[0].spec.property_type,
            PropertyType::Int
        );
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors[0].starts_with("devices.yaml: document 3 (line 21): not YAML: "),
            "{}",
            errors[0]
        );
        assert!(errors[1].starts_with("devices.yaml: Device default/old: apiVersion \"devices.kubeedge.io/v1alpha2\" is not supported"), "{}", errors[1]);
        assert_eq!(
            errors[2],
            "devices.yaml: Device default/no-such-prop: property humidity is not in DeviceModel m"
        );
        assert!(
            errors[3].starts_with("devices.yaml: Device default/good-1: defined again"),
            "{}",
            errors[3]
        );
    }

    #[test]
    fn files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-model.yaml"), MODEL).unwrap();
        std::fs::write(dir.path().join("b.yml"), device("d1", "[{name: t}]")).unwrap();
        std::fs::write(dir.path().join("c.txt"), device("ignored", "[]")).unwrap();
        std::fs::write(dir.path().join("d.yaml"), "kind: Device\nmetadata: {name: x}\nspec:\n  properties: 3\n  deviceModelRef: {name: m}\n").unwrap();
        std::fs::write(dir.path().join("e.yaml"), [0xff, 0xfe]).unwrap();
        let loaded = load_yaml([dir.path(), &dir.path().join("missing.yaml")]);
        assert_eq!(loaded.devices.len(), 1);
        assert_eq!(loaded.devices[0].file, dir.path().join("b.yml"));
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors.iter().any(|e| e.contains("e.yaml: not UTF-8 text")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("missing.yaml: No such file")),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e
                .ends_with("d.yaml: Device default/x: spec: properties is a number, not a list")),
            "{errors:#?}"
        );
    }

    #[test]
    fn retain_protocol_drops_other_mappers_devices() {
        let text = format!(
            "{MODEL}---\n{}---\n{}",
            device("d1", "[]"),
            device("d2", "[]").replace("protocolName: modbus", "protocolName: opcua")
        );
        let mut loaded = load_yaml_str("x.yaml", &text);
        assert_eq!(loaded.retain_protocol("Modbus"), 1);
        assert_eq!(loaded.devices.len(), 1);
    }
}
