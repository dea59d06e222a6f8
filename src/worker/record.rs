//! How a running job reaches its record: store calls off the async threads, the lease kept
//! while it runs, and every stage change (with the duration histogram and the reports that
//! change causes, in one transaction).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::runner::Runner;
use crate::deploy::Cluster;
use crate::domain::{StageName, StageState};
use crate::executor::Executor;
use crate::store::{ClaimedJob, Jobs, NewReport, StageUpdate, StoreError};

impl<E: Executor, C: Cluster> Runner<E, C> {
    /// Runs a store call on a blocking thread; a failure is logged here, once.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Jobs) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let result = self.jobs.call(f).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "Job store call failed");
        }
        result
    }

    /// Renews the lease while the job runs; cancels it when a newer push supersedes it or the
    /// lease is lost (another claim took it, or an operator canceled the job).
    pub(super) fn keep_lease(
        &self,
        job: ClaimedJob,
        cancel: CancellationToken,
        superseded: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let jobs = self.jobs.clone();
        let lease = self.settings.worker.lease;
        tokio::spawn(async move {
            let every = (lease / 3)
                .max(Duration::from_millis(500))
                .min(Duration::from_secs(2));
            loop {
                tokio::time::sleep(every).await;
                let (jobs, job) = (jobs.clone(), job.clone());
                let check = tokio::task::spawn_blocking(move || {
                    Ok::<_, StoreError>((jobs.renew(job.id, lease)?, jobs.is_superseded(&job)?))
                })
                .await;
                match check {
                    Ok(Ok((_, true))) => {
                        superseded.cancel();
                        cancel.cancel();
                        return;
                    }
                    Ok(Ok((false, _))) => {
                        cancel.cancel();
                        return;
                    }
                    _ => {}
                }
            }
        })
    }

    /// Sets a stage (no reports go with it).
    pub(super) async fn stage(&self, job: i64, update: StageUpdate<'_>) {
        self.stage_with(job, update, Vec::new()).await
    }

    /// Sets a stage and, in the same transaction, queues the reports it causes.
    pub(super) async fn stage_with(
        &self,
        job: i64,
        update: StageUpdate<'_>,
        reports: Vec<NewReport>,
    ) {
        let (service, detail) = (update.service.to_owned(), update.detail.map(str::to_owned));
        let (stage, state, exit_code) = (update.stage, update.state, update.exit_code);
        // A failed write is logged by `blocking`; the stage goes on (the push's record is the
        // one whose failure stops a service: see `push_stage`).
        let _ = self
            .record_stage(
                update.service,
                stage,
                state,
                reports,
                move |jobs, reports| {
                    let update = StageUpdate {
                        service: &service,
                        stage,
                        state,
                        exit_code,
                        detail: detail.as_deref(),
                    };
                    jobs.set_stage_reporting(job, &update, reports)
                },
            )
            .await;
    }

    /// Every stage change goes through here: the duration histogram, the store write that
    /// carries the change and the reports it causes (one transaction), and a wake-up for the
    /// report sender when there are reports.
    pub(super) async fn record_stage(
        &self,
        service: &str,
        stage: StageName,
        state: StageState,
        reports: Vec<NewReport>,
        write: impl FnOnce(&Jobs, &[NewReport]) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.time_stage(service, stage, state);
        let queued = !reports.is_empty();
        let written = self.blocking(move |jobs| write(jobs, &reports)).await;
        if queued {
            self.reports.notify_one();
        }
        written
    }

    /// Feeds the stage-duration histogram: a stage's clock starts when it runs and stops when
    /// it succeeds or fails.
    fn time_stage(&self, service: &str, stage: StageName, state: StageState) {
        let mut starts = self.stage_starts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (service.to_owned(), stage);
        match state {
            StageState::Running => {
                starts.insert(key, std::time::Instant::now());
            }
            StageState::Success | StageState::Failed => {
                if let Some(started) = starts.remove(&key) {
                    self.metrics
                        .stage_seconds
                        .with_label_values(&[stage.as_str(), state.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }
}
