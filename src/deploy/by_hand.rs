//! Rollbacks a person asks for (`deploybot rollback`, `POST /api/v1/rollback`): pick the image
//! from deploybot's record of the service's rollouts, then roll it out through the same
//! [`Deployer`] a job uses (recorded, in the Deployment's turn, waited for).

use super::cluster::Cluster;
use super::rollout::{by_hand_of, Deployer, Outcome, Request};
use crate::config::Settings;
use crate::store::{DeployRow, Jobs, RolloutCause, RolloutState};

/// What a person asked for.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackAsk {
    pub project: String,
    pub service: String,
    /// Default: the environment of the service's newest rollout.
    pub environment: Option<String>,
    /// A tag deployed before; default: what ran before the current image.
    pub to: Option<String>,
}

/// Why a rollback could not start; the text names what is missing.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    NoTarget(String),
    #[error("the deploy record could not be read: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The image and tag to roll back to, and the rollout it goes over.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Choice {
    image: String,
    tag: String,
    current: DeployRow,
}

/// Picks the target from `history` (newest first): the image that ran before the one in
/// place, or the one deployed at `to`.
fn choose(history: &[DeployRow], ask: &RollbackAsk) -> Result<Choice, RollbackError> {
    let environment = ask
        .environment
        .clone()
        .or_else(|| history.first().map(|r| r.environment.clone()))
        .ok_or_else(|| {
            RollbackError::NoTarget(format!(
                "no rollout of service \"{}\" in project \"{}\" on record",
                ask.service, ask.project
            ))
        })?;
    let rows: Vec<&DeployRow> = history
        .iter()
        .filter(|r| r.environment == environment)
        .collect();
    // The image in place is the one the newest `deployed` rollout set: an `unchanged` one
    // left it as it was (the same digest), so it is not a different image to go back from.
    let current = rows
        .iter()
        .find(|r| r.state == RolloutState::Deployed)
        .copied()
        .cloned()
        .ok_or_else(|| {
            RollbackError::NoTarget(format!(
                "service \"{}\" has no completed rollout in environment \"{environment}\"",
                ask.service
            ))
        })?;
    let (image, tag) = match &ask.to {
        Some(tag) => {
            let row = rows
                .iter()
                .find(|r| &r.tag == tag && matches!(r.cause, RolloutCause::Release { .. }))
                .ok_or_else(|| {
                    let mut known: Vec<&str> = rows.iter().map(|r| r.tag.as_str()).collect();
                    known.dedup();
                    RollbackError::NoTarget(format!(
                        "service \"{}\" was never deployed at {tag} in \"{environment}\" (on record: {})",
                        ask.service,
                        known.join(", ")
                    ))
                })?;
            (row.image.clone(), tag.clone())
        }
        None => {
            let previous = current.previous_image.clone().ok_or_else(|| {
                RollbackError::NoTarget(format!(
                    "no image on record from before {} of service \"{}\"",
                    current.tag, ask.service
                ))
            })?;
            let tag = rows
                .iter()
                .find(|r| r.image == previous)
                .map(|r| r.tag.clone())
                .unwrap_or_else(|| "the previous image".into());
            (previous, tag)
        }
    };
    Ok(Choice {
        image,
        tag,
        current,
    })
}

/// Chooses the target and rolls it out; answers the environment and how the rollout went.
/// The choice is made again once the Deployment's turn is ours: a rollout that was running
/// meanwhile (the server's, while this is `deploybot rollback`) changed what "previous" means.
pub async fn roll_back<C: Cluster>(
    deployer: &Deployer<C>,
    settings: &Settings,
    ask: &RollbackAsk,
    note: super::Note<'_>,
) -> Result<(String, Outcome), RollbackError> {
    if settings.project(&ask.project).is_none() {
        return Err(RollbackError::Unknown(format!(
            "project \"{}\" is not configured",
            ask.project
        )));
    }
    let first = choice_on_record(deployer.jobs(), ask).await?;
    let environment = settings
        .environment(&first.current.environment)
        .ok_or_else(|| {
            RollbackError::Unknown(format!(
                "environment \"{}\" is no longer configured",
                first.current.environment
            ))
        })?;
    let deployment = first.current.deployment.clone();
    let turn = deployer
        .turn(environment, &deployment, by_hand_of(&ask.service), note)
        .await?;
    // The same environment as the first choice, whatever rolled out elsewhere meanwhile.
    let pinned = RollbackAsk {
        environment: Some(environment.name.clone()),
        ..ask.clone()
    };
    let outcome = match choice_on_record(deployer.jobs(), &pinned).await {
        Ok(choice) if choice.current.deployment == deployment => {
            note(&format!(
                "rolling {} back to {} ({}) in {}",
                ask.service, choice.tag, choice.image, environment.name
            ));
            let pushed_at = crate::store::timestamp(time::OffsetDateTime::now_utc());
            let request = Request {
                cause: RolloutCause::ByHand,
                project: &ask.project,
                service: &ask.service,
                environment,
                deployment: &deployment,
                container: &choice.current.container,
                tag: &choice.tag,
                sha: "",
                delivery: "",
                pushed_at: &pushed_at,
                image: &choice.image,
            };
            Ok(deployer.run_in(&turn, &request, note).await)
        }
        Ok(_) => Err(RollbackError::NoTarget(format!(
            "the rollouts of service \"{}\" moved to another Deployment while this rollback waited; ask again",
            ask.service
        ))),
        Err(e) => Err(e),
    };
    turn.end().await;
    Ok((environment.name.clone(), outcome?))
}

/// The target by the record as it is now.
async fn choice_on_record(
    jobs: &std::sync::Arc<Jobs>,
    ask: &RollbackAsk,
) -> Result<Choice, RollbackError> {
    let (project, service) = (ask.project.clone(), ask.service.clone());
    let history = jobs
        .call(move |jobs| jobs.deploy_history(&project, &service, 500))
        .await?;
    choose(&history, ask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        id: i64,
        tag: &str,
        image: &str,
        previous: Option<&str>,
        state: RolloutState,
    ) -> DeployRow {
        DeployRow {
            id,
            cause: RolloutCause::Release { job: id },
            project: "myevents".into(),
            service: "web".into(),
            environment: "production".into(),
            namespace: "default".into(),
            deployment: "web".into(),
            container: "api".into(),
            tag: tag.into(),
            pushed_at: String::new(),
            image: image.into(),
            previous_image: previous.map(str::to_owned),
            generation: Some(id),
            state,
            reason: None,
            created_at: String::new(),
            patched_at: None,
            finished_at: None,
        }
    }

    fn ask(to: Option<&str>) -> RollbackAsk {
        RollbackAsk {
            project: "myevents".into(),
            service: "web".into(),
            environment: None,
            to: to.map(str::to_owned),
        }
    }

    #[test]
    fn without_a_tag_it_goes_back_to_what_ran_before_the_current_image() {
        let history = [
            row(3, "v3", "web@3", Some("web@2"), RolloutState::RolledBack),
            row(2, "v2", "web@2", Some("web@1"), RolloutState::Deployed),
            row(1, "v1", "web@1", Some("init"), RolloutState::Deployed),
        ];
        let choice = choose(&history, &ask(None)).unwrap();
        assert_eq!(
            (choice.image.as_str(), choice.tag.as_str()),
            ("web@1", "v1")
        );
        assert_eq!(choice.current.tag, "v2");
    }

    #[test]
    fn an_unchanged_rollout_in_between_is_not_what_ran_before_the_current_image() {
        let history = [
            row(
                3,
                "v2",
                "web:v2@B",
                Some("web:v1.0@A"),
                RolloutState::Deployed,
            ),
            row(
                2,
                "v1.1",
                "web:v1.1@A",
                Some("web:v1.0@A"),
                RolloutState::Unchanged,
            ),
            row(
                1,
                "v1.0",
                "web:v1.0@A",
                Some("init"),
                RolloutState::Deployed,
            ),
        ];
        let choice = choose(&history, &ask(None)).unwrap();
        assert_eq!(
            (choice.image.as_str(), choice.tag.as_str()),
            ("web:v1.0@A", "v1.0")
        );
    }

    #[test]
    fn the_newest_rollout_unchanged_goes_back_past_the_image_it_left_running() {
        let history = [
            row(
                2,
                "v1.1",
                "web:v1.1@A",
                Some("web:v1.0@A"),
                RolloutState::Unchanged,
            ),
            row(
                1,
                "v1.0",
                "web:v1.0@A",
                Some("init"),
                RolloutState::Deployed,
            ),
        ];
        let choice = choose(&history, &ask(None)).unwrap();
        assert_eq!(
            choice.image, "init",
            "not web:v1.0@A, the same digest again"
        );
        assert_eq!(choice.current.tag, "v1.0");
    }

    #[test]
    fn with_a_tag_it_goes_to_the_image_deployed_at_that_tag() {
        let history = [
            row(2, "v2", "web@2", Some("web@1"), RolloutState::Deployed),
            row(1, "v1", "web@1", Some("init"), RolloutState::Deployed),
        ];
        let choice = choose(&history, &ask(Some("v1"))).unwrap();
        assert_eq!(choice.image, "web@1");
    }

    #[test]
    fn an_unknown_tag_is_refused_naming_the_tags_on_record() {
        let history = [row(1, "v1", "web@1", Some("init"), RolloutState::Deployed)];
        let error = choose(&history, &ask(Some("v9"))).unwrap_err().to_string();
        assert!(
            error.contains("never deployed at v9") && error.contains("v1"),
            "{error}"
        );
    }

    #[test]
    fn a_service_never_deployed_is_refused() {
        let error = choose(&[], &ask(None)).unwrap_err().to_string();
        assert!(error.contains("no rollout of service \"web\""), "{error}");
    }
}
