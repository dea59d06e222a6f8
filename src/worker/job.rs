//! One job: checkout → (per service, in parallel) check → compile → image → push.
//!
//! A service that fails stops at that stage and the others go on; the job's result is the
//! worst of its services. Every failure records stage, service, exit code and the last log
//! lines. Containers and the workspace are removed at the end, whatever happened.

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::logs::{clip, JobLog, Masker, REASON_BYTES};
use super::reporter::Reporter;
use super::runner::{Deployed, JobContext, Runner};
use super::{policy, reuse};
use crate::docker::{ExecError, Executor};
use crate::intake::PushEvent;
use crate::pipeline::{Definition, Service, Stage};
use crate::report::StatusState;
use crate::store::{ClaimedJob, Jobs, NewReport, StoreError};

/// Job-level stages are recorded under this service name.
const JOB_SCOPE: &str = "-";

/// A service's stages, in order.
const SERVICE_STAGES: [&str; 5] = ["check", "compile", "image", "push", "deploy"];

/// Why a service stopped.
pub(super) struct Failure {
    pub(super) stage: &'static str,
    pub(super) exit_code: Option<i64>,
    pub(super) reason: String,
}

impl<E: Executor> Runner<E> {
    pub async fn run(self, job: ClaimedJob) {
        let span = tracing::info_span!("build", job = job.id, project = %job.project, git_ref = %job.git_ref, sha = %job.sha);
        let _entered = span.clone();
        let id = job.id;
        if job.attempt == 1 {
            if let Ok(queued) = time::OffsetDateTime::parse(
                &job.created_at,
                &time::format_description::well_known::Rfc3339,
            ) {
                let waited = (time::OffsetDateTime::now_utc() - queued).as_seconds_f64();
                self.metrics.queue_wait_seconds.observe(waited.max(0.0));
            }
        }
        let first_look = job.clone();
        if self
            .blocking(move |jobs| jobs.is_superseded(&first_look))
            .await
            .unwrap_or(false)
        {
            tracing::info!(parent: &span, "Superseded before it started");
            let _ = self.blocking(move |jobs| jobs.supersede(id)).await;
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

        let reporter = serde_json::from_str::<PushEvent>(&job.event_json)
            .ok()
            .map(|event| Reporter::new(&self.settings, &event, id));
        let max_attempts = i64::from(self.settings.worker.max_attempts);
        let outcome = if job.attempt > max_attempts {
            // Each earlier attempt ended with its worker gone (crashed, killed, restarted): a
            // job that takes deploybot down must not do so after every restart.
            Err(format!(
                "deploybot stopped during each of this job's {max_attempts} attempts (it crashed, was killed or restarted); it is not tried again: re-run it once the cause is found"
            ))
        } else {
            self.build(&job, &log, &cancel, reporter.as_ref()).await
        };

        keeper.abort();
        flushing.cancel();
        let _ = flusher.await;
        if let Err(e) = self.executor.remove_containers(Some(id)).await {
            tracing::warn!(parent: &span, error = %e, "Could not remove the job's containers");
        }
        self.checkouts.clean(id).await;
        let (state, error) = if superseded.is_cancelled() {
            (
                "superseded",
                Some("a newer push to the same branch replaced it".to_owned()),
            )
        } else if self.shutdown.is_cancelled() {
            // Left running: its lease lapses and the next start takes it again.
            tracing::info!(parent: &span, "Interrupted by shutdown; it will be resumed");
            self.jobs.release(id);
            return;
        } else if self
            .blocking(move |jobs| jobs.state(id))
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some("canceled")
        {
            // An operator canceled it (the store already says so): the commit status says so too.
            tracing::info!(parent: &span, "Canceled by an operator");
            let settings = self.settings.clone();
            let _ = self
                .blocking(move |jobs| super::report_canceled(&settings, jobs, id))
                .await;
            self.reports.notify_one();
            self.jobs.release(id);
            return;
        } else {
            match outcome {
                Ok(Deployed::Nothing) => ("success", None),
                Ok(Deployed::All) => ("deployed", None),
                Ok(Deployed::RolledBack(reason)) => ("rolled_back", Some(reason)),
                Ok(Deployed::Failed(reason)) | Err(reason) => ("failed", Some(reason)),
            }
        };
        tracing::info!(parent: &span, state, error = error.as_deref().unwrap_or(""), "Job finished");
        let detail = self.blocking(move |jobs| jobs.get(id)).await.ok().flatten();
        let reports = reporter
            .map(|r| r.finished(state, error.as_deref(), detail.as_ref()))
            .unwrap_or_default();
        let _ = self
            .blocking(move |jobs| jobs.finish_reporting(id, state, error.as_deref(), &reports))
            .await;
        self.reports.notify_one();
    }

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
    /// lease is lost.
    fn keep_lease(
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

        let checkout_log = log.stage(JOB_SCOPE, "checkout");
        self.stage(job.id, JOB_SCOPE, "checkout", "running", None, None)
            .await;
        checkout_log.note(&format!(
            "fetching {} at {} from {}",
            job.git_ref, job.sha, project.clone_url
        ));
        let fetched = self.checkout(job, project, cancel).await;
        let (workspace, tree) = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                let reason = log_mask(log, &e);
                checkout_log.note(&reason);
                self.stage(job.id, JOB_SCOPE, "checkout", "failed", None, Some(&reason))
                    .await;
                return Err(format!("checkout: {reason}"));
            }
        };
        self.stage(job.id, JOB_SCOPE, "checkout", "success", None, None)
            .await;

        let definition = match policy::read_definition(&tree, project, &self.settings) {
            Ok(definition) => definition,
            Err(reason) => {
                checkout_log.note(&reason);
                self.stage(job.id, JOB_SCOPE, "pipeline", "failed", None, Some(&reason))
                    .await;
                return Err(reason);
            }
        };
        let pushes = should_push(&definition, job) && self.settings.registry.is_some();
        let environments = if pushes {
            self.environments_for(&job.project, &job.ref_kind, &job.ref_name)
        } else {
            Vec::new()
        };
        checkout_log.note(&format!(
            "{} service(s); images {}",
            definition.services.len(),
            if pushes {
                "are pushed"
            } else {
                "are built, not pushed (not a pushing ref)"
            }
        ));
        for service in &definition.services {
            for stage in SERVICE_STAGES {
                let applies = match stage {
                    "check" => service.steps.iter().any(|s| s.stage == Stage::Check),
                    "compile" => service.steps.iter().any(|s| s.stage == Stage::Compile),
                    "push" => pushes,
                    "deploy" => pushes && service.deployment.is_some() && !environments.is_empty(),
                    _ => true,
                };
                let state = if applies { "pending" } else { "skipped" };
                // The service's first status goes with its first stage row.
                let reports = match (stage, reporter) {
                    ("check", Some(reporter)) => reporter.status(
                        Some(&service.name),
                        StatusState::Pending,
                        &format!("Building {} ({})", service.name, job.ref_name),
                    ),
                    _ => Vec::new(),
                };
                self.stage_with(job.id, &service.name, stage, state, None, None, reports)
                    .await;
            }
        }

        let limit = self.settings.worker.service_concurrency;
        // Owned services and explicit borrows: the futures must not be generic over lifetimes,
        // or the spawned job future stops being `Send`.
        let root_tree = self.checkouts.tree_id(&job.project, &job.sha).await.ok();
        let context = JobContext {
            job,
            project,
            reporter,
            root_tree,
            event: &event,
            workspace: &workspace,
            tree,
            pushes,
            environments,
            log,
            cancel,
        };
        let context = &context;
        let mut results: Vec<(String, Result<(), Failure>)> = Vec::new();
        for phase in phases(&definition.services) {
            let done: Vec<_> = stream::iter(phase)
                .map(|service| async move {
                    let result = self.build_service(context, &service).await;
                    (service.name, result)
                })
                .buffer_unordered(limit)
                .collect()
                .await;
            results.extend(done);
        }

        let mut failures = Vec::new();
        for (service, result) in results {
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
        if !failures.is_empty() {
            for service in definition.services.iter().filter(|s| context.deploys(s)) {
                let detail = "not deployed: a service of this push failed to build";
                self.stage(
                    job.id,
                    &service.name,
                    "deploy",
                    "skipped",
                    None,
                    Some(detail),
                )
                .await;
            }
            failures.sort();
            return Err(failures.join("; "));
        }
        if definition.services.iter().any(|s| context.deploys(s)) {
            Ok(self.deploy_services(context, &definition.services).await)
        } else {
            Ok(Deployed::Nothing)
        }
    }

    pub(super) async fn stage(
        &self,
        job: i64,
        service: &str,
        stage: &str,
        state: &str,
        exit: Option<i64>,
        detail: Option<&str>,
    ) {
        self.stage_with(job, service, stage, state, exit, detail, Vec::new())
            .await
    }

    /// Feeds the stage-duration histogram: a stage's clock starts when it runs and stops when
    /// it succeeds or fails.
    fn time_stage(&self, service: &str, stage: &str, state: &str) {
        let mut starts = self.stage_starts.lock().unwrap_or_else(|p| p.into_inner());
        let key = (service.to_owned(), stage.to_owned());
        match state {
            "running" => {
                starts.insert(key, std::time::Instant::now());
            }
            "success" | "failed" => {
                if let Some(started) = starts.remove(&key) {
                    self.metrics
                        .stage_seconds
                        .with_label_values(&[stage, state])
                        .observe(started.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
    }

    /// Sets a stage and, in the same transaction, queues the reports it causes.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn stage_with(
        &self,
        job: i64,
        service: &str,
        stage: &str,
        state: &str,
        exit: Option<i64>,
        detail: Option<&str>,
        reports: Vec<NewReport>,
    ) {
        let (service_owned, stage_owned, state_owned, detail) = (
            service.to_owned(),
            stage.to_owned(),
            state.to_owned(),
            detail.map(str::to_owned),
        );
        self.record_stage(service, stage, state, reports, move |jobs, reports| {
            jobs.set_stage_reporting(
                job,
                &service_owned,
                &stage_owned,
                &state_owned,
                exit,
                detail.as_deref(),
                reports,
            )
        })
        .await
    }

    /// Every stage change goes through here: the duration histogram, the store write that
    /// carries the change and the reports it causes (one transaction), and a wake-up for the
    /// report sender when there are reports.
    pub(super) async fn record_stage(
        &self,
        service: &str,
        stage: &str,
        state: &str,
        reports: Vec<NewReport>,
        write: impl FnOnce(&Jobs, &[NewReport]) -> Result<(), StoreError> + Send + 'static,
    ) {
        self.time_stage(service, stage, state);
        let queued = !reports.is_empty();
        let _ = self.blocking(move |jobs| write(jobs, &reports)).await;
        if queued {
            self.reports.notify_one();
        }
    }

    async fn build_service(&self, cx: &JobContext<'_>, service: &Service) -> Result<(), Failure> {
        let (job, log) = (cx.job, cx.log);
        let timeout = self.settings.worker.step_timeout;
        let mut result = self.service_stages(cx, service, timeout).await;
        if let Err(failure) = &mut result {
            failure.reason = clip(&failure.reason, REASON_BYTES);
            let tail = log.tail(&service.name).join("\n");
            let detail = if tail.is_empty() {
                failure.reason.clone()
            } else {
                format!("{}\n--- last lines ---\n{tail}", failure.reason)
            };
            let code = failure
                .exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default();
            let words = format!("{} failed{code}: {}", failure.stage, failure.reason);
            let reports = cx.status(&service.name, StatusState::Failure, &words);
            self.stage_with(
                job.id,
                &service.name,
                failure.stage,
                "failed",
                failure.exit_code,
                Some(&detail),
                reports,
            )
            .await;
            // What did not run after the failure is skipped, not pending forever.
            let order = SERVICE_STAGES;
            let after = order
                .iter()
                .position(|s| *s == failure.stage)
                .map_or(order.len(), |p| p + 1);
            for stage in &order[after..] {
                self.stage(job.id, &service.name, stage, "skipped", None, None)
                    .await;
            }
        }
        result
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
            Some(input) => self.recorded_image(cx, input).await,
            None => None,
        };
        match recorded {
            Some(image) => self.reuse_image(cx, service, &image, &reference).await?,
            None => {
                self.run_steps(cx, service).await?;
                self.image_stage(cx, service, &reference, input.as_deref())
                    .await?;
            }
        }
        self.push_stage(cx, service, &reference, timeout).await
    }

    /// The digest of everything the service's image is built from, when it can be pinned.
    async fn build_input(&self, cx: &JobContext<'_>, service: &Service) -> Option<String> {
        let root_tree = cx.root_tree.as_deref()?;
        let path = format!("{}/{}", service.context, service.dockerfile);
        let dockerfile = cx
            .tree
            .read_text(&path, super::policy::MAX_DEFINITION_BYTES)
            .ok()
            .flatten()?;
        let commit = reuse::Commit {
            project: &cx.job.project,
            caches: cx.caches(),
            source: &cx.project.clone_url,
            sha: &cx.job.sha,
            tree: root_tree,
        };
        reuse::build_input(
            &*self.executor,
            &self.settings,
            &commit,
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

/// `registry/image:tag` for a tag push, `registry/image:sha-<12>` for a branch.
fn image_reference(registry: Option<&str>, service: &Service, job: &ClaimedJob) -> String {
    let tag = if job.ref_kind == "tag" {
        sanitize_tag(&job.ref_name)
    } else {
        format!("sha-{}", &job.sha[..12.min(job.sha.len())])
    };
    match registry {
        Some(registry) => format!("{registry}/{}:{tag}", service.image),
        None => format!("{}:{tag}", service.image),
    }
}

/// Docker tags allow `[A-Za-z0-9_.-]`, up to 128 characters.
fn sanitize_tag(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect()
}

fn should_push(definition: &Definition, job: &ClaimedJob) -> bool {
    let patterns = if job.ref_kind == "tag" {
        &definition.push.tags
    } else {
        &definition.push.branches
    };
    patterns.iter().any(|p| p.matches(&job.ref_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_images_are_named_after_the_tag_and_branch_images_after_the_commit() {
        let definition = crate::pipeline::definition::parse(
            "[[services]]\nname = \"web\"\nimage = \"team/web\"\n",
        )
        .unwrap();
        let mut job = ClaimedJob {
            id: 1,
            project: "team".into(),
            git_ref: "refs/tags/v1.2.3".into(),
            ref_kind: "tag".into(),
            ref_name: "v1.2.3".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
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
        job.ref_kind = "branch".into();
        job.ref_name = "main".into();
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
