//! Devices, attributes and twins in KubeEdge's `device`, `device_attr` and `device_twin` tables,
//! with KubeEdge's column encodings (so an existing `edgecore.db` is read, and KubeEdge could
//! read ours): `expected_meta`/`actual_meta` hold `{"timestamp":ms}`, the versions
//! `{"cloud":c,"edge":e}`, `metadata` the type metadata without its type (the type is in
//! `attr_type`), `optional` 0 or 1.

use std::collections::BTreeMap;

use kubeedge_proto::DeviceId;
use kubeedge_proto::device::MsgAttr;
use kubeedge_proto::twin::{MsgTwin, TwinValue, TwinVersion, TypeMetadata, ValueMetadata};
use rusqlite::{Connection, params};

use crate::topic::parse_device_id;

/// A device as the twin keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// `<namespace>/<name>`.
    pub id: DeviceId,
    /// The device's name.
    pub name: String,
    /// Its description (the Device's `description` label).
    pub description: String,
    /// The last reported state (`online`, `offline`, `ok`, `unknown`, `unhealthy`), or empty.
    pub state: String,
    /// When it was last reported online or ok (RFC 3339 UTC), or empty.
    pub last_online: String,
    /// Attributes by name.
    pub attributes: BTreeMap<String, MsgAttr>,
    /// Twins by name (soft-deleted ones included, with type `deleted`).
    pub twins: BTreeMap<String, MsgTwin>,
}

/// Loads every device with its attributes and twins. Rows whose device id is not a valid
/// `<namespace>/<name>` are skipped with a warning.
pub(crate) fn load(db: &Connection) -> rusqlite::Result<BTreeMap<DeviceId, DeviceRecord>> {
    let mut devices = BTreeMap::new();
    let mut stmt =
        db.prepare("SELECT id, name, description, state, last_online FROM device ORDER BY id")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            opt_text(row, 1)?,
            opt_text(row, 2)?,
            opt_text(row, 3)?,
            opt_text(row, 4)?,
        ))
    })?;
    for row in rows {
        let (id, name, description, state, last_online) = row?;
        let Ok(device_id) = parse_device_id(&id) else {
            tracing::warn!(id = %id, "skipping a device row whose id is not <namespace>/<name>");
            continue;
        };
        devices.insert(
            device_id.clone(),
            DeviceRecord {
                id: device_id,
                name,
                description,
                state,
                last_online,
                attributes: BTreeMap::new(),
                twins: BTreeMap::new(),
            },
        );
    }
    let mut stmt = db.prepare(
        "SELECT deviceid, name, value, optional, attr_type, metadata FROM device_attr ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            opt_text(row, 1)?,
            MsgAttr {
                value: opt_text(row, 2)?,
                optional: Some(row.get::<_, Option<bool>>(3)?.unwrap_or(true)),
                metadata: Some(TypeMetadata {
                    value_type: opt_text(row, 4)?,
                }),
            },
        ))
    })?;
    for row in rows {
        let (id, name, attr) = row?;
        if let Some(device) = find(&mut devices, &id) {
            device.attributes.insert(name, attr);
        }
    }
    let mut stmt = db.prepare(
        "SELECT deviceid, name, expected, actual, expected_meta, actual_meta, expected_version,
                actual_version, optional, attr_type
         FROM device_twin ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        let side = |value: Option<String>, meta: Option<String>| {
            value.map(|value| TwinValue {
                value: Some(value),
                metadata: meta.and_then(|m| serde_json::from_str::<ValueMetadata>(&m).ok()),
            })
        };
        let version =
            |v: Option<String>| v.and_then(|v| serde_json::from_str::<TwinVersion>(&v).ok());
        let twin = MsgTwin {
            expected: side(row.get(2)?, row.get(4)?),
            actual: side(row.get(3)?, row.get(5)?),
            expected_version: version(row.get(6)?),
            actual_version: version(row.get(7)?),
            optional: Some(row.get::<_, Option<bool>>(8)?.unwrap_or(true)),
            metadata: Some(TypeMetadata {
                value_type: opt_text(row, 9)?,
            }),
        };
        Ok((row.get::<_, String>(0)?, opt_text(row, 1)?, twin))
    })?;
    for row in rows {
        let (id, name, twin) = row?;
        if let Some(device) = find(&mut devices, &id) {
            device.twins.insert(name, twin);
        }
    }
    Ok(devices)
}

fn find<'a>(
    devices: &'a mut BTreeMap<DeviceId, DeviceRecord>,
    id: &str,
) -> Option<&'a mut DeviceRecord> {
    let id = parse_device_id(id).ok()?;
    devices.get_mut(&id)
}

fn opt_text(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    Ok(row.get::<_, Option<String>>(i)?.unwrap_or_default())
}

/// Inserts a device or updates its name and description (state is kept), and replaces its
/// attributes.
pub(crate) fn upsert_device(db: &Connection, device: &DeviceRecord) -> rusqlite::Result<()> {
    let id = device.id.to_string();
    db.prepare_cached(
        "INSERT INTO device (id, name, description, state, last_online) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, description = excluded.description",
    )?
    .execute(params![
        id,
        device.name,
        device.description,
        device.state,
        device.last_online
    ])?;
    db.prepare_cached("DELETE FROM device_attr WHERE deviceid = ?1")?
        .execute([&id])?;
    let mut insert = db.prepare_cached(
        "INSERT INTO device_attr (deviceid, name, description, value, optional, attr_type, metadata)
         VALUES (?1, ?2, '', ?3, ?4, ?5, '{}')",
    )?;
    for (name, attr) in &device.attributes {
        let value_type = attr
            .metadata
            .as_ref()
            .map(|m| m.value_type.as_str())
            .unwrap_or("string");
        insert.execute(params![
            id,
            name,
            attr.value,
            attr.optional.unwrap_or(true),
            value_type
        ])?;
    }
    Ok(())
}

/// Removes a device with its attributes and twins.
pub(crate) fn delete_device(db: &Connection, id: &DeviceId) -> rusqlite::Result<()> {
    let id = id.to_string();
    for sql in [
        "DELETE FROM device_twin WHERE deviceid = ?1",
        "DELETE FROM device_attr WHERE deviceid = ?1",
        "DELETE FROM device WHERE id = ?1",
    ] {
        db.prepare_cached(sql)?.execute([&id])?;
    }
    Ok(())
}

/// Writes the state columns.
pub(crate) fn save_state(
    db: &Connection,
    id: &DeviceId,
    state: &str,
    last_online: &str,
) -> rusqlite::Result<()> {
    db.prepare_cached("UPDATE device SET state = ?2, last_online = ?3 WHERE id = ?1")?
        .execute(params![id.to_string(), state, last_online])?;
    Ok(())
}

/// Writes the rows of the named twins of a device (updating in place, inserting new ones).
pub(crate) fn save_twins<'a>(
    db: &Connection,
    id: &DeviceId,
    twins: impl IntoIterator<Item = (&'a str, &'a MsgTwin)>,
) -> rusqlite::Result<()> {
    let id = id.to_string();
    let mut update = db.prepare_cached(
        "UPDATE device_twin SET expected = ?3, actual = ?4, expected_meta = ?5, actual_meta = ?6,
                expected_version = ?7, actual_version = ?8, optional = ?9, attr_type = ?10,
                metadata = ?11
         WHERE deviceid = ?1 AND name = ?2",
    )?;
    let mut insert = db.prepare_cached(
        "INSERT INTO device_twin (deviceid, name, description, expected, actual, expected_meta,
                actual_meta, expected_version, actual_version, optional, attr_type, metadata)
         VALUES (?1, ?2, '', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for (name, twin) in twins {
        let value = |side: &Option<TwinValue>| side.as_ref().and_then(|v| v.value.clone());
        let meta = |side: &Option<TwinValue>| {
            side.as_ref()
                .and_then(|v| v.metadata.as_ref())
                .map(|m| format!(r#"{{"timestamp":{}}}"#, m.timestamp))
        };
        let version = |v: &Option<TwinVersion>| {
            v.map(|v| format!(r#"{{"cloud":{},"edge":{}}}"#, v.cloud, v.edge))
        };
        let values = params![
            id,
            name,
            value(&twin.expected),
            value(&twin.actual),
            meta(&twin.expected),
            meta(&twin.actual),
            version(&twin.expected_version),
            version(&twin.actual_version),
            twin.optional.unwrap_or(true),
            twin.value_type(),
            "{}",
        ];
        if update.execute(values)? == 0 {
            insert.execute(values)?;
        }
    }
    Ok(())
}
