//! [`ManifestSource`](super::ManifestSource): the folder scanned and reported as the object
//! events a cluster's watches produce.

use super::*;

impl ManifestSource {
    /// Opens manifest mode: checks that `config.dir` is a folder, creates `config.status_dir`
    /// and loads what the writer kept there in an earlier run (nodes, leases, device statuses,
    /// events, and pod statuses, which return to their pod when it has the same uid). The
    /// source and the writer share that state.
    ///
    /// Nothing is scanned until [`ManifestSource::run`]; the writer can be used right away
    /// (its changes are part of the first scan's `Listed` events).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use kubeedge_cloud::{Kind, ManifestConfig, ManifestSource, ObjectEvent};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let manifests = tempfile::tempdir()?;
    /// let status = tempfile::tempdir()?;
    /// std::fs::write(
    ///     manifests.path().join("app.yaml"),
    ///     "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app}\ndata: {greeting: hello}\n",
    /// )?;
    /// let config = ManifestConfig::new(manifests.path(), status.path());
    /// let (source, _writer) = ManifestSource::open(config)?;
    ///
    /// let (events, mut received) = tokio::sync::mpsc::channel(16);
    /// let shutdown = CancellationToken::new();
    /// let task = tokio::spawn(source.run(events, shutdown.clone()));
    /// // The first scan lists each kind once.
    /// for _ in Kind::ALL {
    ///     let Some(ObjectEvent::Listed { kind, objects }) = received.recv().await else {
    ///         panic!("expected a Listed event");
    ///     };
    ///     if kind == Kind::ConfigMap {
    ///         assert_eq!(objects.len(), 1);
    ///         assert_eq!(objects[0].namespace(), "default");
    ///         assert!(!objects[0].uid().is_empty());
    ///     }
    /// }
    /// shutdown.cancel();
    /// task.await??;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open(config: ManifestConfig) -> Result<(ManifestSource, ManifestWriter)> {
        let meta = fs::metadata(&config.dir).map_err(|source| Error::Io {
            what: format!("manifest folder {}", config.dir.display()),
            source,
        })?;
        if !meta.is_dir() {
            return Err(Error::Manifest {
                path: config.dir.clone(),
                reason: "not a folder".into(),
            });
        }
        for folder in STATUS_FOLDERS {
            let path = config.status_dir.join(folder);
            fs::create_dir_all(&path).map_err(|source| Error::Io {
                what: format!("creating {}", path.display()),
                source,
            })?;
        }
        raise_rv(now_micros());
        let state = load_state(&config);
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            files: tokio::sync::Mutex::new(()),
            queued: Notify::new(),
        });
        Ok((
            ManifestSource {
                shared: Arc::clone(&shared),
            },
            ManifestWriter { shared },
        ))
    }

    /// Scans the folder every `scan_interval` and sends what it holds to `events` until
    /// `shutdown` is cancelled: first one [`ObjectEvent::Listed`] per kind (all 7, empty ones
    /// too, with the writer's nodes and leases), then `Applied`/`Deleted` for what changed,
    /// in the folder or through the [`ManifestWriter`].
    ///
    /// Files (`*.yaml`, `*.yml`, `*.json` directly in the folder, read in name order) may hold
    /// several documents and `kind: List` documents. Documents of other kinds, and files that
    /// cannot be read or parsed, are logged; such a file keeps the objects it had. Objects get
    /// namespace `default` when they have none, a stable uid (UUID v5 of kind, namespace and
    /// name unless the manifest gives one), their creation time and a growing resourceVersion.
    ///
    /// A pod removed from the folder terminates as with the API server: it is sent with
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` (its
    /// `terminationGracePeriodSeconds`, 30 by default) and is deleted when its node deletes
    /// it through [`ManifestWriter`] (`delete_pod`), or after the grace period plus
    /// `delete_timeout`. Unscheduled or finished pods, and a zero grace period, are deleted at
    /// once, as are objects of the other kinds.
    ///
    /// Returns `Ok` when `shutdown` is cancelled, [`Error::Stopped`] when `events` is closed.
    pub async fn run(
        self,
        events: mpsc::Sender<ObjectEvent>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let result = self.run_until(&events, &shutdown).await;
        let mut state = self.shared.state();
        state.running = false;
        state.queue.clear();
        result
    }

    async fn run_until(
        &self,
        events: &mpsc::Sender<ObjectEvent>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let period = self
            .shared
            .config
            .scan_interval
            .clamp(ManifestConfig::MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            loop {
                let batch = std::mem::take(&mut self.shared.state().queue);
                if batch.is_empty() {
                    break;
                }
                for event in batch {
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        sent = events.send(event) => sent.map_err(|_| Error::Stopped)?,
                    }
                }
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = self.shared.queued.notified() => {}
                _ = ticks.tick() => {
                    self.scan(first).await;
                    first = false;
                }
            }
        }
    }

    async fn scan(&self, first: bool) {
        let shared = &self.shared;
        let attempted: HashMap<PathBuf, u64> = shared
            .state()
            .manifests
            .iter()
            .filter_map(|(path, file)| file.attempted.map(|hash| (path.clone(), hash)))
            .collect();
        let dir = shared.config.dir.clone();
        let read = tokio::task::spawn_blocking(move || read_manifests(&dir, &attempted))
            .await
            .unwrap_or_else(|e| Err(format!("the scan task failed: {e}")));
        let _files = shared.files.lock().await;
        let mut ops = Vec::new();
        shared
            .state()
            .apply_scan(&shared.config, read, first, &mut ops);
        if let Err(reason) = shared.run_file_ops(ops).await {
            tracing::error!(%reason, "cannot update the status folder");
        }
    }
}
