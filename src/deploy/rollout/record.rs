//! The rollout's record in the store (`store/deploys.rs`): read before a rollout starts (a
//! resumed job, a newer version in place), written before each step it describes, and read
//! back as the outcome of a rollout that had already ended.

use super::{Deployer, Outcome, Request};
use crate::deploy::cluster::{Cluster, DeploymentRef};
use crate::deploy::order::{is_older, Version};
use crate::store::{DeployRow, DeployUpdate, NewDeploy, RolloutCause, RolloutState, StoreError};

impl Outcome {
    /// Rebuilds the outcome of a rollout that had already ended (a resumed job); None while
    /// it goes on.
    pub(super) fn of_record(row: &DeployRow) -> Option<Outcome> {
        let reason = row.reason.clone().unwrap_or_default();
        Some(match row.state {
            RolloutState::Deployed => Outcome::Deployed {
                image: row.image.clone(),
            },
            RolloutState::RolledBack => Outcome::RolledBack {
                reason,
                previous: row.previous_image.clone().unwrap_or_default(),
            },
            RolloutState::Unchanged => Outcome::Unchanged {
                // What ran before, recorded at the start; the record's own image is the same
                // content, should that be missing.
                running: row
                    .previous_image
                    .clone()
                    .unwrap_or_else(|| row.image.clone()),
            },
            RolloutState::Skipped => Outcome::Skipped { reason },
            RolloutState::Failed => Outcome::Failed { reason },
            RolloutState::Planned | RolloutState::Patched | RolloutState::RollingBack => {
                return None
            }
        })
    }

    /// How the record ends for this outcome: its last state and why.
    fn recorded_as(&self) -> (RolloutState, Option<String>) {
        match self {
            Outcome::Deployed { .. } => (RolloutState::Deployed, None),
            Outcome::Unchanged { .. } => (RolloutState::Unchanged, None),
            Outcome::RolledBack { reason, .. } => (RolloutState::RolledBack, Some(reason.clone())),
            Outcome::Skipped { reason } => (RolloutState::Skipped, Some(reason.clone())),
            Outcome::Failed { reason } => (RolloutState::Failed, Some(reason.clone())),
        }
    }
}

impl<C: Cluster> Deployer<C> {
    /// The job's rollout as recorded before (a resumed job).
    pub(super) async fn earlier(
        &self,
        request: &Request<'_>,
    ) -> Result<Option<DeployRow>, StoreError> {
        let RolloutCause::Release { job } = request.cause else {
            return Ok(None);
        };
        let (service, environment) = (request.service.to_owned(), request.environment.name.clone());
        self.jobs
            .call(move |jobs| jobs.deploy_of(job, &service, &environment))
            .await
    }

    /// Records a new rollout; None if the store refused (logged: the rollout goes on).
    pub(super) async fn plan(
        &self,
        request: &Request<'_>,
        state: RolloutState,
        previous_image: Option<String>,
        generation: Option<i64>,
        reason: Option<String>,
    ) -> Option<i64> {
        let new = NewDeploy {
            cause: request.cause,
            project: request.project.to_owned(),
            service: request.service.to_owned(),
            environment: request.environment.name.clone(),
            namespace: request.environment.namespace.to_string(),
            deployment: request.deployment.to_owned(),
            container: request.container.to_owned(),
            tag: request.tag.to_owned(),
            pushed_at: request.pushed_at.to_owned(),
            image: request.image.to_owned(),
            state,
            previous_image,
            generation,
            reason,
        };
        match self.jobs.call(move |jobs| jobs.plan_deploy(&new)).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(error = %e, "Could not record a deploy");
                None
            }
        }
    }

    pub(super) async fn update(&self, id: i64, update: DeployUpdate) {
        if let Err(e) = self
            .jobs
            .call(move |jobs| jobs.update_deploy(id, &update))
            .await
        {
            tracing::error!(error = %e, deploy = id, "Could not record a deploy step");
        }
    }

    /// Records how the rollout ended: on its record (`id`), or, when it ended before anything
    /// was recorded (an unreadable Deployment), on a new one.
    pub(super) async fn record_end(
        &self,
        request: &Request<'_>,
        id: Option<i64>,
        outcome: &Outcome,
    ) {
        let (state, reason) = outcome.recorded_as();
        match id {
            Some(id) => {
                let update = DeployUpdate {
                    reason,
                    ..DeployUpdate::to(state)
                };
                self.update(id, update).await
            }
            None => {
                let _ = self.plan(request, state, None, None, reason).await;
            }
        }
    }

    /// A newer version already in place on this Deployment, by deploybot's record.
    pub(super) async fn newer_in_place(
        &self,
        request: &Request<'_>,
        target: &DeploymentRef,
    ) -> Option<String> {
        let (environment, target_owned) = (request.environment.name.clone(), target.clone());
        let in_place = self
            .jobs
            .call(move |jobs| {
                jobs.in_place(&environment, &target_owned.namespace, &target_owned.name)
            })
            .await
            .ok()
            .flatten()?;
        let ours = Version {
            tag: request.tag,
            pushed_at: request.pushed_at,
        };
        let theirs = Version {
            tag: &in_place.tag,
            pushed_at: &in_place.pushed_at,
        };
        is_older(ours, theirs, request.environment.order).then(|| {
            format!(
                "{} is newer than {} and already deployed to {target}; {} is not deployed",
                in_place.tag, request.tag, request.tag
            )
        })
    }
}
