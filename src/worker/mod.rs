//! The worker: claims queued jobs from the store under a lease and runs them, a bounded
//! number at a time, until shutdown.
//!
//! On start it takes back the jobs a dead process left `running` (attempt + 1), removes that
//! process's containers (found by label) and its workspaces. A newer push to the same branch
//! supersedes an older job, queued or running (its containers are killed); tags never are.

mod checkout_stage;
mod deploy_stage;
mod image;
mod job;
pub mod logs;
mod plan;
mod policy;
mod push;
mod record;
mod reporter;
mod reuse;
mod runner;
mod steps;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::checkout::Checkouts;
use crate::config::Settings;
use crate::deploy::{Cluster, Deployer};
use crate::executor::Executor;
use crate::store::Jobs;

/// Queues the final commit status of a canceled job (the store already says `canceled`;
/// queued, waiting or running, its `pending` must not stay the last word).
pub fn report_canceled(
    settings: &Settings,
    jobs: &Jobs,
    job: i64,
) -> Result<(), crate::store::StoreError> {
    let Some((reporter, _)) = reporter_of(settings, jobs, job)? else {
        return Ok(());
    };
    let detail = jobs.get(job)?;
    let error = detail.as_ref().and_then(|d| d.job.error.as_deref());
    let reports = reporter.finished(crate::domain::JobState::Canceled, error, detail.as_ref());
    jobs.queue_reports(job, &reports)
}

/// Queues the overall status of a job an operator approved (a pull request from a fork):
/// it no longer waits for approval, it waits for a worker.
pub fn report_approved(
    settings: &Settings,
    jobs: &Jobs,
    job: i64,
) -> Result<(), crate::store::StoreError> {
    let Some((reporter, event)) = reporter_of(settings, jobs, job)? else {
        return Ok(());
    };
    let words = format!(
        "Approved: {} queued, waiting for a worker",
        event.git_ref.label()
    );
    let reports = reporter.status(None, crate::report::StatusState::Pending, &words);
    jobs.queue_reports(job, &reports)
}

/// The reporter of a job no worker holds, and its stored event (None: it has none readable).
fn reporter_of(
    settings: &Settings,
    jobs: &Jobs,
    job: i64,
) -> Result<Option<(reporter::Reporter, crate::intake::PushEvent)>, crate::store::StoreError> {
    let event = jobs
        .event_json(job)?
        .and_then(|json| serde_json::from_str::<crate::intake::PushEvent>(&json).ok());
    Ok(event.map(|event| (reporter::Reporter::new(settings, &event, job), event)))
}

/// How often an idle worker looks for work when nobody wakes it.
const POLL: Duration = Duration::from_millis(500);

pub struct Worker<E: Executor, C: Cluster> {
    settings: Arc<Settings>,
    deployer: Arc<Deployer<C>>,
    jobs: Arc<Jobs>,
    executor: Arc<E>,
    checkouts: Arc<Checkouts>,
    registry: Option<Arc<crate::registry::RegistryClient>>,
    wake: Arc<Notify>,
    reports: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// How long one request to the registry may take (a manifest copy is two small requests).
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(60);

impl<E: Executor, C: Cluster> Worker<E, C> {
    pub fn new(
        settings: Arc<Settings>,
        jobs: Arc<Jobs>,
        executor: Arc<E>,
        wake: Arc<Notify>,
        reports: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
        deployer: Arc<Deployer<C>>,
    ) -> Self {
        let checkouts = Arc::new(Checkouts::new(&settings.server.data_dir));
        // Without a client an unchanged service is tagged through the engine instead.
        let registry = settings.registry.as_ref().and_then(|r| {
            crate::registry::RegistryClient::new(r, REGISTRY_TIMEOUT)
                .map_err(|e| tracing::warn!(error = %e, "No registry client: tags are copied through the engine"))
                .ok()
                .map(Arc::new)
        });
        Worker {
            settings,
            deployer,
            jobs,
            executor,
            checkouts,
            registry,
            wake,
            reports,
            metrics,
        }
    }

    /// Runs until `shutdown`; running jobs are then canceled at their next safe point and
    /// stay `running` with a lapsing lease, so the next start takes them again.
    pub async fn run(self, shutdown: CancellationToken) {
        let jobs = self.jobs.clone();
        match tokio::task::spawn_blocking(move || jobs.reclaim_all_running()).await {
            Ok(Ok(ids)) if !ids.is_empty() => {
                tracing::warn!(?ids, "Taking back jobs a previous process left running")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "Could not reclaim running jobs"),
            _ => {}
        }
        match self.executor.remove_containers(None).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "Removed containers left by a previous process"),
            Err(e) => tracing::error!(error = %e, "Could not look for orphaned containers"),
        }
        let slots = Arc::new(Semaphore::new(self.settings.worker.concurrency));
        let mut running = JoinSet::new();
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit,
                () = shutdown.cancelled() => break,
            };
            let Ok(permit) = permit else { break };
            let jobs = self.jobs.clone();
            let lease = self.settings.worker.lease;
            let claimed = tokio::task::spawn_blocking(move || jobs.claim_next(lease)).await;
            match claimed {
                Ok(Ok(Some(job))) => {
                    let runner = runner::Runner {
                        settings: self.settings.clone(),
                        deployer: self.deployer.clone(),
                        jobs: self.jobs.clone(),
                        executor: self.executor.clone(),
                        checkouts: self.checkouts.clone(),
                        registry: self.registry.clone(),
                        shutdown: shutdown.clone(),
                        reports: self.reports.clone(),
                        metrics: self.metrics.clone(),
                        stage_starts: Default::default(),
                    };
                    running.spawn(async move {
                        runner.run(job).await;
                        drop(permit);
                    });
                    continue;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "Could not claim a job"),
                Err(e) => tracing::error!(error = %e, "Claiming a job panicked"),
            }
            drop(permit);
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                () = shutdown.cancelled() => break,
            }
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }
}
