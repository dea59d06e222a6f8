//! The retention task: sweeps the store (`store::Sweeper`) at start and then every
//! `retention.interval_secs`, off the async threads, and asks the writer for a new body segment
//! when the sweep says so. It belongs to a [`Retention`] handle, which stops it at shutdown,
//! between two batches of a sweep.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, Sweeper, Swept};

/// How long shutdown waits for a sweep to reach the end of its batch.
const STOP_WAIT: Duration = Duration::from_secs(10);

pub struct Retention {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Retention {
    /// Starts sweeping the store under `data_dir` (which `store` writes).
    pub fn start(
        settings: RetentionSettings,
        data_dir: &std::path::Path,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Retention, StoreError> {
        let sweeper = Sweeper::open(data_dir)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(settings, sweeper, store, metrics, stop.clone()));
        Ok(Retention { stop, task })
    }

    /// Stops the task and waits (a while) for it to end.
    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_WAIT, self.task).await.is_err() {
            tracing::warn!("The retention sweep did not stop within 10 s");
        }
    }
}

async fn run(
    settings: RetentionSettings,
    mut sweeper: Sweeper,
    store: Store,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let limits = settings.limits.clone();
        let go_on = stop.clone();
        let sweep = tokio::task::spawn_blocking(move || {
            let swept = sweeper.sweep(&limits, OffsetDateTime::now_utc(), &|| {
                !go_on.is_cancelled()
            });
            (sweeper, swept)
        });
        let swept = match sweep.await {
            Ok((back, swept)) => {
                sweeper = back;
                swept
            }
            Err(e) => {
                tracing::error!(error = %e, "Retention sweep panicked; retention stops");
                return;
            }
        };
        match swept {
            Ok(swept) => account(&swept, &store, &metrics),
            Err(e) => {
                tracing::error!(error = %e, "Retention sweep failed; next one at the interval")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.interval) => {}
        }
    }
}

fn account(swept: &Swept, store: &Store, metrics: &Metrics) {
    for (kind, count) in [
        ("rejections", swept.rejections),
        ("log_chunks", swept.log_chunks),
        ("bodies", swept.bodies),
        ("segments", swept.segments),
    ] {
        metrics
            .retention_removed
            .with_label_values(&[kind])
            .inc_by(count);
    }
    if swept != &Swept::default() {
        tracing::info!(
            rejections = swept.rejections,
            log_chunks = swept.log_chunks,
            bodies = swept.bodies,
            segments = swept.segments,
            "Retention sweep removed old data"
        );
    }
    if swept.rotate && !store.rotate_segment() {
        tracing::debug!("Writer busy; the segment rotation is asked for again next sweep");
    }
}
