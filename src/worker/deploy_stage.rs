//! The deploy stage: once every service of a push built and pushed, each service that names
//! a Deployment rolls out to every environment that takes the ref (services in parallel,
//! environments one after the other). Nothing is deployed when any service failed: a release
//! goes out whole or not at all.

use futures_util::stream::{self, StreamExt};

use super::runner::{Deployed, JobContext, Runner};
use crate::config::Environment;
use crate::deploy::Cluster;
use crate::deploy::{Note, Outcome, Request};
use crate::domain::{GitRef, StageName, StageState};
use crate::executor::Executor;
use crate::pipeline::Service;
use crate::report::StatusState;
use crate::store::{NewReport, RolloutCause, StageUpdate};

/// One service's rollout, the same in every environment: what runs where.
struct ServiceRollout<'a> {
    service: &'a str,
    deployment: &'a str,
    container: &'a str,
    /// Pinned by digest.
    image: &'a str,
}

/// How the deploy stage of one service ended in one environment, as recorded and reported.
struct StageEnd {
    /// The stage's state: success, rolled back, skipped or failed.
    state: StageState,
    /// The rollout's outcome, as the deploys metric labels it.
    outcome: &'static str,
    detail: String,
    status: StatusState,
    /// The commit status's words.
    words: String,
}

impl<E: Executor, C: Cluster> Runner<E, C> {
    /// The environments a job's ref deploys to.
    pub(super) fn environments_for(&self, project: &str, git_ref: &GitRef) -> Vec<&Environment> {
        self.settings
            .environments
            .iter()
            .filter(|e| e.takes(project, git_ref))
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
        deployed(ends.into_iter().flatten())
    }

    /// Rolls `service` out to the job's environments in order, up to the first that fails or
    /// rolls back; answers each rollout's outcome (none after a shutdown's).
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
            self.set_deploy_stage(
                cx,
                &service.name,
                StageState::Failed,
                Some(&reason),
                Vec::new(),
            )
            .await;
            return vec![(service.name.to_string(), Outcome::Failed { reason })];
        };
        let rollout = ServiceRollout {
            service: &service.name,
            deployment,
            container: service.container.as_deref().unwrap_or(&service.name),
            image: &image,
        };
        let sink = cx.log.stage(&service.name, StageName::Deploy);
        let note = |text: &str| sink.note(text);
        let mut outcomes = Vec::new();
        for environment in &cx.environments {
            let Some(outcome) = self.deploy_to(cx, &rollout, environment, &note).await else {
                return outcomes;
            };
            let stop = matches!(outcome, Outcome::Failed { .. } | Outcome::RolledBack { .. });
            outcomes.push((service.name.to_string(), outcome));
            if stop {
                break;
            }
        }
        outcomes
    }

    /// Rolls `rollout` out to `environment`, with the stage and commit status saying so before
    /// and after; None when deploybot stops first.
    async fn deploy_to(
        &self,
        cx: &JobContext<'_>,
        rollout: &ServiceRollout<'_>,
        environment: &Environment,
        note: Note<'_>,
    ) -> Option<Outcome> {
        let job = cx.job;
        let words = format!("Deploying to {}", environment.name);
        let reports = cx.status(rollout.service, StatusState::Pending, &words);
        self.set_deploy_stage(cx, rollout.service, StageState::Running, None, reports)
            .await;
        let request = Request {
            cause: RolloutCause::Release { job: job.id },
            project: &job.project,
            service: rollout.service,
            environment,
            deployment: rollout.deployment,
            container: rollout.container,
            tag: job.git_ref.name(),
            sha: job.sha.as_ref(),
            delivery: &cx.event.delivery_id,
            pushed_at: &job.created_at,
            image: rollout.image,
        };
        // On shutdown the rollout is left where its record says it is (planned, patched or
        // rolling back); the job stays running and the next start resumes it from there.
        let outcome = tokio::select! {
            outcome = self.deployer.run(&request, note) => outcome,
            () = self.shutdown.cancelled() => {
                note("deploybot is stopping; the rollout resumes at its next start");
                return None;
            }
        };
        let end = stage_end(&outcome, environment, rollout.deployment);
        self.record_deploy_end(cx, rollout.service, environment, end)
            .await;
        Some(outcome)
    }

    /// Records how the rollout to `environment` ended: the stage (masked detail), its commit
    /// status and the deploys metric.
    async fn record_deploy_end(
        &self,
        cx: &JobContext<'_>,
        service: &str,
        environment: &Environment,
        end: StageEnd,
    ) {
        let detail = cx.log.masker().mask(&end.detail);
        let words = cx.log.masker().mask(&end.words);
        self.metrics
            .deploys
            .with_label_values(&[environment.name.as_str(), end.outcome])
            .inc();
        let reports = cx.status(service, end.status, &words);
        self.set_deploy_stage(cx, service, end.state, Some(&detail), reports)
            .await;
    }

    /// Sets `service`'s deploy stage and, in the same transaction, queues `reports`.
    async fn set_deploy_stage(
        &self,
        cx: &JobContext<'_>,
        service: &str,
        state: StageState,
        detail: Option<&str>,
        reports: Vec<NewReport>,
    ) {
        let update = StageUpdate {
            detail,
            ..StageUpdate::new(service, StageName::Deploy, state)
        };
        self.stage_with(cx.job.id, update, reports).await
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

/// The stage, detail and commit status of a rollout of `deployment` that ended as `outcome`.
fn stage_end(outcome: &Outcome, environment: &Environment, deployment: &str) -> StageEnd {
    let place = format!(
        "{} ({}/{deployment})",
        environment.name, environment.namespace
    );
    let name = &environment.name;
    match outcome {
        Outcome::Deployed { image } => StageEnd {
            state: StageState::Success,
            outcome: "deployed",
            detail: format!("deployed {image} to {place}"),
            status: StatusState::Success,
            words: format!("Deployed to {name}: {image}"),
        },
        Outcome::Unchanged { running } => unchanged(running, &place, name),
        Outcome::RolledBack { reason, previous } => StageEnd {
            state: StageState::RolledBack,
            outcome: "rolled_back",
            detail: format!("rolled back to {previous} in {place}: {reason}"),
            status: StatusState::Failure,
            words: format!("Rolled back in {name}: {reason}"),
        },
        Outcome::Skipped { reason } => StageEnd {
            state: StageState::Skipped,
            outcome: "skipped",
            detail: reason.clone(),
            status: StatusState::Success,
            words: format!("Not deployed: {reason}"),
        },
        Outcome::Failed { reason } => StageEnd {
            state: StageState::Failed,
            outcome: "failed",
            detail: format!("{place}: {reason}"),
            status: StatusState::Failure,
            words: format!("Deploy to {name} failed: {reason}"),
        },
    }
}

/// A rollout that found `running` (the same digest) in place: a success that says so.
fn unchanged(running: &str, place: &str, name: &str) -> StageEnd {
    // The digest is what runs; the tag in the running reference is only an older label.
    let content = crate::deploy::image::content(running).unwrap_or_else(|| running.to_owned());
    StageEnd {
        state: StageState::Success,
        outcome: "unchanged",
        detail: format!("Unchanged in {place}: already runs {content}"),
        status: StatusState::Success,
        words: format!("Unchanged in {name}: already runs {content}"),
    }
}

/// The job's deploy result from every rollout's outcome (by service): the worst of them,
/// failures first, each reason named by its service.
fn deployed(ends: impl IntoIterator<Item = (String, Outcome)>) -> Deployed {
    let mut rolled_back = Vec::new();
    let mut failed = Vec::new();
    let mut deployed = false;
    for (service, outcome) in ends {
        match outcome {
            // Already running is as good as deployed for the job; the stage says which.
            Outcome::Deployed { .. } | Outcome::Unchanged { .. } => deployed = true,
            Outcome::RolledBack { reason, .. } => {
                rolled_back.push(format!("{service} rolled back: {reason}"))
            }
            Outcome::Failed { reason } => failed.push(format!("{service} deploy failed: {reason}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(reason: &str) -> Outcome {
        Outcome::Failed {
            reason: reason.into(),
        }
    }

    #[test]
    fn a_failed_rollout_outranks_a_rolled_back_one_and_both_name_their_service() {
        let rolled_back = Outcome::RolledBack {
            reason: "stalled".into(),
            previous: "web:1".into(),
        };
        let ends = [
            ("web".to_owned(), rolled_back),
            ("api".to_owned(), failed("forbidden")),
        ];

        let Deployed::Failed(reason) = deployed(ends) else {
            panic!("not failed");
        };

        assert_eq!(
            reason,
            "api deploy failed: forbidden; web rolled back: stalled"
        );
    }

    #[test]
    fn an_unchanged_rollout_deploys_for_the_job_and_says_it_was_unchanged() {
        let running = "registry:5000/myevents/web:v1.0.0@sha256:aaaa";
        let unchanged = Outcome::Unchanged {
            running: running.into(),
        };
        let environment = Environment {
            name: "production".into(),
            namespace: crate::domain::DnsLabel::parse("default").unwrap(),
            tags: Vec::new(),
            branches: Vec::new(),
            projects: Vec::new(),
            order: crate::config::DeployOrder::Semver,
            rollout_timeout: std::time::Duration::from_secs(1),
            cluster: crate::config::ClusterAccess::InCluster,
            tokens: Vec::new(),
        };

        let end = stage_end(&unchanged, &environment, "web");

        assert!(matches!(
            deployed([("web".to_owned(), unchanged)]),
            Deployed::All
        ));
        assert_eq!(
            (end.state, end.status, end.outcome),
            (StageState::Success, StatusState::Success, "unchanged")
        );
        assert_eq!(
            end.words,
            "Unchanged in production: already runs registry:5000/myevents/web@sha256:aaaa"
        );
        assert_eq!(
            end.detail,
            "Unchanged in production (default/web): already runs registry:5000/myevents/web@sha256:aaaa"
        );
    }

    #[test]
    fn rollouts_all_skipped_by_policy_deploy_nothing() {
        let skipped = Outcome::Skipped {
            reason: "v2 is newer".into(),
        };

        assert!(matches!(
            deployed([("web".to_owned(), skipped)]),
            Deployed::Nothing
        ));
    }
}
