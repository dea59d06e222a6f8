//! One job: checkout → (per service, in parallel) check → compile → image → push → deploy.
//!
//! A service that fails stops at that stage and the others go on; the job's result is the
//! worst of its services. Every failure records stage, service, exit code and the last log
//! lines. Containers and the workspace are removed at the end, whatever happened.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::image::PushSource;
use super::logs::{clip, JobLog, Masker, REASON_BYTES};
use super::reporter::Reporter;
use super::runner::{Deployed, JobContext, Runner};
use super::{policy, reuse};
use crate::checkout::Tree;
use crate::deploy::Cluster;
use crate::domain::{JobState, RefKind, StageName, StageState};
use crate::executor::{ExecError, Executor};
use crate::intake::PushEvent;
use crate::pipeline::{Definition, Service, Stage};
use crate::report::StatusState;
use crate::store::{ClaimedJob, StageUpdate};

/// Job-level stages are recorded under this service name.
pub(super) const JOB_SCOPE: &str = "-";

/// Why a service stopped.
pub(super) struct Failure {
    pub(super) stage: StageName,
    pub(super) exit_code: Option<i64>,
    pub(super) reason: String,
}

/// How a job ended, as its record and reports say.
struct Ending {
    state: JobState,
    error: Option<String>,
}

impl<E: Executor, C: Cluster> Runner<E, C> {
    pub async fn run(self, job: ClaimedJob) {
        let span = tracing::info_span!("build", job = job.id, project = %job.project, git_ref = %job.git_ref, sha = %job.sha);
        let _entered = span.clone();
        let id = job.id;
        self.observe_queue_wait(&job);
        let first_look = job.clone();
        if self
            .blocking(move |jobs| jobs.is_superseded(&first_look))
            .await
            .unwrap_or(false)
        {
            tracing::info!(parent: &span, "Superseded before it started");
            // Its `pending` status ends too, or the commit would show it pending for ever.
            // An earlier attempt (before a restart) may have opened its services' too.
            let detail = self.blocking(move |jobs| jobs.get(id)).await.ok().flatten();
            let reports = serde_json::from_str::<PushEvent>(&job.event_json)
                .ok()
                .map(|event| {
                    Reporter::new(&self.settings, &event, id).finished(
                        JobState::Superseded,
                        None,
                        detail.as_ref(),
                    )
                })
                .unwrap_or_default();
            let _ = self
                .blocking(move |jobs| jobs.supersede(id, &reports))
                .await;
            self.reports.notify_one();
            return;
        }
        let cancel = self.shutdown.child_token();
        let superseded = CancellationToken::new();
        let keeper = self.keep_lease(job.clone(), cancel.clone(), superseded.clone());
        let log = JobLog::new(
            id,
            self.settings.worker.log_limit_bytes,
            Masker::new(self.settings.secret_values()),
            self.jobs.clone(),
        );
        let flushing = CancellationToken::new();
        let flusher = tokio::spawn({
            let log = log.clone();
            let stop = flushing.clone();
            async move { log.flush_until(stop).await }
        });

        let reporter = self.reporter_for(&job).await;
        let outcome = self.attempt(&job, &log, &cancel, reporter.as_ref()).await;

        keeper.abort();
        flushing.cancel();
        let _ = flusher.await;
        if let Err(e) = self.executor.remove_containers(Some(id)).await {
            tracing::warn!(parent: &span, error = %e, "Could not remove the job's containers; trying again in the background");
            tokio::spawn(remove_eventually(self.executor.clone(), id));
        }
        self.checkouts.clean(id).await;
        let Some(ending) = self.ending(id, outcome, superseded.is_cancelled()).await else {
            self.jobs.release(id);
            return;
        };
        tracing::info!(parent: &span, state = %ending.state, error = ending.error.as_deref().unwrap_or(""), "Job finished");
        let detail = self.blocking(move |jobs| jobs.get(id)).await.ok().flatten();
        let (state, error) = (ending.state, ending.error);
        let reports = reporter
            .map(|r| r.finished(state, error.as_deref(), detail.as_ref()))
            .unwrap_or_default();
        let _ = self
            .blocking(move |jobs| jobs.finish_reporting(id, state, error.as_deref(), &reports))
            .await;
        self.reports.notify_one();
    }

    /// The job's reporter; one that takes the job back after a crash knows which of its
    /// commit statuses already reached a result, and never sends them back to `pending`.
    async fn reporter_for(&self, job: &ClaimedJob) -> Option<Reporter> {
        let event = serde_json::from_str::<PushEvent>(&job.event_json).ok()?;
        let reporter = Reporter::new(&self.settings, &event, job.id);
        if job.attempt <= 1 {
            return Some(reporter);
        }
        let id = job.id;
        let earlier = self
            .blocking(move |jobs| jobs.run_statuses(id))
            .await
            .unwrap_or_default();
        Some(reporter.taking_back(&earlier))
    }

    fn observe_queue_wait(&self, job: &ClaimedJob) {
        if job.attempt != 1 {
            return;
        }
        let format = &time::format_description::well_known::Rfc3339;
        if let Ok(queued) = time::OffsetDateTime::parse(&job.created_at, format) {
            let waited = (time::OffsetDateTime::now_utc() - queued).as_seconds_f64();
            self.metrics.queue_wait_seconds.observe(waited.max(0.0));
        }
    }

    /// Builds (and deploys) the job, unless each of its earlier attempts ended with its worker
    /// gone (crashed, killed, restarted): a job that takes deploybot down must not do so after
    /// every restart.
    async fn attempt(
        &self,
        job: &ClaimedJob,
        log: &JobLog,
        cancel: &CancellationToken,
        reporter: Option<&Reporter>,
    ) -> Result<Deployed, String> {
        let max_attempts = i64::from(self.settings.worker.max_attempts);
        if job.attempt > max_attempts {
            return Err(format!(
                "deploybot stopped during each of this job's {max_attempts} attempts (it crashed, was killed or restarted); it is not tried again: re-run it once the cause is found"
            ));
        }
        self.build(job, log, cancel, reporter).await
    }

    /// How the job ended; None when it is not this worker's to end: a shutdown leaves it
    /// running (its lease lapses and the next start takes it again), and an operator's cancel
    /// already ended it (its commit status says so too).
    async fn ending(
        &self,
        id: i64,
        outcome: Result<Deployed, String>,
        superseded: bool,
    ) -> Option<Ending> {
        if superseded {
            return Some(Ending {
                state: JobState::Superseded,
                error: Some("a newer push to the same branch replaced it".to_owned()),
            });
        }
        if self.shutdown.is_cancelled() {
            tracing::info!("Interrupted by shutdown; it will be resumed");
            return None;
        }
        let now = self
            .blocking(move |jobs| jobs.state(id))
            .await
            .ok()
            .flatten();
        if now == Some(JobState::Canceled) {
            tracing::info!("Canceled (by an operator, or its pull request was closed)");
            let settings = self.settings.clone();
            let _ = self
                .blocking(move |jobs| super::report_canceled(&settings, jobs, id))
                .await;
            self.reports.notify_one();
            return None;
        }
        let (state, error) = match outcome {
            Ok(Deployed::Nothing) => (JobState::Success, None),
            Ok(Deployed::All) => (JobState::Deployed, None),
            Ok(Deployed::RolledBack(reason)) => (JobState::RolledBack, Some(reason)),
            Ok(Deployed::Failed(reason)) | Err(reason) => (JobState::Failed, Some(reason)),
        };
        Some(Ending { state, error })
    }

    async fn build(
        &self,
        job: &ClaimedJob,
        log: &JobLog,
        cancel: &CancellationToken,
        reporter: Option<&Reporter>,
    ) -> Result<Deployed, String> {
        let project = self
            .settings
            .project(&job.project)
            .ok_or_else(|| format!("project \"{}\" is no longer configured", job.project))?;
        let event: PushEvent = serde_json::from_str(&job.event_json)
            .map_err(|e| format!("the job's push event is unreadable: {e}"))?;
        // A fork's pull request is built by its base branch's pipeline.
        let fork_base = event
            .pull
            .as_ref()
            .filter(|p| p.from_fork)
            .map(|p| p.target_branch.as_str());
        let (workspace, tree) = self.checkout_stage(job, project, log, cancel).await?;
        let definition = self
            .pipeline_stage(job, project, fork_base, log, &tree)
            .await?;
        let pushes = should_push(&definition, job) && self.settings.registry.is_some();
        let environments = if pushes {
            self.environments_for(&job.project, &job.git_ref)
        } else {
            Vec::new()
        };
        let context = JobContext {
            job,
            project,
            reporter,
            event: &event,
            workspace: &workspace,
            tree,
            pushes,
            fork: fork_base.is_some(),
            environments,
            log,
            cancel,
        };
        self.plan_stages(&context, &definition).await;
        let failures = self.build_services(&context, &definition.services).await;
        if !failures.is_empty() {
            self.skip_deploys(&context, &definition.services).await;
            return Err(failures.join("; "));
        }
        if definition.services.iter().any(|s| context.deploys(s)) {
            Ok(self.deploy_services(&context, &definition.services).await)
        } else {
            Ok(Deployed::Nothing)
        }
    }

    /// The job's workspace and the confined view of it, or why there is none.
    async fn checkout_stage(
        &self,
        job: &ClaimedJob,
        project: &crate::config::Project,
        log: &JobLog,
        cancel: &CancellationToken,
    ) -> Result<(std::path::PathBuf, std::sync::Arc<Tree>), String> {
        let sink = log.stage(JOB_SCOPE, StageName::Checkout);
        let update = |state| StageUpdate::new(JOB_SCOPE, StageName::Checkout, state);
        self.stage(job.id, update(StageState::Running)).await;
        sink.note(&format!(
            "fetching {} at {} from {}",
            job.git_ref, job.sha, project.clone_url
        ));
        match self.checkout(job, project, cancel).await {
            Ok(fetched) => {
                self.stage(job.id, update(StageState::Success)).await;
                Ok(fetched)
            }
            Err(e) => {
                let reason = log_mask(log, &e);
                sink.note(&reason);
                let failed = StageUpdate {
                    detail: Some(&reason),
                    ..update(StageState::Failed)
                };
                self.stage(job.id, failed).await;
                Err(format!("checkout: {reason}"))
            }
        }
    }

    /// The repository's pipeline (a fork's pull request: the pipeline of its base branch,
    /// `fork_base`), as the project's policy allows it; the log says what it will do.
    async fn pipeline_stage(
        &self,
        job: &ClaimedJob,
        project: &crate::config::Project,
        fork_base: Option<&str>,
        log: &JobLog,
        tree: &Tree,
    ) -> Result<Definition, String> {
        let sink = log.stage(JOB_SCOPE, StageName::Checkout);
        let network = policy::Network::for_job(project, fork_base.is_some());
        let text = match fork_base {
            Some(base) => {
                sink.note(&format!(
                    "a pull request from a fork: built by the pipeline of its base branch {base}, not its own; no secret, network only with fork_network"
                ));
                self.base_definition(project, base).await
            }
            None => policy::repository_definition(tree),
        };
        match text.and_then(|text| policy::read_definition(text, project, &self.settings, network))
        {
            Ok(definition) => {
                let pushed = if should_push(&definition, job) && self.settings.registry.is_some() {
                    "are pushed"
                } else {
                    "are built, not pushed (not a pushing ref)"
                };
                let count = definition.services.len();
                sink.note(&format!("{count} service(s); images {pushed}"));
                Ok(definition)
            }
            Err(reason) => {
                sink.note(&reason);
                let failed = StageUpdate {
                    detail: Some(&reason),
                    ..StageUpdate::new(JOB_SCOPE, StageName::Pipeline, StageState::Failed)
                };
                self.stage(job.id, failed).await;
                Err(reason)
            }
        }
    }

    /// The pipeline file of the project's branch `base`, as the forge has it now: bounded in
    /// size (`MAX_DEFINITION_BYTES`) and in time (`step_timeout`, as the checkout is).
    async fn base_definition(
        &self,
        project: &crate::config::Project,
        base: &str,
    ) -> Result<Option<String>, String> {
        let branch = crate::domain::GitRef::parse(&format!("refs/heads/{base}"))
            .map_err(|e| format!("the pull request's base branch: {e}"))?;
        let timeout = self.settings.worker.step_timeout;
        // Dropping the read kills git (`kill_on_drop`).
        let read = self.checkouts.read_on_branch(
            project.name.as_ref(),
            &project.clone_url,
            &branch,
            crate::pipeline::definition::FILE_NAME,
            policy::MAX_DEFINITION_BYTES,
            project.git_credentials.as_ref(),
        );
        match tokio::time::timeout(timeout, read).await {
            Ok(read) => read.map_err(|e| format!("reading the base branch's pipeline: {e}")),
            Err(_) => Err(format!(
                "reading the base branch's pipeline: timed out after {} s",
                timeout.as_secs()
            )),
        }
    }

    /// Every stage of every service, pending or skipped, before any runs; each service's
    /// first status goes with its first stage row.
    async fn plan_stages(&self, cx: &JobContext<'_>, definition: &Definition) {
        for service in &definition.services {
            for stage in StageName::OF_A_SERVICE {
                let applies = match stage {
                    StageName::Check => service.steps.iter().any(|s| s.stage == Stage::Check),
                    StageName::Compile => service.steps.iter().any(|s| s.stage == Stage::Compile),
                    StageName::Push => cx.pushes,
                    StageName::Deploy => cx.deploys(service),
                    _ => true,
                };
                let state = if applies {
                    StageState::Pending
                } else {
                    StageState::Skipped
                };
                let reports = match (stage, cx.reporter) {
                    (StageName::Check, Some(reporter)) => reporter.status(
                        Some(&service.name),
                        StatusState::Pending,
                        &format!("Building {} ({})", service.name, cx.job.git_ref.label()),
                    ),
                    _ => Vec::new(),
                };
                let update = StageUpdate::new(&service.name, stage, state);
                self.stage_with(cx.job.id, update, reports).await;
            }
        }
    }

    /// Builds every service, phase by phase; returns what failed, one line per service.
    async fn build_services(&self, cx: &JobContext<'_>, services: &[Service]) -> Vec<String> {
        let limit = self.settings.worker.service_concurrency;
        let mut failures = Vec::new();
        for phase in phases(services) {
            // Owned services: the futures must not be generic over a borrow's lifetime, or the
            // spawned job future stops being `Send`.
            let done: Vec<_> = stream::iter(phase)
                .map(|service| async move {
                    let result = self.build_service(cx, &service).await;
                    (service.name, result)
                })
                .buffer_unordered(limit)
                .collect()
                .await;
            for (service, result) in done {
                if let Err(failure) = result {
                    let code = failure
                        .exit_code
                        .map(|c| format!(", exit code {c}"))
                        .unwrap_or_default();
                    failures.push(format!(
                        "{service} failed at {}{code}: {}",
                        failure.stage, failure.reason
                    ));
                }
            }
        }
        failures.sort();
        failures
    }

    /// Nothing deploys unless every service of the push built: the deploy stages say so.
    async fn skip_deploys(&self, cx: &JobContext<'_>, services: &[Service]) {
        for service in services.iter().filter(|s| cx.deploys(s)) {
            let update = StageUpdate {
                detail: Some("not deployed: a service of this push failed to build"),
                ..StageUpdate::new(&service.name, StageName::Deploy, StageState::Skipped)
            };
            self.stage(cx.job.id, update).await;
        }
    }

    async fn build_service(&self, cx: &JobContext<'_>, service: &Service) -> Result<(), Failure> {
        let timeout = self.settings.worker.step_timeout;
        let mut result = self.service_stages(cx, service, timeout).await;
        if let Err(failure) = &mut result {
            failure.reason = clip(&failure.reason, REASON_BYTES);
            self.record_failure(cx, service, failure).await;
        }
        result
    }

    /// The failed stage with its exit code, reason and log tail; what did not run after it is
    /// skipped, not pending forever.
    async fn record_failure(&self, cx: &JobContext<'_>, service: &Service, failure: &Failure) {
        let tail = cx.log.tail(&service.name).join("\n");
        let detail = if tail.is_empty() {
            failure.reason.clone()
        } else {
            format!("{}\n--- last lines ---\n{tail}", failure.reason)
        };
        let code = failure
            .exit_code
            .map(|c| format!(" (exit {c})"))
            .unwrap_or_default();
        // A step killed because the job was stopped did not fail: its check says it stopped.
        let (state, words) = if cx.cancel.is_cancelled() {
            let why = "the job was canceled or superseded, or deploybot is stopping";
            (
                StatusState::Error,
                format!("Stopped at {}: {why}", failure.stage),
            )
        } else {
            let words = format!("{} failed{code}: {}", failure.stage, failure.reason);
            (StatusState::Failure, words)
        };
        let reports = cx.status(&service.name, state, &words);
        let update = StageUpdate {
            exit_code: failure.exit_code,
            detail: Some(&detail),
            ..StageUpdate::new(&service.name, failure.stage, StageState::Failed)
        };
        self.stage_with(cx.job.id, update, reports).await;
        let order = StageName::OF_A_SERVICE;
        let after = order
            .iter()
            .position(|s| *s == failure.stage)
            .map_or(order.len(), |p| p + 1);
        for stage in &order[after..] {
            let update = StageUpdate::new(&service.name, *stage, StageState::Skipped);
            self.stage(cx.job.id, update).await;
        }
    }

    async fn service_stages(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let job = cx.job;
        let reference = image_reference(
            self.settings.registry.as_ref().map(|r| r.address.as_str()),
            service,
            job,
        );
        let input = self.build_input(cx, service).await;
        let recorded = match &input {
            Some(input) => self.recorded_image(cx, input, &reference).await,
            None => None,
        };
        let source = match recorded {
            Some(reuse) => self.reuse_image(cx, service, reuse, &reference).await?,
            None => {
                self.prepare_service(cx, service, &reference).await?;
                self.run_steps(cx, service).await?;
                self.image_stage(cx, service, &reference, input.as_deref())
                    .await?;
                PushSource::Engine
            }
        };
        let push = super::push::Push {
            reference: &reference,
            input: input.as_deref(),
            source,
            timeout,
        };
        self.push_stage(cx, service, push).await
    }

    /// The digest of everything the service's image is built from, when it can be pinned.
    async fn build_input(&self, cx: &JobContext<'_>, service: &Service) -> Option<String> {
        let path = format!("{}/{}", service.context, service.dockerfile);
        let dockerfile = cx
            .tree
            .read_text(&path, super::policy::MAX_DEFINITION_BYTES)
            .ok()
            .flatten()?;
        let mut paths = Vec::new();
        for path in reuse::paths_read(service) {
            let id = self
                .checkouts
                .object_id(&cx.job.project, cx.job.sha.as_ref(), &path)
                .await
                .ok()?;
            paths.push((path, id));
        }
        let inputs = reuse::Inputs {
            project: &cx.job.project,
            caches: cx.caches(),
            source: &cx.project.clone_url,
            paths,
        };
        reuse::build_input(
            &*self.executor,
            &self.settings,
            &inputs,
            service,
            &dockerfile,
        )
        .await
    }
}

/// The order services are built in: the first service of each toolchain goes in the first
/// phase, the others after it, so that services sharing a cache (two Go services, say) do not
/// fill a cold cache twice side by side; services with different toolchains still overlap.
fn phases(services: &[Service]) -> Vec<Vec<Service>> {
    let mut seen = std::collections::HashSet::new();
    let (first, rest): (Vec<Service>, Vec<Service>) = services.iter().cloned().partition(|s| {
        let toolchain = s
            .steps
            .first()
            .and_then(|step| step.images.first().cloned());
        toolchain.is_none_or(|t| seen.insert(t))
    });
    [first, rest]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect()
}

/// Error texts are masked like log lines before they are stored or shown.
pub(super) fn log_mask(log: &JobLog, text: &str) -> String {
    log.masker().mask(text)
}

pub(super) async fn with_timeout<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, ExecError>>,
) -> Result<T, ExecError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(ExecError::TimedOut(limit.as_secs())))
}

/// The named volume that keeps one cache path of one project's tags or branches between
/// builds.
pub(super) fn cache_volume(project: &str, caches: &str, path: &str) -> String {
    let path: String = path
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("deploybot-cache-{project}-{caches}-{path}")
}

/// `registry/image:tag` for a tag push, `registry/image:sha-<12>` for a branch,
/// `registry/image:pr-<N>-<12>` for a pull request (built only, never pushed).
fn image_reference(registry: Option<&str>, service: &Service, job: &ClaimedJob) -> String {
    let tag = match job.git_ref.kind() {
        // Docker tags allow `[A-Za-z0-9_.-]`, up to 128 characters.
        RefKind::Tag => crate::domain::tag_safe(job.git_ref.name(), 128),
        RefKind::Branch => format!("sha-{}", job.sha.prefix(12)),
        RefKind::Pull => format!("pr-{}-{}", job.git_ref.name(), job.sha.prefix(12)),
    };
    match registry {
        Some(registry) => format!("{registry}/{}:{tag}", service.image),
        None => format!("{}:{tag}", service.image),
    }
}

/// Whether the pipeline pushes this ref's images; a pull request's never are.
fn should_push(definition: &Definition, job: &ClaimedJob) -> bool {
    let patterns = match job.git_ref.kind() {
        RefKind::Tag => &definition.push.tags,
        RefKind::Branch => &definition.push.branches,
        RefKind::Pull => return false,
    };
    patterns.iter().any(|p| p.matches(job.git_ref.name()))
}

/// Removes a job's containers once the engine can (it was restarting, say): tried again with
/// backoff, 1 s doubling to a minute, for up to ten minutes; a later start removes what is
/// still left by its instance label.
async fn remove_eventually<E: Executor>(executor: std::sync::Arc<E>, job: i64) {
    let started = tokio::time::Instant::now();
    let mut wait = std::time::Duration::from_secs(1);
    while started.elapsed() < std::time::Duration::from_secs(600) {
        tokio::time::sleep(wait).await;
        match executor.remove_containers(Some(job)).await {
            Ok(removed) => {
                tracing::info!(job, removed, "Removed the job's containers");
                return;
            }
            Err(e) => tracing::debug!(job, error = %e, "The job's containers are not removed yet"),
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(60));
    }
    tracing::warn!(
        job,
        "Gave up removing the job's containers; the next start removes them"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CommitSha, GitRef};

    #[test]
    fn tag_images_are_named_after_the_tag_and_branch_images_after_the_commit() {
        let definition = crate::pipeline::definition::parse(
            "[[services]]\nname = \"web\"\nimage = \"team/web\"\n",
        )
        .unwrap();
        let mut job = ClaimedJob {
            id: 1,
            project: "team".into(),
            git_ref: GitRef::parse("refs/tags/v1.2.3").unwrap(),
            sha: CommitSha::parse("0123456789abcdef0123456789abcdef01234567").unwrap(),
            attempt: 1,
            epoch: 1,
            event_json: String::new(),
            created_at: String::new(),
        };
        let service = &definition.services[0];
        assert_eq!(
            image_reference(Some("127.0.0.1:5000"), service, &job),
            "127.0.0.1:5000/team/web:v1.2.3"
        );
        assert!(should_push(&definition, &job));
        job.git_ref = GitRef::parse("refs/heads/main").unwrap();
        assert_eq!(
            image_reference(Some("r"), service, &job),
            "r/team/web:sha-0123456789ab"
        );
        assert!(
            !should_push(&definition, &job),
            "branches do not push by default"
        );
    }

    #[test]
    fn cache_volumes_are_per_project_trust_class_and_path() {
        assert_eq!(
            cache_volume("myevents", "tags", "/go"),
            "deploybot-cache-myevents-tags-go"
        );
        assert_eq!(
            cache_volume("myevents", "branches", "/npm-cache/x"),
            "deploybot-cache-myevents-branches-npm-cache-x"
        );
    }
}
