//! The store on real SQLite files: schema and migrations, an edgecore.db made with KubeEdge's own
//! table definitions, hostile files, size limits, and group commit under concurrency.

use std::sync::Arc;

use kubeedge_proto::{Content, Message, NodeName};
use kubeedge_store::{
    Error, FullPolicy, MetaManager, MetaManagerConfig, Outbox, Pushed, SCHEMA_VERSION, Store,
    StoreConfig, meta,
};

fn config(dir: &tempfile::TempDir) -> StoreConfig {
    StoreConfig::new(dir.path().join("edgecore.db"))
}

#[tokio::test]
async fn creates_the_schema_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(config(&dir)).unwrap();
        store
            .write(|db| meta::upsert(db, "default/configmap/c", "configmap", "{}", None))
            .await
            .unwrap();
    }
    let store = Store::open(config(&dir)).unwrap();
    let (version, row, tables) = store
        .read(|db| {
            let version: u32 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            let row = meta::get(db, "default/configmap/c")?;
            let mut stmt = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
            let tables: Vec<String> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok((version, row, tables))
        })
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(row.unwrap().kind, "configmap");
    for table in [
        "meta",
        "meta_v2",
        "device",
        "device_attr",
        "device_twin",
        "sub_topics",
        "target_urls",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} missing");
    }
}

/// The DDL gorm's AutoMigrate issues for KubeEdge's models (edge/pkg/metamanager/dao/models,
/// edge/pkg/devicetwin/dtclient), with gorm's backtick quoting.
const KUBEEDGE_DDL: &str = "
CREATE TABLE `meta` (`key` text,`type` text,`value` text,PRIMARY KEY (`key`));
CREATE TABLE `meta_v2` (`key` text,`group_version_resource` text,`namespace` text,`name` text,`resource_version` integer,`value` text,PRIMARY KEY (`key`));
CREATE TABLE `device` (`id` text,`name` text,`description` text,`state` text,`last_online` text,PRIMARY KEY (`id`));
CREATE TABLE `device_attr` (`id` integer PRIMARY KEY AUTOINCREMENT,`deviceid` text,`name` text,`description` text,`value` text,`optional` numeric,`attr_type` text,`metadata` text);
CREATE TABLE `device_twin` (`id` integer PRIMARY KEY AUTOINCREMENT,`deviceid` text,`name` text,`description` text,`expected` text,`actual` text,`expected_meta` text,`actual_meta` text,`expected_version` text,`actual_version` text,`optional` numeric,`attr_type` text,`metadata` text);
CREATE TABLE `sub_topics` (`topic` text,PRIMARY KEY (`topic`));
CREATE TABLE `target_urls` (`url` text,PRIMARY KEY (`url`));
";

#[tokio::test]
async fn opens_an_edgecore_db_made_with_kubeedge_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.db");
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(KUBEEDGE_DDL).unwrap();
        // Rows as edgecore writes them: INSERT OR REPLACE INTO meta (key, type, value).
        for name in ["nginx", "redis"] {
            db.execute(
                "INSERT OR REPLACE INTO meta (key, type, value) VALUES (?1, 'pod', ?2)",
                [
                    format!("default/pod/{name}"),
                    format!(r#"{{"metadata":{{"name":"{name}","namespace":"default","uid":"uid-{name}","resourceVersion":"5"}}}}"#),
                ],
            )
            .unwrap();
        }
        db.execute(
            "INSERT INTO device_twin (deviceid, name, actual, optional, attr_type) VALUES ('default/t', 'temperature', '25', 1, 'int')",
            [],
        )
        .unwrap();
    }
    let store = Store::open(StoreConfig::new(&path)).unwrap();
    let mm = MetaManager::new(
        store.clone(),
        MetaManagerConfig::new(NodeName::new("edge-1").unwrap()),
    );
    let pods = store
        .read(|db| meta::list_by_type(db, "pod"))
        .await
        .unwrap();
    assert_eq!(
        pods.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
        ["default/pod/nginx", "default/pod/redis"]
    );
    let twin: String = store
        .read(|db| {
            Ok(db.query_row(
                "SELECT actual FROM device_twin WHERE name = 'temperature'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(twin, "25");
    // A pod delete for a row KubeEdge wrote (no version entry) checks the uid in the value.
    let delete = |uid: &str| {
        Message::new(
            "edgecontroller",
            "resource",
            "delete",
            "default/pod/nginx",
            Content::try_from(
                format!(r#"{{"metadata":{{"name":"nginx","namespace":"default","uid":"{uid}","resourceVersion":"6"}}}}"#)
                    .as_str(),
            )
            .unwrap(),
        )
    };
    assert!(!mm.from_cloud(delete("someone-else")).await.unwrap().changed);
    assert!(mm.from_cloud(delete("uid-nginx")).await.unwrap().changed);
    assert!(
        store
            .read(|db| meta::get(db, "default/pod/nginx"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn refuses_files_that_are_not_sound_databases() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgecore.db");
    std::fs::write(
        &path,
        b"this is a configuration file, not a database\n".repeat(100),
    )
    .unwrap();
    let err = Store::open(StoreConfig::new(&path)).unwrap_err();
    assert!(matches!(err, Error::NotADatabase { .. }), "{err}");

    // A real database whose pages were overwritten after the header.
    let path = dir.path().join("damaged.db");
    {
        let store = Store::open(StoreConfig::new(&path)).unwrap();
        for i in 0..200 {
            let value = format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(400));
            store
                .write(move |db| {
                    meta::upsert(
                        db,
                        &format!("default/configmap/c{i}"),
                        "configmap",
                        &value,
                        None,
                    )
                })
                .await
                .unwrap();
        }
    }
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let _ = std::fs::remove_file(path.with_extension("db-shm"));
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 16 * 1024);
    for b in &mut bytes[4096..12 * 1024] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(StoreConfig::new(&path)).unwrap_err();
    assert!(matches!(err, Error::NotADatabase { .. }), "{err}");
}

#[tokio::test]
async fn rejects_oversized_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    cfg.max_value_len = 1024;
    let store = Store::open(cfg).unwrap();
    let mm = MetaManager::new(
        store.clone(),
        MetaManagerConfig::new(NodeName::new("edge-1").unwrap()),
    );
    let big = format!(
        r#"{{"metadata":{{"name":"c","namespace":"default","uid":"u","resourceVersion":"1"}},"data":{{"k":"{}"}}}}"#,
        "v".repeat(2048)
    );
    let msg = Message::new(
        "edgecontroller",
        "resource",
        "update",
        "default/configmap/c",
        Content::try_from(big.as_str()).unwrap(),
    );
    assert!(matches!(
        mm.from_cloud(msg).await,
        Err(Error::TooLarge { .. })
    ));
    let outbox = Outbox::new(store, 10, FullPolicy::Reject);
    let event = Message::new(
        "edged",
        "meta",
        "insert",
        "default/event/e",
        Content::string(&big),
    );
    assert!(matches!(
        outbox.push(&event, None).await,
        Err(Error::TooLarge { .. })
    ));
}

#[tokio::test]
async fn outbox_bounds_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(&dir)).unwrap();
    let msg = |i: usize| {
        Message::new(
            "edged",
            "meta",
            "insert",
            format!("default/event/e{i}"),
            Content::null(),
        )
    };
    let strict = Outbox::new(store.clone(), 3, FullPolicy::Reject);
    let sent: Vec<Message> = (0..3).map(msg).collect();
    for m in &sent {
        assert_eq!(strict.push(m, None).await.unwrap(), Pushed::Appended);
    }
    assert!(matches!(
        strict.push(&msg(3), None).await,
        Err(Error::OutboxFull { capacity: 3 })
    ));
    // The refused push changed nothing.
    let ids: Vec<String> = strict
        .pending(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.message.header.id)
        .collect();
    assert_eq!(
        ids,
        sent.iter().map(|m| m.header.id.clone()).collect::<Vec<_>>()
    );

    let lossy = Outbox::new(store.clone(), 3, FullPolicy::DropOldest);
    let newest = msg(4);
    assert_eq!(
        lossy.push(&newest, None).await.unwrap(),
        Pushed::DroppedOldest {
            dropped: sent[0].header.id.clone()
        }
    );
    // Pushing the same message again changes nothing, even when full.
    assert_eq!(
        lossy.push(&newest, Some("k".into())).await.unwrap(),
        Pushed::AlreadyQueued
    );
    assert_eq!(lossy.len().await.unwrap(), 3);

    let coalescing = Outbox::new(store, 10, FullPolicy::Reject);
    let a = msg(10);
    let b = msg(11);
    coalescing.push(&a, Some("pod/x".into())).await.unwrap();
    assert_eq!(
        coalescing.push(&b, Some("pod/x".into())).await.unwrap(),
        Pushed::Coalesced {
            replaced: a.header.id.clone()
        }
    );
}

#[tokio::test]
async fn a_failing_write_does_not_spoil_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(&dir)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(move |db| {
                    meta::upsert(
                        db,
                        &format!("default/configmap/c{i}"),
                        "configmap",
                        "{}",
                        None,
                    )?;
                    if i % 7 == 0 {
                        // Fails after writing: its row must be rolled back alone.
                        db.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                    }
                    Ok(i)
                })
                .await
        }));
    }
    let mut failed = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(n) => assert_eq!(n as usize, i),
            Err(Error::Sqlite(_)) => {
                assert_eq!(i % 7, 0);
                failed += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(failed, 29);
    let rows = store
        .read(|db| meta::list_by_type(db, "configmap"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 200 - 29);
    assert!(
        rows.iter()
            .all(|r| !r.key.ends_with("/c0") && !r.key.ends_with("/c7"))
    );
}

#[tokio::test]
async fn concurrent_readers_and_writers_see_committed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(config(&dir)).unwrap());
    let mut tasks = Vec::new();
    for i in 0..64u32 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let key = format!("default/secret/s{i}");
            let k = key.clone();
            store
                .write(move |db| meta::upsert(db, &k, "secret", "{}", None))
                .await
                .unwrap();
            // A write whose future resolved is visible to every reader.
            store
                .read(move |db| meta::get(db, &key))
                .await
                .unwrap()
                .is_some()
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap());
    }
}

#[tokio::test]
async fn a_panicking_write_is_rolled_back_and_the_writer_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(&dir)).unwrap();
    let result: Result<(), Error> = store
        .write(|db| {
            meta::upsert(db, "default/configmap/p", "configmap", "{}", None)?;
            panic!("a bug in a write closure");
        })
        .await;
    assert!(matches!(result, Err(Error::JobPanicked)));
    store
        .write(|db| meta::upsert(db, "default/configmap/q", "configmap", "{}", None))
        .await
        .unwrap();
    let rows = store
        .read(|db| meta::list_by_type(db, "configmap"))
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["default/configmap/q"]
    );
}

#[tokio::test]
async fn namespace_listing_stays_inside_its_namespace_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(&dir)).unwrap();
    store
        .write(|db| {
            for (key, kind) in [
                ("default/pod/a", "pod"),
                ("default/pod/b", "pod"),
                ("default/podpatch/a", "podpatch"),
                ("defaults/pod/x", "pod"),
                ("default0/pod/y", "pod"),
                ("kube-system/pod/z", "pod"),
            ] {
                meta::upsert(db, key, kind, "{}", None)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let rows = store
        .read(|db| meta::list_in_namespace(db, "default", "pod"))
        .await
        .unwrap();
    assert_eq!(
        rows.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["default/pod/a", "default/pod/b"]
    );
    // A panicking read is reported as such, and the next read still works.
    let panicked = store
        .read(|_| -> kubeedge_store::Result<()> { panic!("a bug in a read") })
        .await;
    assert!(matches!(panicked, Err(Error::JobPanicked)));
    assert_eq!(
        store
            .read(|db| meta::list_by_type(db, "pod"))
            .await
            .unwrap()
            .len(),
        5
    );
    store.close().await.unwrap();
}

/// The SQLite outbox keeps the same journal contract as the in-memory one in kubeedge-proto.
#[tokio::test]
async fn the_outbox_is_a_message_journal() {
    use kubeedge_proto::journal::{MemoryJournal, MessageJournal};

    async fn exercise<J: MessageJournal>(journal: &J) -> Vec<String> {
        let msg = |i: usize| {
            Message::new(
                "edged",
                "meta",
                "patch",
                format!("default/podpatch/p{i}"),
                Content::null(),
            )
        };
        let (a, b, c) = (msg(1), msg(2), msg(3));
        journal.append(&a, None).await.unwrap();
        journal.append(&b, Some("p".into())).await.unwrap();
        journal.append(&c, Some("p".into())).await.unwrap();
        journal.append(&a, None).await.unwrap();
        assert!(journal.confirm(&a.header.id).await.unwrap());
        assert!(!journal.confirm(&a.header.id).await.unwrap());
        let pending = journal.pending(0, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].message, c);
        assert!(
            journal
                .pending(pending[0].seq, 10)
                .await
                .unwrap()
                .is_empty()
        );
        pending
            .into_iter()
            .map(|p| p.message.route.resource)
            .collect()
    }

    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(Store::open(config(&dir)).unwrap(), 10, FullPolicy::Reject);
    assert_eq!(
        exercise(&outbox).await,
        exercise(&MemoryJournal::new(10)).await
    );
}

/// Checkpoints run off the writer, and the WAL stays bounded: 2,000 one-row transactions of
/// 4 KiB values would leave a WAL of more than 20 MiB without checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_checkpoints_bound_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir);
    cfg.checkpoint_pages = 64;
    cfg.max_batch = 1;
    let wal = cfg.path.with_extension("db-wal");
    let store = Store::open(cfg.clone()).unwrap();
    let value = "x".repeat(4096);
    let mut largest = 0;
    for i in 0..2000 {
        let value = value.clone();
        store
            .write(move |db| {
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, type, value) VALUES (?1, 'blob', ?2)",
                    rusqlite::params![format!("default/blob/b{}", i % 100), value],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    // Under back-to-back writes the background checkpoints never catch up with the writer (a
    // WAL starts over only when fully checkpointed), so the writer checkpoints itself at
    // 8 x 64 pages: ~2.1 MB.
    assert!(largest < 4 * 1024 * 1024, "WAL grew to {largest} bytes");
    store.close().await.unwrap();
    let store = Store::open(cfg).unwrap();
    let rows: i64 = store
        .read(|db| {
            Ok(
                db.query_row("SELECT count(*) FROM meta WHERE type = 'blob'", [], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
        .unwrap();
    assert_eq!(rows, 100);
}
