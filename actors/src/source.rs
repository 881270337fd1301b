//! The directory source actor: scans the mesh directory on a timer and forwards changes to the catalog.
//! A scan waits for the catalog to take its events before the next one starts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use actix::prelude::*;
use k8s::YamlDir;

use crate::catalog::{ApplyEvents, CatalogActor};

pub struct DirSourceActor {
    dir: YamlDir,
    catalog: Addr<CatalogActor>,
    interval: Duration,
    /// Errors already reported, so a broken file is logged once per change, not once per scan.
    reported: BTreeMap<PathBuf, String>,
}

/// Scan now; answered once the catalog applied the result.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScanNow;

impl DirSourceActor {
    pub fn new(dir: PathBuf, catalog: Addr<CatalogActor>, interval: Duration) -> Self {
        Self { dir: YamlDir::new(dir), catalog, interval, reported: BTreeMap::new() }
    }

    fn scan(&mut self) -> ResponseActFuture<Self, ()> {
        let scan = self.dir.scan();
        let mut now_broken = BTreeMap::new();
        for e in &scan.errors {
            if self.reported.get(&e.path) != Some(&e.reason) {
                tracing::error!(file = %e.path.display(), error = %e.reason, "mesh file rejected; its previous objects stay in force");
            }
            now_broken.insert(e.path.clone(), e.reason.clone());
        }
        for path in self.reported.keys() {
            if !now_broken.contains_key(path) {
                tracing::info!(file = %path.display(), "mesh file accepted again");
            }
        }
        self.reported = now_broken;
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
