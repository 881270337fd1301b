//! The directory source actor: reacts to file-system notifications on the mesh directory and forwards
//! changes to the catalog, with a slow periodic rescan as a safety net (it costs a stat per file when
//! nothing changed). A scan (file reads and YAML parsing) runs on the blocking pool, never on the actors'
//! thread, and waits for the catalog to take its events before the next one starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use k8s::YamlDir;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher as _};

use crate::catalog::{ApplyEvents, CatalogActor};

pub struct DirSourceActor {
    root: PathBuf,
    /// Taken by the scan in progress (on the blocking pool) and given back when it is done.
    dir: Option<YamlDir>,
    catalog: Addr<CatalogActor>,
    interval: Duration,
    settle: Duration,
    /// Problems already reported, so each is logged once, not once per scan.
    reported: BTreeSet<(PathBuf, String)>,
    /// Filled by the watcher thread: files whose writer is done, and whether a scan is already asked for.
    notified: Arc<Notified>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Where rejected files are counted (`osm_error_err_code_count`).
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

#[derive(Debug, Default)]
struct Notified {
    /// Per file, the latest word on its writer: `true` done (closed after writing, renamed into place),
    /// `false` still writing.
    writers: Mutex<BTreeMap<PathBuf, bool>>,
    scan_requested: AtomicBool,
}

/// Scan now; answered once the catalog applied the result.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScanNow;

/// The directory changed (from the watcher thread).
#[derive(Message)]
#[rtype(result = "()")]
struct Changed;

impl DirSourceActor {
    pub fn new(dir: PathBuf, catalog: Addr<CatalogActor>, interval: Duration) -> Self {
        // A file modified in place (no close or rename seen yet) is read once it has been left alone this
        // long: an editor or `cp` may still be writing it, and a half-written file would drop objects.
        let settle = interval.min(Duration::from_millis(100));
        Self {
            root: dir.clone(),
            dir: Some(YamlDir::new(dir).with_settle(settle)),
            catalog,
            interval,
            settle,
            reported: BTreeSet::new(),
            notified: Arc::default(),
            watcher: None,
            metrics: None,
        }
    }

    /// Counts rejected files in `metrics`.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { metrics: Some(metrics), ..self }
    }

    fn scan(&mut self) -> ResponseActFuture<Self, ()> {
        self.notified.scan_requested.store(false, Ordering::Relaxed);
        // Scans run one at a time (each is awaited with `ctx.wait`), so the directory is here.
        let Some(mut dir) = self.dir.take() else { return Box::pin(actix::fut::ready(())) };
        if let Ok(mut writers) = self.notified.writers.lock() {
            for (path, done) in std::mem::take(&mut *writers) {
                if done {
                    dir.mark_complete(&path);
                } else {
                    dir.mark_writing(&path);
                }
            }
        }
        Box::pin(
            async move {
                tokio::task::spawn_blocking(move || {
                    let scan = dir.scan();
                    (dir, scan)
                })
                .await
            }
            .into_actor(self)
            .then(|joined, act, _| {
                let (events, deferred) = act.took(joined);
                let catalog = act.catalog.clone();
                async move {
                    if !events.is_empty() {
                        tracing::info!(changes = events.len(), "mesh directory changed: {}", describe(&events));
                        if let Err(e) = catalog.send(ApplyEvents::from_dir(events)).await {
                            tracing::error!(error = %e, "catalog unavailable");
                        }
                    }
                    deferred
                }
                .into_actor(act)
            })
            .map(|deferred, act, ctx| {
                if deferred > 0 {
                    // A file still being written: look again once it may have settled.
                    ctx.run_later(act.settle, |act, ctx| ctx.wait(act.scan()));
                }
            }),
        )
    }

    /// Takes back the directory from a finished scan and reports its problems; the scan's events and how
    /// many files it left for later.
    fn took(
        &mut self,
        joined: Result<(YamlDir, k8s::Scan), tokio::task::JoinError>,
    ) -> (Vec<messages::SourceEvent>, usize) {
        let scan = match joined {
            Ok((dir, scan)) => {
                self.dir = Some(dir);
                scan
            }
            Err(e) => {
                // A scan that panicked lost what the directory knew: the next scan reads every file again.
                tracing::error!(error = %e, "mesh directory scan failed; reading the directory again");
                self.dir = Some(YamlDir::new(self.root.clone()).with_settle(self.settle));
                return (Vec::new(), 1);
            }
        };
        // `scan.errors` lists every problem that holds now: log each once, and say when a file is fine again.
        let now: BTreeSet<(PathBuf, String)> = scan.errors.iter().map(|e| (e.path.clone(), e.reason.clone())).collect();
        for (path, reason) in now.difference(&self.reported) {
            let code = messages::errcode::MESH_FILE_INVALID;
            tracing::error!(file = %path.display(), error = %reason, error_code = code, "mesh file rejected; what it defined before stays in force");
            if let Some(m) = &self.metrics {
                m.error(code);
            }
        }
        let broken: BTreeSet<&PathBuf> = now.iter().map(|(p, _)| p).collect();
        let fixed: BTreeSet<&PathBuf> = self.reported.iter().map(|(p, _)| p).filter(|p| !broken.contains(p)).collect();
        for path in fixed {
            tracing::info!(file = %path.display(), "mesh file problems resolved");
        }
        self.reported = now;
        (scan.events, scan.deferred)
    }

    fn watch(&mut self, ctx: &mut Context<Self>) -> notify::Result<()> {
        let addr = ctx.address();
        let notified = self.notified.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            // Close-after-write and rename-into-place mean the writer is done: no need to wait it out.
            let done = matches!(
                event.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            );
            if matches!(
                event.kind,
                EventKind::Access(AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read))
            ) {
                return;
            }
            let writing = matches!(event.kind, EventKind::Modify(ModifyKind::Data(_)));
            if (done || writing)
                && let Ok(mut w) = notified.writers.lock()
            {
                for path in &event.paths {
                    w.insert(path.clone(), done);
                }
            }
            // One pending scan covers any number of events.
            if !notified.scan_requested.swap(true, Ordering::Relaxed) && addr.try_send(Changed).is_err() {
                notified.scan_requested.store(false, Ordering::Relaxed);
            }
        })?;
        watcher.watch(&self.root, RecursiveMode::Recursive)?;
        self.watcher = Some(watcher);
        Ok(())
    }
}

/// What a batch of events changes, for the log: the first few objects by name, then how many more.
fn describe(events: &[messages::SourceEvent]) -> String {
    use messages::SourceEvent;
    const SHOWN: usize = 5;
    let mut parts = Vec::new();
    let mut total = 0usize;
    for e in events {
        let items: Vec<String> = match e {
            SourceEvent::Apply(o) => vec![format!("applied {}", o.key())],
            SourceEvent::Delete(k) => vec![format!("deleted {k}")],
            SourceEvent::Reset(r) => vec![format!("{} objects loaded", r.objects.len())],
        };
        total += items.len();
        parts.extend(items.into_iter().take(SHOWN.saturating_sub(parts.len())));
    }
    if total > parts.len() {
        parts.push(format!("and {} more", total - parts.len()));
    }
    parts.join(", ")
}

impl Actor for DirSourceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match self.watch(ctx) {
            Ok(()) => tracing::debug!(dir = %self.root.display(), "watching the mesh directory"),
            Err(e) => tracing::warn!(
                dir = %self.root.display(), error = %e, interval_ms = self.interval.as_millis() as u64,
                "cannot watch the mesh directory; changes are found by the periodic rescan only"
            ),
        }
        ctx.run_interval(self.interval, |act, ctx| {
            // `wait` keeps scans from overlapping when the catalog is slow.
            ctx.wait(act.scan());
        });
    }
}

impl Handler<ScanNow> for DirSourceActor {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: ScanNow, _: &mut Self::Context) -> Self::Result {
        self.scan()
    }
}

impl Handler<Changed> for DirSourceActor {
    type Result = ();
    fn handle(&mut self, _: Changed, ctx: &mut Self::Context) {
        ctx.wait(self.scan());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messages::{Kind, ObjectKey, SourceEvent};

    #[test]
    fn the_log_says_what_changed() {
        let del = |n: usize| SourceEvent::Delete(ObjectKey::new(Kind::Pod, "demo", format!("p{n}")));
        assert_eq!(describe(&[del(1)]), "deleted Pod demo/p1");
        let many: Vec<SourceEvent> = (0..8).map(del).collect();
        assert_eq!(
            describe(&many),
            "deleted Pod demo/p0, deleted Pod demo/p1, deleted Pod demo/p2, deleted Pod demo/p3, deleted Pod demo/p4, and 3 more"
        );
    }
}
