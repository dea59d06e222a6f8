//! The deploy stage: once every service of a push built and pushed, each service that names
//! a Deployment rolls out to every environment that takes the ref (services in parallel,
//! environments one after the other). Nothing is deployed when any service failed: a release
//! goes out whole or not at all.

use futures_util::stream::{self, StreamExt};

use super::runner::{Deployed, JobContext, Runner};
use crate::config::Environment;
use crate::deploy::{Outcome, Request};
use crate::docker::Executor;
use crate::pipeline::Service;
use crate::report::StatusState;
use crate::store::RolloutCause;

impl<E: Executor> Runner<E> {
    /// The environments a job's ref deploys to.
    pub(super) fn environments_for(
        &self,
        project: &str,
        kind: &str,
        name: &str,
    ) -> Vec<&Environment> {
        self.settings
            .environments
            .iter()
            .filter(|e| e.takes(project, kind, name))
            .collect()
    }

    pub(super) async fn deploy_services(
        &self,
        cx: &JobContext<'_>,
        services: &[Service],
    ) -> Deployed {
        // Owned services: a future generic over a borrow's lifetime would make the spawned
        // job future not `Send` (see `Runner::build`).
        let deploying: Vec<Service> = services.iter().filter(|s| cx.deploys(s)).cloned().collect();
        let ends: Vec<Vec<(String, Outcome)>> = stream::iter(deploying)
            .map(|service| async move { self.deploy_service(cx, &service).await })
            .buffer_unordered(services.len().max(1))
            .collect()
            .await;
        let mut rolled_back = Vec::new();
        let mut failed = Vec::new();
        let mut deployed = false;
        for (service, outcome) in ends.into_iter().flatten() {
            match outcome {
                Outcome::Deployed { .. } => deployed = true,
                Outcome::RolledBack { reason, .. } => {
                    rolled_back.push(format!("{service} rolled back: {reason}"))
                }
                Outcome::Failed { reason } => {
                    failed.push(format!("{service} deploy failed: {reason}"))
                }
                Outcome::Skipped { .. } => {}
            }
        }
        rolled_back.sort();
        failed.sort();
        if !failed.is_empty() {
            failed.extend(rolled_back);
            Deployed::Failed(failed.join("; "))
        } else if !rolled_back.is_empty() {
            Deployed::RolledBack(rolled_back.join("; "))
        } else if deployed {
            Deployed::All
        } else {
            Deployed::Nothing
        }
    }

    async fn deploy_service(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
    ) -> Vec<(String, Outcome)> {
        let job = cx.job;
        let (Some(deployment), Some(image)) = (
            &service.deployment,
            self.pinned_image(job.id, &service.name).await,
        ) else {
            let reason = "no pushed image to deploy".to_owned();
            self.stage(
                job.id,
                &service.name,
                "deploy",
                "failed",
                None,
                Some(&reason),
            )
            .await;
            return vec![(service.name.clone(), Outcome::Failed { reason })];
        };
        let container = service.container.as_deref().unwrap_or(&service.name);
        let sink = cx.log.stage(&service.name, "deploy");
        let note = |text: &str| sink.note(text);
        let mut outcomes = Vec::new();
        for environment in &cx.environments {
            let words = format!("Deploying to {}", environment.name);
            let reports = cx.status(&service.name, StatusState::Pending, &words);
            self.stage_with(
                job.id,
                &service.name,
                "deploy",
                "running",
                None,
                None,
                reports,
            )
            .await;
            let request = Request {
                cause: RolloutCause::Release { job: job.id },
                project: &job.project,
                service: &service.name,
                environment,
                deployment,
                container,
                tag: &job.ref_name,
                sha: &job.sha,
                delivery: &cx.event.delivery_id,
                pushed_at: &job.created_at,
                image: &image,
            };
            // On shutdown the rollout is left where its record says it is (planned, patched or
            // rolling back); the job stays running and the next start resumes it from there.
            let outcome = tokio::select! {
                outcome = self.deployer.run(&request, &note) => outcome,
                () = self.shutdown.cancelled() => {
                    note("deploybot is stopping; the rollout resumes at its next start");
                    return outcomes;
                }
            };
            let place = format!(
                "{} ({}/{deployment})",
                environment.name, environment.namespace
            );
            let (state, detail, status, words) = match &outcome {
                Outcome::Deployed { image } => (
                    "success",
                    format!("deployed {image} to {place}"),
                    StatusState::Success,
                    format!("Deployed to {}: {image}", environment.name),
                ),
                Outcome::RolledBack { reason, previous } => (
                    "rolled_back",
                    format!("rolled back to {previous} in {place}: {reason}"),
                    StatusState::Failure,
                    format!("Rolled back in {}: {reason}", environment.name),
                ),
                Outcome::Skipped { reason } => (
                    "skipped",
                    reason.clone(),
                    StatusState::Success,
                    format!("Not deployed: {reason}"),
                ),
                Outcome::Failed { reason } => (
                    "failed",
                    format!("{place}: {reason}"),
                    StatusState::Failure,
                    format!("Deploy to {} failed: {reason}", environment.name),
                ),
            };
            let detail = cx.log.masker().mask(&detail);
            let words = cx.log.masker().mask(&words);
            let label = state.replace("success", "deployed");
            self.metrics
                .deploys
                .with_label_values(&[environment.name.as_str(), label.as_str()])
                .inc();
            let reports = cx.status(&service.name, status, &words);
            self.stage_with(
                job.id,
                &service.name,
                "deploy",
                state,
                None,
                Some(&detail),
                reports,
            )
            .await;
            let stop = matches!(outcome, Outcome::Failed { .. } | Outcome::RolledBack { .. });
            outcomes.push((service.name.clone(), outcome));
            if stop {
                break;
            }
        }
        outcomes
    }

    /// `registry/image:tag@sha256:...`: what was pushed, pinned by digest.
    async fn pinned_image(&self, job: i64, service: &str) -> Option<String> {
        let service = service.to_owned();
        self.blocking(move |jobs| jobs.pushed_image(job, &service))
            .await
            .ok()
            .flatten()
    }
}
