//! Reading the manifest folder: bounded files, YAML whose aliases cannot expand a document past
//! a budget, and documents normalized to the objects the controllers see (blocking; runs on
//! tokio's blocking pool).

use super::*;

pub(super) enum FileRead {
    /// The same content as last time.
    Same,
    Parsed {
        hash: u64,
        docs: Vec<Doc>,
    },
    Failed {
        hash: Option<u64>,
        reason: String,
    },
}

pub(super) fn is_manifest(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(".");
    !name.starts_with('.')
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

pub(super) fn read_manifests(
    dir: &Path,
    attempted: &HashMap<PathBuf, u64>,
) -> std::result::Result<Vec<(PathBuf, FileRead)>, String> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if !is_manifest(&path) {
            continue;
        }
        // Follows links; a dangling one is kept so that its read fails (and keeps its objects).
        if fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        if paths.len() >= ManifestConfig::MAX_OBJECTS {
            return Err(format!(
                "more than {} manifest files",
                ManifestConfig::MAX_OBJECTS
            ));
        }
        paths.push(path);
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|path| {
            let read = read_manifest(&path, attempted.get(&path).copied());
            (path, read)
        })
        .collect())
}

pub(super) fn read_manifest(path: &Path, attempted: Option<u64>) -> FileRead {
    let bytes = match read_limited(path) {
        Ok(bytes) => bytes,
        Err(reason) => return FileRead::Failed { hash: None, reason },
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    let hash = hasher.finish();
    if attempted == Some(hash) {
        return FileRead::Same;
    }
    match parse_manifest(path, &bytes) {
        Ok(docs) => FileRead::Parsed { hash, docs },
        Err(reason) => FileRead::Failed {
            hash: Some(hash),
            reason,
        },
    }
}

/// A file's bytes, refused beyond [`ManifestConfig::MAX_FILE_BYTES`].
pub(super) fn read_limited(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let max = ManifestConfig::MAX_FILE_BYTES;
    let too_big = |len: u64| format!("{len} bytes, more than the limit of {max} bytes");
    let file = fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len > max {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

pub(super) fn parse_manifest(path: &Path, bytes: &[u8]) -> std::result::Result<Vec<Doc>, String> {
    let max = ManifestConfig::MAX_OBJECTS;
    let too_many = || format!("more than {max} objects");
    let mut raw = Vec::new();
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        for (i, value) in serde_json::Deserializer::from_slice(bytes)
            .into_iter::<Value>()
            .enumerate()
        {
            if i >= max {
                return Err(too_many());
            }
            raw.push(value.map_err(|e| format!("document {}: {e}", i + 1))?);
        }
    } else {
        // Aliases may repeat a subtree; no document expands past twice the file's size.
        let budget = Budget(Cell::new(
            bytes.len().saturating_mul(2).saturating_add(4096),
        ));
        for (i, document) in serde_yaml_ng::Deserializer::from_slice(bytes).enumerate() {
            if i >= max {
                return Err(too_many());
            }
            let value = ValueSeed(&budget)
                .deserialize(document)
                .map_err(|e| format!("document {}: {e}", i + 1))?;
            raw.push(value);
        }
    }
    let mut docs = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let skip = |reason: String| {
            tracing::warn!(path = %path.display(), document = i + 1, %reason, "manifest document skipped");
        };
        match value {
            Value::Null => {}
            Value::Object(mut map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                match map.remove("items") {
                    Some(Value::Array(items)) => {
                        for (j, item) in items.into_iter().enumerate() {
                            match normalize(item) {
                                Ok(doc) => docs.push(doc),
                                Err(reason) => skip(format!("item {}: {reason}", j + 1)),
                            }
                            if docs.len() > max {
                                return Err(too_many());
                            }
                        }
                    }
                    None | Some(Value::Null) => {}
                    Some(_) => skip("a List whose items is not a list".into()),
                }
            }
            value => match normalize(value) {
                Ok(doc) => docs.push(doc),
                Err(reason) => skip(reason),
            },
        }
        if docs.len() > max {
            return Err(too_many());
        }
    }
    Ok(docs)
}

/// Checks a manifest document and fills in what the API server would (namespace `default`),
/// dropping what only it may set.
pub(super) fn normalize(mut value: Value) -> std::result::Result<Doc, String> {
    let Some(map) = value.as_object_mut() else {
        return Err("not a mapping".into());
    };
    let text = |field: &str| map.get(field).and_then(Value::as_str).unwrap_or("");
    let (kind_name, api_version) = (text("kind"), text("apiVersion"));
    let Some(kind) = Kind::of(kind_name, api_version) else {
        return Err(format!(
            "kind {kind_name:?} of apiVersion {api_version:?} is not handled"
        ));
    };
    if kind == Kind::Pod {
        // Like the API server: a pod's status is not created from its manifest.
        map.remove("status");
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err("metadata is not a mapping".into());
    };
    for field in SERVER_SET {
        meta.remove(field);
    }
    let name = match meta.get("name") {
        Some(Value::String(name)) if valid_name(name) => name.clone(),
        other => {
            return Err(format!(
                "metadata.name {} is not a DNS-1123 subdomain",
                other.map_or_else(|| "(none)".to_owned(), Value::to_string)
            ));
        }
    };
    let namespace = if kind.namespaced() {
        let namespace = match meta.get("namespace") {
            None | Some(Value::Null) => "default".to_owned(),
            Some(Value::String(ns)) if ns.is_empty() => "default".to_owned(),
            Some(Value::String(ns)) if valid_namespace(ns) => ns.clone(),
            Some(other) => {
                return Err(format!(
                    "metadata.namespace {other} is not a DNS-1123 label"
                ));
            }
        };
        meta.insert("namespace".into(), namespace.clone().into());
        namespace
    } else {
        meta.remove("namespace");
        String::new()
    };
    match meta.get("uid") {
        None => {}
        Some(Value::Null) => {
            meta.remove("uid");
        }
        Some(Value::String(uid)) if !uid.is_empty() && uid.len() <= 128 => {}
        Some(other) => return Err(format!("metadata.uid {other} is not a uid")),
    }
    Ok(Doc {
        key: ObjectKey::new(kind, namespace, name),
        value,
    })
}

/// What a YAML document may still expand to (nodes plus string bytes).
pub(super) struct Budget(Cell<usize>);

impl Budget {
    fn charge<E: de::Error>(&self, cost: usize) -> std::result::Result<(), E> {
        let left = self.0.get();
        if cost > left {
            return Err(E::custom(
                "the document expands past the size limit (YAML aliases?)",
            ));
        }
        self.0.set(left - cost);
        Ok(())
    }
}

/// Deserializes a JSON value from YAML within a [`Budget`].
#[derive(Clone, Copy)]
pub(super) struct ValueSeed<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value JSON can hold")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold (NaN or infinite)"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Value, E> {
        self.0.charge(1 + v.len())?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Value, E> {
        self.0.charge(1 + v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Value, E> {
        self.0.charge(1)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        self.0.charge(1)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> std::result::Result<Value, A::Error> {
        self.0.charge(1)?;
        let mut map = Map::new();
        while let Some(key) = access.next_key_seed(KeySeed(self.0))? {
            let value = access.next_value_seed(self)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

/// A mapping key: a string; numbers and booleans become their text (as `sigs.k8s.io/yaml`).
pub(super) struct KeySeed<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<String, E> {
        self.0.charge(1 + v.len())?;
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<String, E> {
        self.0.charge(1 + v.len())?;
        Ok(v)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<String, E> {
        self.visit_string(v.to_string())
    }
}
