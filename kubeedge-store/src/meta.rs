//! Rows of KubeEdge's `meta` table, with idempotent upsert and uid-checked delete.
//!
//! `meta` holds one row per object the edge knows: `key` is the resource path as the edge sees
//! it (`default/pod/nginx`, `default/node/edge-1`), `type` the resource type segment, `value` the
//! object's JSON. Beside it, `kubeedge_rs_meta_version` remembers each object's uid and
//! resourceVersion so that a re-sent or out-of-order update never overwrites a newer one, and
//! `kubeedge_rs_deleted` the incarnations (key and uid) deleted lately, so that an update or a
//! reply that arrives after the delete never brings a deleted object back.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;

/// One row of `meta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRow {
    /// `key`: the edge resource path.
    pub key: String,
    /// `type`: the resource type (`pod`, `configmap`, ...).
    pub kind: String,
    /// `value`: the object's JSON (or, for rows KubeEdge wrote for non-objects, any text).
    pub value: String,
}

/// The identity and version of a Kubernetes object, read from its `metadata`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectVersion {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`, as a number (Kubernetes versions are decimal integers).
    pub resource_version: u64,
}

impl ObjectVersion {
    /// Reads `metadata.uid` and `metadata.resourceVersion` from an object's JSON; `None` when
    /// either is missing or the version is not a decimal integer.
    pub fn of(json: &[u8]) -> Option<Self> {
        let meta = kubeedge_proto::ObjectMeta::of(json)?;
        let resource_version = meta.resource_version.parse().ok()?;
        (!meta.uid.is_empty()).then_some(Self {
            uid: meta.uid,
            resource_version,
        })
    }
}

/// What an upsert did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upserted {
    /// The row was written.
    Stored,
    /// The store already holds this object at the same or a newer resourceVersion; nothing
    /// was written.
    Stale {
        /// The resourceVersion already stored.
        stored: u64,
    },
    /// This incarnation (key and uid) was deleted; nothing was written.
    Deleted,
}

/// Deleted incarnations remembered (the oldest are forgotten first). An update for one that
/// arrives later than this many deletes after its own is applied again.
pub const DELETED_KEPT: i64 = 4096;

/// Writes a row unless `version` is older than (or equal to) what is stored for the same uid,
/// or names an incarnation deleted lately ([`Upserted::Deleted`]). A different uid (the object
/// was deleted and created again) always wins.
pub fn upsert(
    conn: &Connection,
    key: &str,
    kind: &str,
    value: &str,
    version: Option<&ObjectVersion>,
) -> Result<Upserted> {
    if let Some(version) = version {
        if was_deleted(conn, key, &version.uid)? {
            return Ok(Upserted::Deleted);
        }
        let stored: Option<(String, i64)> = conn
            .query_row(
                "SELECT uid, resource_version FROM kubeedge_rs_meta_version WHERE key = ?1",
                [key],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        if let Some((uid, rv)) = stored {
            let rv = u64::try_from(rv).unwrap_or(0);
            if uid == version.uid && rv >= version.resource_version {
                return Ok(Upserted::Stale { stored: rv });
            }
        }
        conn.execute(
            "INSERT OR REPLACE INTO kubeedge_rs_meta_version (key, uid, resource_version)
             VALUES (?1, ?2, ?3)",
            params![
                key,
                version.uid,
                i64::try_from(version.resource_version).unwrap_or(i64::MAX)
            ],
        )?;
    } else {
        conn.execute("DELETE FROM kubeedge_rs_meta_version WHERE key = ?1", [key])?;
    }
    // Exactly KubeEdge's upsert.
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, type, value) VALUES (?1, ?2, ?3)",
        params![key, kind, value],
    )?;
    Ok(Upserted::Stored)
}

/// Deletes a row. With `uid`, only a row holding that uid is deleted (KubeEdge's pod rule: a
/// delete for an old incarnation must not remove the new one). The deleted row's uid, if its
/// version is known, is remembered ([`record_deleted`]). Returns whether a row went.
pub fn delete(conn: &Connection, key: &str, uid: Option<&str>) -> Result<bool> {
    if let Some(uid) = uid {
        let stored_uid: Option<String> = conn
            .query_row(
                "SELECT uid FROM kubeedge_rs_meta_version WHERE key = ?1",
                [key],
                |r| r.get(0),
            )
            .optional()?;
        let matches = match stored_uid {
            Some(stored) => stored == uid,
            // A row without our version entry (written by KubeEdge): KubeEdge's own test.
            None => conn
                .query_row(
                    "SELECT 1 FROM meta WHERE key = ?1 AND instr(value, ?2) > 0",
                    params![key, uid],
                    |_| Ok(()),
                )
                .optional()?
                .is_some(),
        };
        if !matches {
            return Ok(false);
        }
    }
    let stored_uid: Option<String> = conn
        .query_row(
            "DELETE FROM kubeedge_rs_meta_version WHERE key = ?1 RETURNING uid",
            [key],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(uid) = stored_uid {
        record_deleted(conn, key, &uid)?;
    }
    Ok(conn.execute("DELETE FROM meta WHERE key = ?1", [key])? > 0)
}

/// Remembers that the incarnation `uid` of `key` is deleted: [`upsert`] refuses it from now on
/// (until [`DELETED_KEPT`] later deletes push it out).
pub fn record_deleted(conn: &Connection, key: &str, uid: &str) -> Result<()> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO kubeedge_rs_deleted (key, uid, seq)
         VALUES (?1, ?2, (SELECT coalesce(max(seq), 0) + 1 FROM kubeedge_rs_deleted))",
        params![key, uid],
    )?;
    if inserted == 1 {
        conn.execute(
            "DELETE FROM kubeedge_rs_deleted
             WHERE seq <= (SELECT max(seq) FROM kubeedge_rs_deleted) - ?1",
            [DELETED_KEPT],
        )?;
    }
    Ok(())
}

/// Whether the incarnation `uid` of `key` was deleted lately.
pub fn was_deleted(conn: &Connection, key: &str, uid: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM kubeedge_rs_deleted WHERE key = ?1 AND uid = ?2",
            params![key, uid],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The row at `key`.
pub fn get(conn: &Connection, key: &str) -> Result<Option<MetaRow>> {
    Ok(conn
        .query_row(
            "SELECT key, type, value FROM meta WHERE key = ?1",
            [key],
            row_to_meta,
        )
        .optional()?)
}

/// Every row of one type, in key order (KubeEdge's list query).
pub fn list_by_type(conn: &Connection, kind: &str) -> Result<Vec<MetaRow>> {
    let mut stmt =
        conn.prepare_cached("SELECT key, type, value FROM meta WHERE type = ?1 ORDER BY key")?;
    let rows = stmt.query_map([kind], row_to_meta)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every row of one type in one namespace (`<ns>/<type>/...`), in key order.
pub fn list_in_namespace(conn: &Connection, namespace: &str, kind: &str) -> Result<Vec<MetaRow>> {
    // Keys from `<ns>/<type>/` up to, not including, `<ns>/<type>0` ('0' follows '/'): a range
    // the primary key index answers.
    let from = format!("{namespace}/{kind}/");
    let to = format!("{namespace}/{kind}0");
    let mut stmt = conn.prepare_cached(
        "SELECT key, type, value FROM meta WHERE key >= ?1 AND key < ?2 AND type = ?3 ORDER BY key",
    )?;
    let rows = stmt.query_map(params![from, to, kind], row_to_meta)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records `msg_id` as applied; `false` if it was already recorded. Keeps the newest `keep`
/// ids.
pub fn mark_seen(conn: &Connection, msg_id: &str, keep: u64) -> Result<bool> {
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO kubeedge_rs_seen (msg_id, seq)
         VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM kubeedge_rs_seen))",
        [msg_id],
    )?;
    if inserted == 1 {
        conn.execute(
            "DELETE FROM kubeedge_rs_seen
             WHERE seq <= (SELECT max(seq) FROM kubeedge_rs_seen) - ?1",
            [i64::try_from(keep).unwrap_or(i64::MAX)],
        )?;
    }
    Ok(inserted == 1)
}

/// Whether `msg_id` was recorded by [`mark_seen`].
pub fn was_seen(conn: &Connection, msg_id: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM kubeedge_rs_seen WHERE msg_id = ?1",
            [msg_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn row_to_meta(row: &rusqlite::Row<'_>) -> rusqlite::Result<MetaRow> {
    Ok(MetaRow {
        key: row.get(0)?,
        kind: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
        value: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
    })
}
