//! KubeEdge's twin update rules as a pure function: given a device's twins and a request,
//! what changes, what the requester is told, what the document shows and what the cloud gets.
//!
//! Two kinds of request exist. A *local* update (MQTT `twin/update`, DMI reports) always wins and
//! bumps the edge counter of each side it sets. A *sync* from the cloud carries both counters
//! per side and is refused for a side whose local cloud counter is ahead ("version not allowed")
//! or whose local edge counter is ahead ("version conflict": the edge changed it since); the
//! refused twin is sent back to the cloud as it is at the edge.
//!
//! Where KubeEdge's code leaves stray entries behind (an empty twin in the cloud report after a
//! refused add, say), this module leaves nothing; the behaviour seen on the wire is the same.

use std::collections::BTreeMap;

use kubeedge_proto::twin::{
    MsgTwin, TwinDoc, TwinMap, TwinValue, TwinVersion, TypeMetadata, ValueMetadata,
    validate_value_type,
};

use crate::{Error, Result};

/// The value type of a soft-deleted twin.
pub const DELETED: &str = "deleted";

/// Where a twin request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DealKind {
    /// A local update (MQTT, DMI): accepted, edge counter + 1.
    Local,
    /// A sync from the cloud: version-checked.
    Sync,
}

/// What applying a request to a device's twins gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dealt {
    /// The device's twins after the request.
    pub twins: BTreeMap<String, MsgTwin>,
    /// The keys whose stored row changed.
    pub changed: Vec<String>,
    /// The result for the requester (local updates): changed twins without versions, `None`
    /// for a deleted twin.
    pub result: TwinMap,
    /// What goes to the cloud in `twin/edge_updated`: changed twins with versions (local
    /// updates) or the twins whose sync was refused (syncs).
    pub sync: TwinMap,
    /// Before and after of every changed twin.
    pub document: BTreeMap<String, TwinDoc>,
}

/// Applies `request` to `twins` at time `now` (ms). A local update fails as a whole on the first
/// invalid value (nothing is changed); a sync skips invalid twins.
pub fn deal(
    twins: &BTreeMap<String, MsgTwin>,
    request: &TwinMap,
    kind: DealKind,
    now: i64,
) -> Result<Dealt> {
    let mut out = Dealt {
        twins: twins.clone(),
        ..Dealt::default()
    };
    for (key, req) in request {
        match out.twins.get(key).cloned() {
            Some(current) => {
                let deleting = match (kind, req) {
                    (DealKind::Local, None) => true,
                    (DealKind::Sync, Some(req)) => type_of(req) == Some(DELETED),
                    _ => false,
                };
                if deleting {
                    delete(&mut out, key, current, req.as_ref(), kind);
                } else if let Some(req) = req {
                    compare(&mut out, key, current, req, kind, now)?;
                }
            }
            None => {
                if let Some(req) = req {
                    add(&mut out, key, req, kind, now)?;
                }
            }
        }
    }
    Ok(out)
}

/// The `delta` of the twins: every non-deleted twin with an expected value, and for each whose
/// expected value differs from its actual value, the expected value. `None` when nothing
/// differs (KubeEdge publishes no delta then).
pub fn delta(twins: &BTreeMap<String, MsgTwin>) -> Option<(TwinMap, BTreeMap<String, String>)> {
    let mut with_expected = TwinMap::new();
    let mut delta = BTreeMap::new();
    for (key, twin) in twins {
        if is_deleted(twin) {
            continue;
        }
        let Some(expected) = value_of(&twin.expected) else {
            continue;
        };
        with_expected.insert(key.clone(), Some(twin.without_versions()));
        if value_of(&twin.actual) != Some(expected) {
            delta.insert(key.clone(), expected.to_owned());
        }
    }
    (!delta.is_empty()).then_some((with_expected, delta))
}

/// The twins as `twin/get` returns them: deleted twins left out, versions stripped.
pub fn visible(twins: &BTreeMap<String, MsgTwin>) -> TwinMap {
    twins
        .iter()
        .filter(|(_, t)| !is_deleted(t))
        .map(|(k, t)| (k.clone(), Some(t.without_versions())))
        .collect()
}

/// Whether a twin is soft-deleted.
pub fn is_deleted(twin: &MsgTwin) -> bool {
    type_of(twin) == Some(DELETED)
}

fn type_of(twin: &MsgTwin) -> Option<&str> {
    twin.metadata.as_ref().map(|m| m.value_type.as_str())
}

fn value_of(side: &Option<TwinValue>) -> Option<&str> {
    side.as_ref().and_then(|v| v.value.as_deref())
}

/// KubeEdge's `dealVersion`: local updates bump the edge counter; syncs must not go back on
/// either counter and then adopt the request's counters.
fn deal_version(
    local: &mut TwinVersion,
    requested: Option<TwinVersion>,
    kind: DealKind,
    deleting: bool,
) -> std::result::Result<(), &'static str> {
    match kind {
        DealKind::Local => {
            local.edge += 1;
            Ok(())
        }
        DealKind::Sync => {
            let Some(req) = requested else {
                return if deleting {
                    Ok(())
                } else {
                    Err("Version not allowed be nil while syncing")
                };
            };
            if local.cloud > req.cloud {
                return Err("Version not allowed");
            }
            if local.edge > req.edge {
                return Err("Not allowed to sync due to version conflict");
            }
            *local = req;
            Ok(())
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Expected,
    Actual,
}

impl Side {
    fn value(self, t: &MsgTwin) -> &Option<TwinValue> {
        match self {
            Side::Expected => &t.expected,
            Side::Actual => &t.actual,
        }
    }
    fn value_mut(self, t: &mut MsgTwin) -> &mut Option<TwinValue> {
        match self {
            Side::Expected => &mut t.expected,
            Side::Actual => &mut t.actual,
        }
    }
    fn version(self, t: &MsgTwin) -> Option<TwinVersion> {
        match self {
            Side::Expected => t.expected_version,
            Side::Actual => t.actual_version,
        }
    }
    fn version_mut(self, t: &mut MsgTwin) -> &mut Option<TwinVersion> {
        match self {
            Side::Expected => &mut t.expected_version,
            Side::Actual => &mut t.actual_version,
        }
    }
}

const SIDES: [Side; 2] = [Side::Expected, Side::Actual];

fn delete(out: &mut Dealt, key: &str, current: MsgTwin, req: Option<&MsgTwin>, kind: DealKind) {
    if is_deleted(&current) {
        return;
    }
    if kind == DealKind::Local && current.optional == Some(false) {
        // Only optional twins may be deleted locally (KubeEdge ignores the request).
        return;
    }
    let mut twin = current.clone();
    let mut changed = false;
    for side in SIDES {
        let Some(mut version) = side.version(&current) else {
            continue;
        };
        let requested = req.and_then(|r| side.version(r));
        if deal_version(&mut version, requested, kind, true).is_err() {
            if kind == DealKind::Sync {
                // Refused: the cloud gets the twin back as the edge has it.
                out.sync.insert(key.to_owned(), Some(current.clone()));
            }
            return;
        }
        *side.value_mut(&mut twin) = None;
        *side.version_mut(&mut twin) = Some(version);
        changed = true;
    }
    if !changed {
        return;
    }
    twin.metadata = Some(TypeMetadata {
        value_type: DELETED.to_owned(),
    });
    out.document.insert(
        key.to_owned(),
        TwinDoc {
            last: Some(current.without_versions()),
            current: None,
        },
    );
    if kind == DealKind::Local {
        out.result.insert(key.to_owned(), None);
        out.sync.insert(key.to_owned(), Some(twin.clone()));
    }
    out.changed.push(key.to_owned());
    out.twins.insert(key.to_owned(), twin);
}

fn compare(
    out: &mut Dealt,
    key: &str,
    current: MsgTwin,
    req: &MsgTwin,
    kind: DealKind,
    now: i64,
) -> Result<()> {
    let was_deleted = is_deleted(&current);
    // A deleted twin takes the request's type; otherwise values are checked against its own.
    let value_type = if was_deleted {
        req.metadata
            .as_ref()
            .map(|m| m.value_type.clone())
            .unwrap_or_else(|| "string".to_owned())
    } else {
        current.value_type().to_owned()
    };
    let mut twin = current.clone();
    // What the requester and the cloud are told about this twin.
    let mut report = MsgTwin::default();
    let mut changed = false;
    let mut refused = false;
    for side in SIDES {
        if refused {
            break;
        }
        let Some(value) = value_of(side.value(req)) else {
            continue;
        };
        // KubeEdge checks the twin's type only when the side already had a value; a value of
        // the wrong type is refused either way here.
        if let Err(e) = validate_value_type(value, &value_type) {
            if kind == DealKind::Local {
                return Err(e.into());
            }
            continue;
        }
        let mut version = side.version(&current).unwrap_or_default();
        if deal_version(&mut version, side.version(req), kind, false).is_err() {
            // Only a sync can be refused: the cloud gets the edge's twin back.
            refused = true;
            continue;
        }
        let stamped = TwinValue {
            value: Some(value.to_owned()),
            metadata: Some(ValueMetadata { timestamp: now }),
        };
        *side.value_mut(&mut twin) = Some(stamped.clone());
        *side.version_mut(&mut twin) = Some(version);
        *side.value_mut(&mut report) = Some(stamped);
        *side.version_mut(&mut report) = Some(version);
        changed = true;
    }
    if refused {
        out.sync.insert(key.to_owned(), Some(current.clone()));
        return Ok(());
    }
    // `optional` may only go from true to false.
    if let Some(optional) = req.optional
        && current.optional == Some(true)
        && !optional
    {
        twin.optional = Some(false);
        changed = true;
    }
    match &req.metadata {
        Some(meta) if Some(meta) != current.metadata.as_ref() => {
            if was_deleted {
                twin.metadata = Some(meta.clone());
            }
            changed = true;
        }
        None if was_deleted => {
            twin.metadata = Some(TypeMetadata {
                value_type: "string".to_owned(),
            });
            changed = true;
        }
        _ => {}
    }
    if !changed {
        return Ok(());
    }
    report.optional = twin.optional;
    report.metadata = twin.metadata.clone();
    out.document.insert(
        key.to_owned(),
        TwinDoc {
            last: (!was_deleted).then(|| current.without_versions()),
            current: Some(twin.without_versions()),
        },
    );
    if kind == DealKind::Local {
        out.result
            .insert(key.to_owned(), Some(report.without_versions()));
        out.sync.insert(key.to_owned(), Some(report));
    }
    out.changed.push(key.to_owned());
    out.twins.insert(key.to_owned(), twin);
    Ok(())
}

fn add(out: &mut Dealt, key: &str, req: &MsgTwin, kind: DealKind, now: i64) -> Result<()> {
    let value_type = req.value_type().to_owned();
    let mut twin = MsgTwin {
        optional: Some(req.optional.unwrap_or(true)),
        metadata: Some(TypeMetadata {
            value_type: req
                .metadata
                .as_ref()
                .map(|m| m.value_type.clone())
                .unwrap_or_else(|| "string".to_owned()),
        }),
        ..MsgTwin::default()
    };
    if kind == DealKind::Sync && value_type == DELETED {
        // A twin deleted in the cloud that the edge never had: keep its versions.
        twin.expected_version = req.expected_version;
        twin.actual_version = req.actual_version;
    }
    for side in SIDES {
        let Some(value) = value_of(side.value(req)) else {
            continue;
        };
        let mut version = TwinVersion::default();
        if let Err(reason) = deal_version(&mut version, side.version(req), kind, false) {
            return match kind {
                DealKind::Local => Err(Error::Validation(reason.to_owned())),
                DealKind::Sync => Ok(()),
            };
        }
        if let Err(e) = validate_value_type(value, &value_type) {
            return match kind {
                DealKind::Local => Err(e.into()),
                DealKind::Sync => Ok(()),
            };
        }
        *side.value_mut(&mut twin) = Some(TwinValue {
            value: Some(value.to_owned()),
            metadata: Some(ValueMetadata { timestamp: now }),
        });
        *side.version_mut(&mut twin) = Some(version);
    }
    out.document.insert(
        key.to_owned(),
        TwinDoc {
            last: None,
            current: (!is_deleted(&twin)).then(|| twin.without_versions()),
        },
    );
    if kind == DealKind::Local {
        out.result
            .insert(key.to_owned(), Some(twin.without_versions()));
        out.sync.insert(key.to_owned(), Some(twin.clone()));
    }
    out.changed.push(key.to_owned());
    out.twins.insert(key.to_owned(), twin);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> TwinMap {
        serde_json::from_str(json).unwrap()
    }

    fn v(cloud: i64, edge: i64) -> Option<TwinVersion> {
        Some(TwinVersion { cloud, edge })
    }

    #[test]
    fn local_add_then_update_bumps_edge() {
        let none = BTreeMap::new();
        let first = deal(
            &none,
            &req(r#"{"t":{"actual":{"value":"25"},"metadata":{"type":"int"}}}"#),
            DealKind::Local,
            7,
        )
        .unwrap();
        let t = &first.twins["t"];
        assert_eq!(t.actual_version, v(0, 1));
        assert_eq!(t.expected_version, None);
        assert_eq!(t.optional, Some(true));
        let json = kubeedge_proto::go_json::to_vec(&first.result).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"t":{"actual":{"value":"25","metadata":{"timestamp":7}},"optional":true,"metadata":{"type":"int"}}}"#
        );
        let second = deal(
            &first.twins,
            &req(r#"{"t":{"actual":{"value":"26"}}}"#),
            DealKind::Local,
            8,
        )
        .unwrap();
        assert_eq!(second.twins["t"].actual_version, v(0, 2));
        assert_eq!(second.document["t"].last.as_ref().unwrap().actual, t.actual);
        // The value type is the twin's own: a non-integer is refused and nothing changes.
        let bad = deal(
            &second.twins,
            &req(r#"{"t":{"actual":{"value":"x"}}}"#),
            DealKind::Local,
            9,
        );
        assert!(matches!(bad, Err(Error::Validation(_))));
    }

    #[test]
    fn sync_rules() {
        let mut twins = BTreeMap::new();
        twins.insert(
            "t".to_owned(),
            MsgTwin {
                expected: Some(TwinValue {
                    value: Some("1".into()),
                    metadata: None,
                }),
                expected_version: v(2, 3),
                optional: Some(true),
                metadata: Some(TypeMetadata {
                    value_type: "int".into(),
                }),
                ..MsgTwin::default()
            },
        );
        // The cloud is behind on its own counter: refused and sent back.
        let behind = deal(
            &twins,
            &req(r#"{"t":{"expected":{"value":"5"},"expected_version":{"cloud":1,"edge":3}}}"#),
            DealKind::Sync,
            1,
        )
        .unwrap();
        assert!(behind.changed.is_empty());
        assert_eq!(behind.sync["t"].as_ref().unwrap().expected_version, v(2, 3));
        // The edge changed it since the cloud's version: conflict, refused.
        let conflict = deal(
            &twins,
            &req(r#"{"t":{"expected":{"value":"5"},"expected_version":{"cloud":3,"edge":2}}}"#),
            DealKind::Sync,
            1,
        )
        .unwrap();
        assert!(conflict.changed.is_empty());
        assert!(conflict.sync.contains_key("t"));
        // Versions missing: refused.
        let nil = deal(
            &twins,
            &req(r#"{"t":{"expected":{"value":"5"}}}"#),
            DealKind::Sync,
            1,
        )
        .unwrap();
        assert!(nil.changed.is_empty());
        // Newer on both: adopted, nothing sent back.
        let ok = deal(
            &twins,
            &req(r#"{"t":{"expected":{"value":"5"},"expected_version":{"cloud":3,"edge":3}}}"#),
            DealKind::Sync,
            1,
        )
        .unwrap();
        assert_eq!(ok.changed, ["t"]);
        assert!(ok.sync.is_empty() && ok.result.is_empty());
        assert_eq!(ok.twins["t"].expected_version, v(3, 3));
        // A sync delete needs no versions.
        let del = deal(
            &ok.twins,
            &req(r#"{"t":{"metadata":{"type":"deleted"}}}"#),
            DealKind::Sync,
            1,
        )
        .unwrap();
        assert!(is_deleted(&del.twins["t"]));
        assert_eq!(del.twins["t"].expected, None);
        assert_eq!(del.twins["t"].expected_version, v(3, 3));
    }

    #[test]
    fn local_delete_only_optional() {
        let first = deal(
            &BTreeMap::new(),
            &req(r#"{"a":{"actual":{"value":"1"}},"b":{"actual":{"value":"2"},"optional":false}}"#),
            DealKind::Local,
            1,
        )
        .unwrap();
        let del = deal(
            &first.twins,
            &req(r#"{"a":null,"b":null}"#),
            DealKind::Local,
            2,
        )
        .unwrap();
        assert_eq!(del.changed, ["a"]);
        assert_eq!(del.result.get("a"), Some(&None));
        assert!(is_deleted(&del.twins["a"]));
        assert_eq!(del.twins["a"].actual_version, v(0, 2));
        assert!(!is_deleted(&del.twins["b"]));
        assert!(visible(&del.twins).contains_key("b"));
        assert!(!visible(&del.twins).contains_key("a"));
        // Writing a deleted twin revives it with the request's type.
        let revived = deal(
            &del.twins,
            &req(r#"{"a":{"actual":{"value":"true"},"metadata":{"type":"boolean"}}}"#),
            DealKind::Local,
            3,
        )
        .unwrap();
        assert_eq!(revived.twins["a"].value_type(), "boolean");
        assert_eq!(revived.document["a"].last, None);
    }

    #[test]
    fn delta_lists_differences() {
        let t = deal(
            &BTreeMap::new(),
            &req(r#"{"s":{"expected":{"value":"40"},"actual":{"value":"38"}},"t":{"actual":{"value":"1"}},"u":{"expected":{"value":"1"},"actual":{"value":"1"}}}"#),
            DealKind::Local,
            1,
        )
        .unwrap();
        let (twin, delta) = delta(&t.twins).unwrap();
        assert_eq!(twin.keys().collect::<Vec<_>>(), ["s", "u"]);
        assert_eq!(
            delta.into_iter().collect::<Vec<_>>(),
            [("s".to_owned(), "40".to_owned())]
        );
    }
}
