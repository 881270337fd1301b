//! The Kubernetes source actor: owns the kube-rs watchers ([`k8s::watch`]) and hands each batch of
//! changes to the catalog, one at a time, so a burst of API events slows the watchers instead of queueing
//! without bound.

use actix::prelude::*;
use k8s::watch::{Batch, SOURCE, WatchConfig};
use tokio_stream::wrappers::ReceiverStream;

use crate::catalog::{ApplyEvents, CatalogActor};

pub struct KubeSourceActor {
    config: kube::Config,
    watch: WatchConfig,
    catalog: Addr<CatalogActor>,
}

impl KubeSourceActor {
    pub fn new(config: kube::Config, watch: WatchConfig, catalog: Addr<CatalogActor>) -> Self {
        Self { config, watch, catalog }
    }
}

impl Actor for KubeSourceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The client is made here so its connection pool runs on this actor thread, not on the threads
        // that serve sidecars.
        let client = match kube::Client::try_from(self.config.clone()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, cluster = %self.config.cluster_url, "cannot create a Kubernetes client");
                ctx.stop();
                return;
            }
        };
        tracing::info!(
            cluster = %self.config.cluster_url,
            mesh = %self.watch.mesh_name,
            "watching Kubernetes (namespaces labelled {}={})",
            k8s::watch::MONITORED_BY_LABEL,
            self.watch.mesh_name
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(16);
        ctx.spawn(k8s::watch::run(client, self.watch.clone(), tx).into_actor(self));
        ctx.add_stream(ReceiverStream::new(rx));
    }
}

impl StreamHandler<Batch> for KubeSourceActor {
    fn handle(&mut self, batch: Batch, ctx: &mut Self::Context) {
        let catalog = self.catalog.clone();
        // `wait`: the next batch is taken once the catalog applied this one.
        ctx.wait(
            async move {
                if let Err(e) = catalog.send(ApplyEvents::from_source(SOURCE, batch)).await {
                    tracing::error!(error = %e, "catalog unavailable");
                }
            }
            .into_actor(self),
        );
    }

    fn finished(&mut self, _: &mut Self::Context) {
        tracing::warn!("the Kubernetes watchers stopped");
    }
}

pub use k8s::client::kube_config;
