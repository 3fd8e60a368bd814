//! A real crash test: a child process writes, ACKs, pushes and confirms in a loop and is
//! SIGKILLed at random points; after every kill the database is reopened and checked against
//! what the child reported.
//!
//! The child is this same test executable, re-run with `KUBEEDGE_STORE_CRASH_CHILD=<db path>`:
//! then the test `crash_child` runs the writer loop instead of returning at once. The child
//! prints a line (`@@ <EVENT> ...`) to its stdout, a pipe to the parent, only after the awaited
//! store call returned (`ACK`, `PUSHED`, `CONFIRMED`) or just before it starts one (`SEND`,
//! `PUSH`, `CONFIRM`), so the parent knows exactly what was promised and what was in flight.
//!
//! Every round reuses the same database file, so later rounds open (and recover) a file that was
//! killed mid-write, and keys and outbox messages accumulate. Some rounds run several writer
//! tasks at once, so group-commit batches are killed mid-commit; some kill the child early, while
//! it may still be opening (recovering) the database.
//!
//! Knobs: `KUBEEDGE_STORE_CRASH_SEED` replays a run's random choices (kill delays, writer
//! counts); `KUBEEDGE_STORE_CRASH_ROUNDS` sets the number of rounds (default 60).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubeedge_proto::{Content, Message, NodeName};
use kubeedge_store::{MetaManager, MetaManagerConfig, Pushed, Store, StoreConfig};

/// Set (to the database path) in the child's environment.
const CHILD_ENV: &str = "KUBEEDGE_STORE_CRASH_CHILD";
/// The round number, for the child.
const ROUND_ENV: &str = "KUBEEDGE_STORE_CRASH_ROUND";
/// How many writer tasks the child runs.
const WRITERS_ENV: &str = "KUBEEDGE_STORE_CRASH_WRITERS";
/// Replays the random choices of an earlier run.
const SEED_ENV: &str = "KUBEEDGE_STORE_CRASH_SEED";
/// Number of rounds.
const ROUNDS_ENV: &str = "KUBEEDGE_STORE_CRASH_ROUNDS";

/// Every line of the child's protocol starts with this (the test harness prints its own lines
/// on the same stdout).
const MARK: &str = "@@ ";

/// Bounds on a child that is never killed (a stuck parent): it stops by itself.
const CHILD_MAX_ITERATIONS: u64 = 200_000;
const CHILD_MAX_TIME: Duration = Duration::from_secs(30);

/// Deadline for a hang: how long the parent waits for the child to open the store.
const READY_DEADLINE: Duration = Duration::from_secs(120);

const NAMESPACE_POD: &str = "default/pod/";

// ---------------------------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------------------------

/// The child's side: does nothing unless `KUBEEDGE_STORE_CRASH_CHILD` is set.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let round: u64 = env_number(ROUND_ENV).expect("the child needs its round");
    let writers: u64 = env_number(WRITERS_ENV).unwrap_or(1).max(1);

    // Opening may itself recover a WAL left by the previous kill: a kill may land here too.
    let store = Store::open(StoreConfig::new(&path)).expect("child: open the store");
    let mut config = MetaManagerConfig::new(NodeName::new("crash-node").unwrap());
    // Half of the pushes stay unconfirmed and accumulate over the rounds.
    config.outbox_capacity = 100_000_000;
    let manager = MetaManager::new(store, config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("child: tokio runtime");
    emit(format_args!("READY"));
    let deadline = Instant::now() + CHILD_MAX_TIME;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let manager = manager.clone();
                tokio::spawn(writer(
                    manager,
                    round,
                    w,
                    CHILD_MAX_ITERATIONS / writers,
                    deadline,
                ))
            })
            .collect();
        for task in tasks {
            task.await.expect("child: writer task");
        }
    });
}

/// One writer task: its own key range; every step is one awaited store call.
async fn writer(manager: MetaManager, round: u64, w: u64, iterations: u64, deadline: Instant) {
    for i in 0..iterations {
        if Instant::now() >= deadline {
            return;
        }
        // A fresh key per two iterations: inserted, then updated to a newer version.
        // resourceVersions only grow, within a round and from one round to the next.
        let rv = round * 10_000_000 + i + 1;
        let n = (round + 1) * 10_000_000 + w * 1_000_000 + i / 2;
        let operation = if i % 2 == 0 { "insert" } else { "update" };
        apply(&manager, n, rv, operation).await;

        // A key shared by every round (written by writer `w` of any round): updated on top of
        // whatever the previous, killed, round left.
        if i % 8 == 7 {
            apply(&manager, 1_000 + w, rv, "update").await;
        }

        // The outbox: every message pushed, every other one confirmed a step later.
        let id = format!("r{round}-w{w}-{i}");
        let patch = Content::string(&format!(
            r#"{{"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"True"}}]}},"step":{i}}}"#
        ));
        let mut msg = Message::new(
            "edged",
            "meta",
            "patch",
            format!("default/podpatch/p-{n}"),
            patch,
        );
        msg.header.id = id.clone();
        emit(format_args!("PUSH {id}"));
        let pushed = manager.outbox().push(&msg, None).await;
        assert_eq!(pushed.expect("child: push"), Pushed::Appended);
        emit(format_args!("PUSHED {id}"));

        if i % 2 == 1 {
            let earlier = format!("r{round}-w{w}-{}", i - 1);
            emit(format_args!("CONFIRM {earlier}"));
            let removed = manager.outbox().confirm(&earlier).await;
            assert!(
                removed.expect("child: confirm"),
                "{earlier} was not pending"
            );
            emit(format_args!("CONFIRMED {earlier}"));
        }
    }
}

/// Sends `default/pod/p-<n>` at `rv` from the cloud; reports `SEND` before and `ACK` once the
/// MetaManager handed back the ACK.
async fn apply(manager: &MetaManager, n: u64, rv: u64, operation: &str) {
    let key = format!("{NAMESPACE_POD}p-{n}");
    let pod = format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"p-{n}","namespace":"default","uid":"6c1b6f2e-0000-4000-8000-{n:012}","resourceVersion":"{rv}"}},"spec":{{}}}}"#
    );
    let content = Content::try_from(pod.as_str()).expect("pod JSON");
    let msg = Message::new(
        "edgecontroller",
        "resource",
        operation,
        key.as_str(),
        content,
    )
    .with_resource_version(rv.to_string());
    emit(format_args!("SEND {key} {rv}"));
    let outcome = manager.from_cloud(msg).await.expect("child: from_cloud");
    assert!(outcome.ack.is_some(), "no ACK for {key} at {rv}");
    assert!(outcome.changed, "{key} at {rv} changed nothing");
    emit(format_args!("ACK {key} {rv}"));
}

/// One protocol line, written and flushed in one go (the pipe then holds it even if the child
/// is killed right after).
fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    out.write_fmt(format_args!("\n{MARK}{line}\n"))
        .expect("child: stdout");
    out.flush().expect("child: flush stdout");
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------------------

/// xorshift64*: small, seedable, enough for kill delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-enough in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// What the parent knows is in the database after the previous rounds (each round's
/// uncertainty resolved by looking at the file once it checked out).
#[derive(Default)]
struct Model {
    /// Pod key -> stored resourceVersion.
    pods: HashMap<String, u64>,
    /// Outbox message ids pending.
    outbox: HashSet<String>,
    /// ACKs received, all rounds.
    acks: u64,
}

/// What the child of one round reported.
#[derive(Default)]
struct Report {
    /// Key -> the last resourceVersion sent (one writer owns a key, versions grow).
    sent: HashMap<String, u64>,
    /// Key -> the highest resourceVersion ACKed.
    acked: HashMap<String, u64>,
    acks: u64,
    push_begun: HashSet<String>,
    pushed: HashSet<String>,
    confirm_begun: HashSet<String>,
    confirmed: HashSet<String>,
    ready: bool,
}

impl Report {
    fn take(&mut self, line: &str) -> Result<(), String> {
        let mut words = line.split_whitespace();
        let event = words.next().unwrap_or_default();
        let mut arg = || {
            words
                .next()
                .map(str::to_owned)
                .ok_or_else(|| format!("truncated protocol line {line:?}"))
        };
        match event {
            "READY" => self.ready = true,
            "SEND" | "ACK" => {
                let key = arg()?;
                let rv: u64 = arg()?
                    .parse()
                    .map_err(|e| format!("bad version in {line:?}: {e}"))?;
                let map = if event == "SEND" {
                    &mut self.sent
                } else {
                    self.acks += 1;
                    &mut self.acked
                };
                let slot = map.entry(key).or_default();
                *slot = (*slot).max(rv);
            }
            "PUSH" => {
                self.push_begun.insert(arg()?);
            }
            "PUSHED" => {
                self.pushed.insert(arg()?);
            }
            "CONFIRM" => {
                self.confirm_begun.insert(arg()?);
            }
            "CONFIRMED" => {
                self.confirmed.insert(arg()?);
            }
            other => return Err(format!("unknown protocol line {other:?} in {line:?}")),
        }
        Ok(())
    }
}

/// The child's stdout, read to its end on a thread; `READY` is signalled as soon as it comes.
fn read_protocol(
    stdout: impl Read + Send + 'static,
    ready: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Result<Report, String>> {
    std::thread::spawn(move || {
        let mut report = Report::default();
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .map_err(|e| format!("reading the child's stdout: {e}"))?;
            if n == 0 {
                return Ok(report);
            }
            // A line cut by the kill has no newline: it was never completely written, and
            // every line is written after (or before) the call it reports, so it is dropped.
            if buf.last() != Some(&b'\n') {
                return Ok(report);
            }
            let line = String::from_utf8_lossy(&buf);
            let Some(at) = line.find(MARK) else { continue };
            report.take(line[at + MARK.len()..].trim_end())?;
            if report.ready && line.contains("READY") {
                let _ = ready.send(());
            }
        }
    })
}

/// The parent: at least 50 rounds of spawn, random delay, SIGKILL, reopen and check.
#[test]
fn killed_writers_lose_nothing_acknowledged() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let seed = env_number(SEED_ENV).unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        now.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    let rounds = env_number(ROUNDS_ENV).unwrap_or(60);
    eprintln!("crash test: seed {seed}, {rounds} rounds (replay: {SEED_ENV}={seed})");
    let mut rng = Rng(seed.max(1));

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edgecore.db");
    let exe = std::env::current_exe().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let mut model = Model::default();
    let mut concurrent_rounds = 0;
    for round in 0..rounds {
        // Every fourth round runs four writers at once (group commit batches killed mid-commit);
        // every seventh kills early, maybe while the child is still opening the database.
        let writers: u64 = if round % 4 == 3 { 4 } else { 1 };
        concurrent_rounds += u64::from(writers > 1);
        let early = round % 7 == 5;
        let delay = Duration::from_millis(if early {
            rng.range(0, 30)
        } else {
            rng.range(5, 80)
        });
        let context = format!("seed {seed}, round {round}, writers {writers}, delay {delay:?}");

        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .env(ROUND_ENV, round.to_string())
            .env(WRITERS_ENV, writers.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let protocol = read_protocol(child.stdout.take().unwrap(), ready_tx);
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });

        if !early {
            // READY or the channel closing (the child ended: caught below); the deadline is
            // only there for a hang.
            let _ = ready_rx.recv_timeout(READY_DEADLINE);
        }
        std::thread::sleep(delay);
        let ended_by_itself = child.try_wait().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let report = protocol.join().unwrap();
        let stderr = stderr.join().unwrap();
        if let Some(status) = ended_by_itself {
            panic!("{context}: the child ended by itself ({status}) before the kill:\n{stderr}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "{context}: not killed: {status}\n{stderr}"
            );
        }
        let report = report.unwrap_or_else(|e| panic!("{context}: {e}"));
        if !early {
            assert!(
                report.ready,
                "{context}: the child never opened the store:\n{stderr}"
            );
        }

        let outbox_len = runtime
            .block_on(check(&db, &mut model, &report, writers))
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        eprintln!(
            "round {round:>3} seed {seed} writers {writers} delay {:>2} ms{}: \
             acks this round {:>5}, acked so far {:>6}, pods stored {:>6}, outbox {:>6}",
            delay.as_millis(),
            if report.ready {
                ""
            } else {
                " (killed before READY)"
            },
            report.acks,
            model.acks,
            model.pods.len(),
            outbox_len,
        );
    }
    assert!(rounds < 50 || concurrent_rounds >= 5);
    assert!(
        rounds == 0 || model.acks > 0,
        "seed {seed}: no round got as far as an ACK; nothing was tested"
    );
}

/// Reopens the database after a kill and checks it against the model and the child's report;
/// on success, folds the round into the model. Returns the outbox length.
async fn check(
    db: &Path,
    model: &mut Model,
    report: &Report,
    writers: u64,
) -> Result<usize, String> {
    let store = tokio::task::block_in_place(|| Store::open(StoreConfig::new(db)))
        .map_err(|e| format!("reopening after the kill: {e}"))?;

    // The file as a whole.
    let integrity: Vec<String> = store
        .read(|db| {
            let mut stmt = db.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
        .map_err(|e| format!("integrity_check: {e}"))?;
    if integrity != ["ok"] {
        return Err(format!("PRAGMA integrity_check: {integrity:?}"));
    }

    // The meta rows agree with the version index, row by row (one transaction wrote both).
    let (torn, orphans, pods) = store
        .read(|db| {
            let torn: Vec<String> = db
                .prepare(
                    "SELECT m.key FROM meta m
                     LEFT JOIN kubeedge_rs_meta_version v ON v.key = m.key
                     WHERE m.type = 'pod' AND (
                        v.key IS NULL
                        OR CAST(json_extract(m.value, '$.metadata.resourceVersion') AS INTEGER)
                           IS NOT v.resource_version
                        OR 'default/pod/' || json_extract(m.value, '$.metadata.name') IS NOT m.key)",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let orphans: i64 = db.query_row(
                "SELECT count(*) FROM kubeedge_rs_meta_version v
                 WHERE NOT EXISTS (SELECT 1 FROM meta m WHERE m.key = v.key)",
                [],
                |r| r.get(0),
            )?;
            let pods: Vec<(String, i64)> = db
                .prepare("SELECT key, resource_version FROM kubeedge_rs_meta_version")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            Ok((torn, orphans, pods))
        })
        .await
        .map_err(|e| format!("reading meta: {e}"))?;
    if !torn.is_empty() {
        return Err(format!(
            "{} meta rows disagree with their version entry (or have none), e.g. {:?}",
            torn.len(),
            &torn[..torn.len().min(5)]
        ));
    }
    if orphans != 0 {
        return Err(format!("{orphans} version entries without a meta row"));
    }
    let stored: HashMap<String, u64> = pods
        .into_iter()
        .map(|(key, rv)| (key, u64::try_from(rv).unwrap_or(0)))
        .collect();

    // Every key: what is stored is the newest ACKed version, or the version in flight at the
    // kill (sent, never ACKed), and nothing else.
    let mut in_flight_sends = 0;
    let keys: HashSet<&String> = model
        .pods
        .keys()
        .chain(report.sent.keys())
        .chain(stored.keys())
        .collect();
    for key in keys {
        let known = report.acked.get(key).or(model.pods.get(key)).copied();
        let sent = report.sent.get(key).copied();
        let in_flight = sent.filter(|&s| Some(s) > report.acked.get(key).copied());
        in_flight_sends += usize::from(in_flight.is_some());
        let got = stored.get(key).copied();
        if let Some(acked) = report.acked.get(key)
            && got.is_none_or(|got| got < *acked)
        {
            return Err(format!(
                "{key}: ACKed at resourceVersion {acked}, stored {got:?}"
            ));
        }
        if got != known && (got.is_none() || got != in_flight) {
            return Err(format!(
                "{key}: stored {got:?}; expected {known:?} (known) or {in_flight:?} (in flight)"
            ));
        }
    }

    // The outbox: exactly what was pushed and not confirmed, give or take the one operation
    // each writer had in flight.
    let manager = MetaManager::new(
        store.clone(),
        MetaManagerConfig::new(NodeName::new("crash-check").unwrap()),
    );
    let mut pending = Vec::new();
    loop {
        let after = pending.last().map_or(0, |(seq, _)| *seq);
        let page = manager
            .outbox()
            .pending(after, 10_000)
            .await
            .map_err(|e| format!("outbox pending: {e}"))?;
        if page.is_empty() {
            break;
        }
        pending.extend(page.into_iter().map(|p| (p.seq, p.message.header.id)));
    }
    let actual: HashSet<String> = pending.iter().map(|(_, id)| id.clone()).collect();
    if actual.len() != pending.len() {
        return Err("an outbox msg_id appears twice".to_owned());
    }
    let mut uncertain: HashSet<&String> = HashSet::new();
    for id in report.push_begun.difference(&report.pushed) {
        uncertain.insert(id);
    }
    for id in report.confirm_begun.difference(&report.confirmed) {
        uncertain.insert(id);
    }
    // Each writer awaits one call at a time: at most one operation each in flight.
    if (uncertain.len() + in_flight_sends) as u64 > writers {
        return Err(format!(
            "protocol: {} operations in flight at once ({uncertain:?}, {in_flight_sends} sends)",
            uncertain.len() + in_flight_sends
        ));
    }
    for id in &report.confirmed {
        if actual.contains(id) {
            return Err(format!("outbox: {id} was confirmed but is still pending"));
        }
    }
    let must_have = model
        .outbox
        .iter()
        .chain(&report.pushed)
        .filter(|id| !report.confirm_begun.contains(*id));
    for id in must_have {
        if !actual.contains(id) {
            return Err(format!(
                "outbox: {id} was pushed and never confirmed, but is gone"
            ));
        }
    }
    for id in &actual {
        let expected = model.outbox.contains(id) || report.pushed.contains(id);
        if !expected && !uncertain.contains(id) {
            return Err(format!("outbox: {id} is pending but was never pushed"));
        }
    }
    // Append order: rounds in order, and each writer's messages in its own order.
    let mut last: HashMap<(u64, u64), u64> = HashMap::new();
    let mut last_round = 0;
    for (seq, id) in &pending {
        let (r, w, i) = parse_outbox_id(id).ok_or_else(|| format!("odd outbox id {id}"))?;
        if r < last_round {
            return Err(format!(
                "outbox: {id} (seq {seq}) after a message of round {last_round}"
            ));
        }
        last_round = r;
        if let Some(prev) = last.insert((r, w), i)
            && prev >= i
        {
            return Err(format!(
                "outbox: {id} (seq {seq}) after step {prev} of its writer"
            ));
        }
    }

    // Checked: the file is now the truth, including how each in-flight operation ended.
    model.pods = stored;
    model.outbox = actual;
    model.acks += report.acks;
    drop(manager);
    tokio::task::block_in_place(move || drop(store));
    Ok(pending.len())
}

/// `r<round>-w<writer>-<step>`.
fn parse_outbox_id(id: &str) -> Option<(u64, u64, u64)> {
    let mut parts = id.split('-');
    let r = parts.next()?.strip_prefix('r')?.parse().ok()?;
    let w = parts.next()?.strip_prefix('w')?.parse().ok()?;
    let i = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((r, w, i))
}
