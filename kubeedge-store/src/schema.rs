//! The database schema: KubeEdge's own `edgecore.db` tables, and ours beside them, created or
//! upgraded by versioned migrations when the store opens.
//!
//! KubeEdge's tables keep KubeEdge's names, columns and types (gorm's SQLite mapping: string →
//! `text`, bool → `numeric`, int → `integer`), so an existing `edgecore.db` opens and its rows are
//! read, and a KubeEdge edgecore could read ours. Our own tables are prefixed `kubeedge_rs_`.
//! The schema version lives in SQLite's `user_version` (KubeEdge leaves it at 0).

use rusqlite::Connection;

use crate::Result;

/// The schema version this crate writes.
pub const SCHEMA_VERSION: u32 = 3;

/// Migration `n` brings a database from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1: KubeEdge's tables (kept if they exist), our version index, dedupe ledger, outbox.
    r#"
    CREATE TABLE IF NOT EXISTS meta (
        key   text PRIMARY KEY,
        type  text,
        value text
    );
    CREATE TABLE IF NOT EXISTS meta_v2 (
        key                    text PRIMARY KEY,
        group_version_resource text,
        namespace              text,
        name                   text,
        resource_version       integer,
        value                  text
    );
    CREATE TABLE IF NOT EXISTS device (
        id          text PRIMARY KEY,
        name        text,
        description text,
        state       text,
        last_online text
    );
    CREATE TABLE IF NOT EXISTS device_attr (
        id          integer PRIMARY KEY AUTOINCREMENT,
        deviceid    text,
        name        text,
        description text,
        value       text,
        optional    numeric,
        attr_type   text,
        metadata    text
    );
    CREATE TABLE IF NOT EXISTS device_twin (
        id               integer PRIMARY KEY AUTOINCREMENT,
        deviceid         text,
        name             text,
        description      text,
        expected         text,
        actual           text,
        expected_meta    text,
        actual_meta      text,
        expected_version text,
        actual_version   text,
        optional         numeric,
        attr_type        text,
        metadata         text
    );
    CREATE TABLE IF NOT EXISTS sub_topics (topic text PRIMARY KEY);
    CREATE TABLE IF NOT EXISTS target_urls (url text PRIMARY KEY);

    -- List queries select by type; KubeEdge ignores extra indexes.
    CREATE INDEX IF NOT EXISTS kubeedge_rs_meta_type ON meta (type);

    -- The uid and resourceVersion of every object in `meta`, so that a stale or duplicate
    -- update never regresses the stored state (KubeEdge compares nothing).
    CREATE TABLE kubeedge_rs_meta_version (
        key              text PRIMARY KEY,
        uid              text NOT NULL,
        resource_version integer NOT NULL
    );

    -- Message ids already applied, oldest pruned first (idempotent apply by msg_id).
    CREATE TABLE kubeedge_rs_seen (
        msg_id text PRIMARY KEY,
        seq    integer NOT NULL
    );
    CREATE INDEX kubeedge_rs_seen_seq ON kubeedge_rs_seen (seq);

    -- Edge-to-cloud messages waiting for the cloud's reply, in send order.
    CREATE TABLE kubeedge_rs_outbox (
        seq          integer PRIMARY KEY AUTOINCREMENT,
        msg_id       text NOT NULL UNIQUE,
        coalesce_key text UNIQUE,
        message      text NOT NULL,
        enqueued_at  integer NOT NULL
    );
    "#,
    // 1 -> 2: the device twin reads and writes twins and attributes by (device, name).
    r#"
    CREATE INDEX IF NOT EXISTS kubeedge_rs_device_twin_key ON device_twin (deviceid, name);
    CREATE INDEX IF NOT EXISTS kubeedge_rs_device_attr_key ON device_attr (deviceid, name);
    "#,
    // 2 -> 3: the incarnations (key, uid) deleted lately, so that a late update or reply for
    // one never brings it back; oldest pruned first.
    r#"
    CREATE TABLE kubeedge_rs_deleted (
        key text NOT NULL,
        uid text NOT NULL,
        seq integer NOT NULL,
        PRIMARY KEY (key, uid)
    );
    CREATE INDEX kubeedge_rs_deleted_seq ON kubeedge_rs_deleted (seq);
    "#,
];

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction; returns the version found.
pub(crate) fn migrate(conn: &mut Connection) -> Result<u32> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found as usize > MIGRATIONS.len() {
        return Err(crate::Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let tx = conn.transaction()?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (version + 1) as u32)?;
    }
    tx.commit()?;
    Ok(found)
}
