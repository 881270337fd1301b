//! The directory source actor: scans the mesh directory on a timer and forwards changes to the catalog.
//! A scan waits for the catalog to take its events before the next one starts.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use k8s::YamlDir;

use crate::catalog::{ApplyEvents, CatalogActor};

pub struct DirSourceActor {
    dir: YamlDir,
    catalog: Addr<CatalogActor>,
    interval: Duration,
    /// Problems already reported, so each is logged once, not once per scan.
    reported: BTreeSet<(PathBuf, String)>,
}

/// Scan now; answered once the catalog applied the result.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScanNow;

impl DirSourceActor {
    pub fn new(dir: PathBuf, catalog: Addr<CatalogActor>, interval: Duration) -> Self {
        // Give writers a moment: a file is read once it has not changed for a short while.
        let settle = interval.min(Duration::from_millis(100));
        Self { dir: YamlDir::new(dir).with_settle(settle), catalog, interval, reported: BTreeSet::new() }
    }

    fn scan(&mut self) -> ResponseActFuture<Self, ()> {
        let scan = self.dir.scan();
        // `scan.errors` lists every problem that holds now: log each once, and say when a file is fine again.
        let now: BTreeSet<(PathBuf, String)> = scan.errors.iter().map(|e| (e.path.clone(), e.reason.clone())).collect();
        for (path, reason) in now.difference(&self.reported) {
            tracing::error!(file = %path.display(), error = %reason, "mesh file rejected; what it defined before stays in force");
        }
        let broken: BTreeSet<&PathBuf> = now.iter().map(|(p, _)| p).collect();
        let fixed: BTreeSet<&PathBuf> = self.reported.iter().map(|(p, _)| p).filter(|p| !broken.contains(p)).collect();
        for path in fixed {
            tracing::info!(file = %path.display(), "mesh file problems resolved");
        }
        self.reported = now;
        let catalog = self.catalog.clone();
        let events = scan.events;
        Box::pin(
            async move {
                if !events.is_empty() {
                    tracing::info!(changes = events.len(), "mesh directory changed");
                    if let Err(e) = catalog.send(ApplyEvents(events)).await {
                        tracing::error!(error = %e, "catalog unavailable");
                    }
                }
            }
            .into_actor(self),
        )
    }
}

impl Actor for DirSourceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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
