//! The SQLite store: one writer thread with group commit, a pool of readers, an async API.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Result, schema};

/// How much a committed write survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// A committed write survives a crash or kill of the process (WAL, `synchronous=NORMAL`):
    /// SQLite hands every commit to the kernel before it returns. This is what "ACKed means
    /// stored" needs, and the default.
    #[default]
    ProcessCrash,
    /// A committed write also survives power loss or a kernel crash (WAL, `synchronous=FULL`):
    /// every commit waits for `fsync`. Group commit shares that wait among concurrent writers.
    PowerLoss,
}

/// Settings for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The database file; created (with its directory) if missing.
    pub path: PathBuf,
    /// How much a committed write survives.
    pub durability: Durability,
    /// How long a connection waits for a lock held by another process before failing.
    pub busy_timeout: Duration,
    /// SQLite page cache per connection, in KiB.
    pub cache_kib: u32,
    /// The largest value (object JSON, outbox message) accepted, in bytes.
    pub max_value_len: usize,
    /// The most writes committed together in one transaction (1 = a transaction per write).
    pub max_batch: usize,
    /// How many write requests may wait for the writer before callers wait to enqueue.
    pub queue_len: usize,
    /// Read connections kept open.
    pub readers: usize,
    /// Run `PRAGMA quick_check` at open, so that a corrupted file is refused up front.
    pub verify_on_open: bool,
    /// The size the WAL file is truncated back to after a checkpoint, in bytes (small flash
    /// storage should not keep a WAL at its peak size).
    pub wal_size_limit: u64,
    /// WAL pages (4 KiB each) after which a background thread checkpoints the WAL into the
    /// database file, so that no write waits for a checkpoint's fsyncs (SQLite's default runs
    /// it inside the commit that crosses its 1,000-page threshold). Should the background
    /// thread fall behind by 8 times this, the writer checkpoints itself. 0 restores SQLite's
    /// own automatic checkpoints.
    pub checkpoint_pages: u32,
}

impl StoreConfig {
    /// Defaults for a database at `path`: process-crash durability, 5 s busy timeout, 2 MiB page
    /// cache per connection, 8 MiB values, batches of up to 256 writes, 2 readers, verified at
    /// open, WAL checkpointed in the background every 1,000 pages and truncated to 1 MiB after
    /// checkpoints.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            durability: Durability::default(),
            busy_timeout: Duration::from_secs(5),
            cache_kib: 2048,
            max_value_len: 8 * 1024 * 1024,
            max_batch: 256,
            queue_len: 1024,
            readers: 2,
            verify_on_open: true,
            wal_size_limit: 1024 * 1024,
            checkpoint_pages: 1000,
        }
    }
}

/// A unit of work for the writer thread: runs inside the group transaction, and is told the
/// outcome of the commit before its caller hears anything.
trait Job: Send {
    fn run(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, commit: Result<()>);
}

struct Task<F, R> {
    work: Option<F>,
    outcome: Option<Result<R>>,
    reply: oneshot::Sender<Result<R>>,
}

impl<F, R> Job for Task<F, R>
where
    F: FnOnce(&Connection) -> Result<R> + Send,
    R: Send,
{
    fn run(&mut self, conn: &Connection) {
        let Some(work) = self.work.take() else { return };
        // A savepoint per job: a failing job is rolled back alone, the batch commits.
        let outcome = conn
            .execute_batch("SAVEPOINT job")
            .map_err(Error::from)
            .and_then(|()| {
                // A panicking job is rolled back and reported; the writer thread lives on.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
                    .unwrap_or(Err(Error::JobPanicked));
                match result {
                    Ok(value) => conn
                        .execute_batch("RELEASE job")
                        .map(|()| value)
                        .map_err(Error::from),
                    Err(e) => {
                        let undo = conn.execute_batch("ROLLBACK TO job; RELEASE job");
                        undo.map_err(Error::from).and(Err(e))
                    }
                }
            });
        self.outcome = Some(outcome);
    }

    fn finish(self: Box<Self>, commit: Result<()>) {
        let result = match (commit, self.outcome) {
            // The job's own error stands even if the batch committed.
            (Ok(()), Some(outcome)) => outcome,
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(Error::Closed),
        };
        // The caller may have given up waiting; the write stands either way.
        let _ = self.reply.send(result);
    }
}

struct Inner {
    config: StoreConfig,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Ends after the writer (whose WAL hook holds its queue's sender).
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per read connection: reads beyond `config.readers` wait instead of opening
    /// more connections (each with its own page cache).
    read_permits: tokio::sync::Semaphore,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Readers close first, so that the writer's connection is the last one and checkpoints
        // the WAL into the database file as it closes.
        if let Ok(mut readers) = self.readers.lock() {
            readers.clear();
        }
        // Closing the queue lets the writer drain it and stop.
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
        {
            let _ = handle.join();
        }
        if let Ok(mut checkpointer) = self.checkpointer.lock()
            && let Some(handle) = checkpointer.take()
        {
            let _ = handle.join();
        }
    }
}

/// The edge metadata store: KubeEdge's `edgecore.db` tables plus our version index, dedupe
/// ledger and outbox, in one SQLite file.
///
/// All writes go to one writer thread, which commits whatever writes are waiting together in
/// one transaction (group commit); a write's future resolves only after its transaction is
/// committed with the configured [`Durability`]. Reads run on a small pool of read-only
/// connections on tokio's blocking threads (WAL lets them run beside the writer). No call blocks
/// the async runtime. Cloning is cheap; the writer stops when the last clone is dropped.
///
/// ```no_run
/// use kubeedge_store::{Store, StoreConfig};
///
/// # async fn demo() -> kubeedge_store::Result<()> {
/// let store = Store::open(StoreConfig::new("/var/lib/kubeedge-rs/edge.db"))?;
/// let count: i64 = store.read(|db| Ok(db.query_row("SELECT count(*) FROM meta", [], |r| r.get(0))?)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.config.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the database, refuses a file that is not a sound SQLite database,
    /// applies the schema migrations, and starts the writer thread.
    ///
    /// This does file I/O: call it at startup or from a blocking context.
    pub fn open(config: StoreConfig) -> Result<Self> {
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut writer = open_connection(&config, false)?;
        let journal: String = writer
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(|e| not_a_database(&config.path, e))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(Error::NotADatabase {
                path: config.path.clone(),
                reason: format!("cannot use WAL journaling (got {journal})"),
            });
        }
        if config.verify_on_open {
            let check: String = writer
                .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
                .map_err(|e| not_a_database(&config.path, e))?;
            if check != "ok" {
                return Err(Error::NotADatabase {
                    path: config.path.clone(),
                    reason: check,
                });
            }
        }
        schema::migrate(&mut writer).map_err(|e| match e {
            Error::Sqlite(inner) if is_corruption(&inner) => Error::NotADatabase {
                path: config.path.clone(),
                reason: inner.to_string(),
            },
            other => other,
        })?;
        let readers = (0..config.readers)
            .map(|_| open_connection(&config, true))
            .collect::<Result<Vec<_>>>()?;

        let checkpointer = if config.checkpoint_pages > 0 {
            Some(background_checkpoints(&config, &mut writer)?)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>(config.queue_len.max(1));
        let max_batch = config.max_batch.max(1);
        let handle = std::thread::Builder::new()
            .name("kubeedge-store-writer".to_owned())
            .spawn(move || writer_loop(writer, rx, max_batch))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                checkpointer: Mutex::new(checkpointer),
                read_permits: tokio::sync::Semaphore::new(readers.len().max(1)),
                readers: Mutex::new(readers),
            }),
        })
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// Runs `work` on the writer thread inside a transaction and resolves once that transaction
    /// is committed (durably, as configured). If `work` fails, its changes are rolled back and
    /// the error returned; writes batched with it are not affected.
    pub async fn write<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, done) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Task {
            work: Some(work),
            outcome: None,
            reply,
        });
        let queue = self.inner.jobs.lock().map_err(|_| Error::Closed)?.clone();
        let queue = queue.ok_or(Error::Closed)?;
        queue.send(job).await.map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)?
    }

    /// Runs `work` on a read-only connection on a blocking thread. Reads see every write whose
    /// future has resolved. At most `config.readers` reads run at once; more wait their turn.
    pub async fn read<R, F>(&self, work: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| Error::Closed)?;
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().map_err(|_| Error::Closed)?.pop();
            let conn = match pooled {
                Some(conn) => conn,
                // Only after a panicking read lost its connection.
                None => open_connection(&inner.config, true)?,
            };
            let result = work(&conn);
            inner.readers.lock().map_err(|_| Error::Closed)?.push(conn);
            result
        })
        .await;
        drop(permit);
        match result {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Error::JobPanicked),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Closes this handle. When it is the last one, waits (off the async runtime) until the
    /// writer has committed everything queued and the database is checkpointed and closed.
    /// Dropping the last handle does the same, but blocks the dropping thread while it waits.
    pub async fn close(self) -> Result<()> {
        if let Some(inner) = Arc::into_inner(self.inner) {
            tokio::task::spawn_blocking(move || drop(inner))
                .await
                .map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    /// Checks that a value fits the configured maximum.
    pub(crate) fn check_len(&self, what: &'static str, len: usize) -> Result<()> {
        let max = self.inner.config.max_value_len;
        if len > max {
            return Err(Error::TooLarge { what, len, max });
        }
        Ok(())
    }
}

fn writer_loop(conn: Connection, mut jobs: mpsc::Receiver<Box<dyn Job>>, max_batch: usize) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(max_batch);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        // Everything that queued up while the last commit ran goes into this one.
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                for job in &mut batch {
                    job.run(&conn);
                }
                conn.execute_batch("COMMIT").map_err(|e| {
                    let _ = conn.execute_batch("ROLLBACK");
                    tracing::error!(error = %e, "store commit failed; the batch is rolled back");
                    Error::from(e)
                })
            }
            Err(e) => Err(Error::from(e)),
        };
        for job in batch.drain(..) {
            job.finish(commit.clone());
        }
    }
}

/// Moves WAL checkpoints off the writer: its WAL hook (which replaces SQLite's automatic
/// checkpoints) wakes a thread with its own connection once the WAL holds
/// `checkpoint_pages`; a passive checkpoint there runs beside further commits.
fn background_checkpoints(config: &StoreConfig, writer: &mut Connection) -> Result<JoinHandle<()>> {
    let conn = open_connection(config, false)?;
    let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
    let threshold = i32::try_from(config.checkpoint_pages).unwrap_or(i32::MAX);
    let limit = threshold.saturating_mul(8);
    writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
        if pages >= limit {
            // The background checkpoints could not catch up (a WAL can only start over when no
            // checkpoint or reader holds it): bound it here, waiting out a running checkpoint
            // (which makes SQLite answer busy at once) for at most ~200 ms.
            for _ in 0..100 {
                match wal.checkpoint_v2(rusqlite::wal::CheckpointMode::RESTART) {
                    Ok((log, done)) if log == done => break,
                    _ => std::thread::sleep(std::time::Duration::from_millis(2)),
                }
            }
        } else if pages >= threshold {
            // Full means a checkpoint is already due.
            let _ = wake.try_send(());
        }
        Ok(())
    }))?;
    let handle = std::thread::Builder::new()
        .name("kubeedge-store-checkpoint".to_owned())
        .spawn(move || {
            // Ends when the writer's connection (and its hook) is gone.
            while woken.recv().is_ok() {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "background WAL checkpoint failed");
                }
            }
            // The store is closing and this is its last connection: move everything into the
            // database file and empty the WAL, whichever connection SQLite counted as last.
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "final WAL checkpoint failed");
            }
        })?;
    Ok(handle)
}

fn open_connection(config: &StoreConfig, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(&config.path, flags)
        .map_err(|e| not_a_database(&config.path, e))?;
    conn.busy_timeout(config.busy_timeout)?;
    let synchronous = match config.durability {
        Durability::ProcessCrash => "NORMAL",
        Durability::PowerLoss => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous}; PRAGMA cache_size=-{}; PRAGMA temp_store=MEMORY;
         PRAGMA journal_size_limit={};",
        config.cache_kib, config.wal_size_limit
    ))
    .map_err(|e| not_a_database(&config.path, e))?;
    Ok(conn)
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

fn not_a_database(path: &Path, e: rusqlite::Error) -> Error {
    if is_corruption(&e) {
        Error::NotADatabase {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    } else {
        Error::from(e)
    }
}
