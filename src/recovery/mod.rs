//! Recovery of pushes whose deliveries deploybot missed (it was down, restarting, out of
//! disk, or answered 503): neither GitHub nor GitLab sends a failed delivery again by itself.
//!
//! At start and then every `recovery.interval_secs`, each project in turn: with a `hook_id`
//! and a token, its forge's log of the hook's deliveries is read and each failed push
//! deploybot has not recorded is sent again by the forge ([`hooks`]: GitHub's redelivery,
//! GitLab's resend), arriving through the normal signed path; without one, or when the forge
//! cannot (no permission, no such hook, an API too old), the repository's refs are compared
//! with what was recorded ([`refs`]) and each missing push is recorded as a recovered
//! delivery. The task belongs to a [`Recovery`] handle, which stops it at shutdown.

mod github;
mod gitlab;
mod hooks;
mod refs;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{HookAccess, Project, Settings};
use crate::forge::ForgeKind;
use crate::metrics::Metrics;
use crate::store::{RecoveryLedger, Store, StoreError};
use hooks::{DeliveryLog, LogError};

/// How long shutdown waits for a run to notice.
const STOP_WAIT: Duration = Duration::from_secs(10);

pub struct Recovery {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What a run needs.
struct Context {
    settings: Arc<Settings>,
    store: Store,
    ledger: Arc<RecoveryLedger>,
    /// Wakes the worker and the report sender when a recovered push was queued.
    wake: Arc<Notify>,
    reports: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Recovery {
    /// Starts recovering, unless `recovery.enabled` is off.
    pub fn start(
        settings: Arc<Settings>,
        store: Store,
        wake: Arc<Notify>,
        reports: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Recovery>, StoreError> {
        if !settings.recovery.enabled {
            return Ok(None);
        }
        let context = Context {
            ledger: Arc::new(RecoveryLedger::open(&settings.server.data_dir)?),
            settings,
            store,
            wake,
            reports,
            metrics,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(context, stop.clone()));
        Ok(Some(Recovery { stop, task }))
    }

    pub async fn stop(self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_WAIT, self.task).await.is_err() {
            tracing::warn!("Recovery did not stop within 10 s");
        }
    }
}

async fn run(context: Context, stop: CancellationToken) {
    loop {
        for project in &context.settings.projects {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = recover(&context, project) => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(context.settings.recovery.interval) => {}
        }
    }
}

/// One project's run: through its hook's log when it has one that works, else by its refs.
async fn recover(context: &Context, project: &Project) {
    let name = project.name.as_ref();
    if let Some(hook) = &project.hook {
        match through_hook(context, project, hook).await {
            Ok(()) => return,
            Err(LogError::RateLimited(wait)) => {
                tracing::info!(
                    project = name,
                    wait_secs = wait.as_secs(),
                    "Recovery: the forge asks to wait; the rest waits for the next run"
                );
                return;
            }
            Err(error) => tracing::warn!(
                project = name,
                error = %error,
                "Recovery: the hook's deliveries could not be read or redelivered; comparing refs instead"
            ),
        }
    }
    let comparison = refs::RefRecovery {
        settings: &context.settings,
        store: &context.store,
        ledger: &context.ledger,
    };
    match comparison.compare(project).await {
        Ok(compared) => {
            if compared.first_listing {
                tracing::info!(
                    project = name,
                    "Recovery: first listing of the repository's refs remembered"
                );
            }
            for (git_ref, sha, job) in &compared.recovered {
                tracing::warn!(
                    project = name,
                    git_ref = %git_ref,
                    sha = %sha,
                    job,
                    "Recovery: a push with no recorded delivery was queued"
                );
            }
            if !compared.recovered.is_empty() {
                context
                    .metrics
                    .recovered
                    .with_label_values(&[name, "refs"])
                    .inc_by(compared.recovered.len() as u64);
                context.wake.notify_one();
                context.reports.notify_one();
            }
            if compared.left > 0 {
                tracing::info!(
                    project = name,
                    left = compared.left,
                    "Recovery: more missed pushes wait for the next run"
                );
            }
        }
        Err(error) => tracing::warn!(
            project = name,
            error = %error,
            "Recovery: the repository's refs could not be compared"
        ),
    }
}

async fn through_hook(
    context: &Context,
    project: &Project,
    hook: &HookAccess,
) -> Result<(), LogError> {
    let timeout = context.settings.report.timeout;
    match project.forge {
        ForgeKind::Github => {
            let log = github::GitHubHookLog::new(hook, &project.repository, timeout)
                .map_err(LogError::Failed)?;
            redeliver(context, project, &log).await
        }
        ForgeKind::Gitlab => {
            let log = gitlab::GitLabHookLog::new(hook, &project.repository, timeout)
                .map_err(LogError::Failed)?;
            redeliver(context, project, &log).await
        }
    }
}

async fn redeliver<L: DeliveryLog>(
    context: &Context,
    project: &Project,
    log: &L,
) -> Result<(), LogError> {
    let name = project.name.as_ref();
    let asked = hooks::redeliver_missing(
        log,
        name,
        &context.ledger,
        &context.settings.recovery,
        &context.metrics,
    )
    .await?;
    if asked > 0 {
        tracing::info!(
            project = name,
            asked,
            how = L::HOW,
            "Recovery: redeliveries asked"
        );
    }
    Ok(())
}

/// Runs `f` on the ledger off the async threads.
async fn on_ledger<T: Send + 'static>(
    ledger: &Arc<RecoveryLedger>,
    f: impl FnOnce(&RecoveryLedger) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let ledger = ledger.clone();
    tokio::task::spawn_blocking(move || f(&ledger))
        .await
        .map_err(|e| format!("store: {e}"))?
        .map_err(|e| e.to_string())
}
