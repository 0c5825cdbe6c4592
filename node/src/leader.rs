//! Work only a shard's leader does, driven by replicated state so that a new leader
//! carries on where the old one stopped: delivering the alert outbox, exporting
//! telemetry, proposing retention purges, and keeping the replicated shard settings in
//! line with this node's configuration.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_storage_engine::{Command, Response, Retention};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alerting::{Dispatcher, Message};
use crate::error::RoundError;
use crate::export::Exporter;
use crate::host::{Host, Replica};
use crate::metrics::NodeMetrics;

/// Outbox entries delivered per round and shard.
const OUTBOX_BATCH: usize = 100;
/// Export-queue entries exported per round and shard.
const EXPORT_BATCH: usize = 1000;
/// How often the leader loop looks at each shard.
const ROUND: Duration = Duration::from_millis(250);

/// The leader-side sinks.
pub struct LeaderWork {
    host: Arc<Host>,
    metrics: NodeMetrics,
    dispatcher: Arc<Dispatcher>,
    exporter: Option<Arc<Exporter>>,
}

impl LeaderWork {
    /// Leader work of `host` with the given sinks.
    pub fn new(
        host: Arc<Host>,
        metrics: NodeMetrics,
        dispatcher: Arc<Dispatcher>,
        exporter: Option<Arc<Exporter>>,
    ) -> Arc<LeaderWork> {
        Arc::new(LeaderWork {
            host,
            metrics,
            dispatcher,
            exporter,
        })
    }

    /// Runs until `stopped` turns true; each shard's work runs on its own task so a slow
    /// sink of one shard never holds up another.
    pub async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut running: HashMap<u32, JoinHandle<()>> = HashMap::new();
        let mut purged: HashMap<u32, Instant> = HashMap::new();
        let purge_every = Duration::from_secs(self.host.config.retention.purge_every_s);
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                () = tokio::time::sleep(ROUND) => {}
            }
            running.retain(|_, task| !task.is_finished());
            for replica in self.host.replicas() {
                if !crate::host::leads(&replica.metrics(), self.host.id)
                    || replica.hand_over.in_progress()
                    || running.contains_key(&replica.shard)
                {
                    continue;
                }
                let purge = purged
                    .get(&replica.shard)
                    .is_none_or(|at| at.elapsed() >= purge_every);
                if purge {
                    purged.insert(replica.shard, Instant::now());
                }
                let work = self.clone();
                running.insert(
                    replica.shard,
                    tokio::spawn(async move { work.shard(&replica, purge).await }),
                );
            }
        }
        for (_, task) in running {
            let _ = task.await;
        }
    }

    /// One round of one shard led here.
    async fn shard(&self, replica: &Replica, purge: bool) {
        let shard = replica.shard;
        if let Err(e) = self.configure(replica).await {
            tracing::warn!(shard, error = %e, "shard settings not updated");
            return;
        }
        if let Err(e) = self.deliver(replica).await {
            tracing::warn!(shard, error = %e, "alert delivery round failed");
        }
        if let Err(e) = self.export(replica).await {
            tracing::warn!(shard, error = %e, "export round failed");
        }
        if purge {
            if let Err(e) = self.purge(replica).await {
                tracing::warn!(shard, error = %e, "retention purge failed");
            }
        }
    }

    async fn propose(&self, replica: &Replica, command: Command) -> Result<Response, RoundError> {
        let written = replica
            .raft
            .client_write(command)
            .await
            .map_err(RoundError::raft)?;
        match written.data {
            Response::Rejected(reason) => Err(RoundError::Rejected(reason)),
            response => Ok(response),
        }
    }

    /// Replicates this node's shard settings when the shard's differ.
    async fn configure(&self, replica: &Replica) -> Result<(), RoundError> {
        let settings = self.host.shard_settings();
        if replica.reader.settings() == settings {
            return Ok(());
        }
        self.propose(replica, Command::Configure(Box::new(settings)))
            .await
            .map(|_| tracing::info!(shard = replica.shard, "shard settings replicated"))
    }

    /// Delivers pending notifications in outbox order, then acknowledges the delivered ones.
    async fn deliver(&self, replica: &Replica) -> Result<(), RoundError> {
        let entries = replica.reader.outbox(None, OUTBOX_BATCH)?;
        let mut delivered = Vec::new();
        for entry in entries {
            let message = Message {
                json: &entry.json,
                alert: &entry.alert,
                event: entry.event,
            };
            if let Err(e) = self.dispatcher.deliver(message).await {
                tracing::warn!(alert = %entry.alert.alert_id, error = %e, "alert not delivered yet");
                break;
            }
            self.metrics.count_delivered(&entry.alert, entry.event);
            delivered.push(entry.seq);
        }
        if delivered.is_empty() {
            return Ok(());
        }
        self.propose(replica, Command::AckAlerts(delivered))
            .await
            .map(|_| ())
    }

    /// Exports the replicated export queue, then moves its cursor.
    async fn export(&self, replica: &Replica) -> Result<(), RoundError> {
        let Some(exporter) = &self.exporter else {
            return Ok(());
        };
        let entries = replica.reader.export_queue(None, EXPORT_BATCH)?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(());
        };
        exporter.export(&entries).await?;
        self.propose(replica, Command::Exported(last))
            .await
            .map(|_| ())
    }

    /// Proposes deleting rows older than the retention periods.
    async fn purge(&self, replica: &Replica) -> Result<(), RoundError> {
        let retention = &self.host.config.retention;
        let now = crate::now_ms();
        let telemetry_before_ms = now - (retention.telemetry_hours * 3_600_000) as i64;
        let command = Command::Purge(Retention {
            telemetry_before_ms,
            anomalies_before_ms: now - (retention.anomalies_days * 86_400_000) as i64,
            dedup_before_ms: telemetry_before_ms,
        });
        self.propose(replica, command).await.map(|_| ())
    }
}
