//! One rollout of one service to one environment, from decision to a recorded end:
//! order check → previous image recorded → conditional patch (409: read again) → wait like
//! `kubectl rollout status` → deployed, or the previous image put back, waited for, and
//! recorded as `rolled_back` with the condition that failed.
//!
//! Every step is written to the store before the next one starts, so a process killed at any
//! point resumes from the record and never patches twice. Rollouts of one Deployment never
//! interleave: each runs in a [`Turn`], a lock per Deployment in this process and a turn in
//! the store that other processes (`deploybot rollback` beside the server) wait for too.
//!
//! The parts: `turn.rs` (whose turn it is, and its lease), `record.rs` (the rollout's record),
//! `drive.rs` (from where the record says it is to an end), `patch.rs` (the conditional image
//! change and its annotations), `wait.rs` (following the Deployment and judging it),
//! `rollback.rs` (putting the previous image back).

mod drive;
mod patch;
mod record;
mod rollback;
#[cfg(test)]
mod tests;
mod turn;
mod wait;

use std::collections::HashMap;
use std::sync::Arc;

use super::cluster::{Cluster, DeploymentRef};
use crate::config::Environment;
use crate::keyed_lock::KeyedLocks;
use crate::store::{Jobs, RolloutCause};
pub(crate) use turn::Turn;

/// What to roll out, and why.
#[derive(Debug, Clone)]
pub(crate) struct Request<'a> {
    /// A job's release, or a rollback by hand (no order check, no automatic rollback of the
    /// rollback).
    pub cause: RolloutCause,
    pub project: &'a str,
    pub service: &'a str,
    pub environment: &'a Environment,
    pub deployment: &'a str,
    pub container: &'a str,
    pub tag: &'a str,
    pub sha: &'a str,
    pub delivery: &'a str,
    pub pushed_at: &'a str,
    /// The image to run, pinned by digest.
    pub image: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Deployed {
        image: String,
    },
    /// The Deployment already ran the image's digest (`running`, under another tag): the
    /// release was written on its annotations only, so no pod restarted.
    Unchanged {
        running: String,
    },
    /// The new image did not become healthy; the previous one runs again.
    RolledBack {
        reason: String,
        previous: String,
    },
    /// Not rolled out, by policy (a newer version is in place).
    Skipped {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Deployed { image } => write!(f, "deployed {image}"),
            Outcome::Unchanged { running } => write!(f, "unchanged: already runs {running}"),
            Outcome::RolledBack { reason, previous } => {
                write!(f, "rolled back to {previous}: {reason}")
            }
            Outcome::Skipped { reason } => write!(f, "skipped: {reason}"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

impl Request<'_> {
    fn by_hand(&self) -> bool {
        self.cause == RolloutCause::ByHand
    }

    /// What this rollout is, as someone waiting for its turn reads it.
    fn what(&self) -> String {
        match self.cause {
            RolloutCause::Release { job } => format!("job {job} ({} {})", self.project, self.tag),
            RolloutCause::ByHand => by_hand_of(self.service),
        }
    }
}

/// A rollback by hand of `service`, as someone waiting for its turn reads it.
pub(super) fn by_hand_of(service: &str) -> String {
    format!("a rollback by hand of {service}")
}

/// Where progress lines go (the job's deploy log).
pub type Note<'a> = &'a (dyn Fn(&str) + Send + Sync);

pub struct Deployer<C: Cluster> {
    /// By environment name; the error says why a cluster could not be set up.
    clusters: HashMap<String, Result<C, String>>,
    jobs: Arc<Jobs>,
    /// One rollout per (environment, Deployment) at a time in this process...
    locks: KeyedLocks<(String, DeploymentRef)>,
    /// ...and across processes, through turns in the store held under this name.
    holder: String,
}

/// One rollout under way, in its Deployment's turn: what it rolls out, on which cluster and
/// Deployment, and where its notes go.
struct Rollout<'a, C: Cluster> {
    deployer: &'a Deployer<C>,
    cluster: &'a C,
    request: &'a Request<'a>,
    target: &'a DeploymentRef,
    note: Note<'a>,
}

impl<C: Cluster> Rollout<'_, C> {
    fn note(&self, text: &str) {
        (self.note)(text)
    }
}

impl<C: Cluster> Deployer<C> {
    /// `clusters` by environment name.
    pub(crate) fn new(
        clusters: HashMap<String, Result<C, String>>,
        jobs: Arc<Jobs>,
    ) -> Deployer<C> {
        let holder = format!(
            "{}-{}",
            std::process::id(),
            time::OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        Deployer {
            clusters,
            jobs,
            locks: KeyedLocks::default(),
            holder,
        }
    }

    /// The store its rollouts are recorded in.
    pub(crate) fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Rolls `request` out in its own turn.
    pub(crate) async fn run(&self, request: &Request<'_>, note: Note<'_>) -> Outcome {
        let turn = match self
            .turn(
                request.environment,
                request.deployment,
                request.what(),
                note,
            )
            .await
        {
            Ok(turn) => turn,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!(
                        "whose turn it is to roll out {} could not be read: {e}",
                        request.deployment
                    ),
                }
            }
        };
        let outcome = self.run_in(&turn, request, note).await;
        turn.end().await;
        outcome
    }

    /// Rolls `request` out in `turn`, which is the turn on its Deployment.
    pub(crate) async fn run_in(
        &self,
        turn: &Turn,
        request: &Request<'_>,
        note: Note<'_>,
    ) -> Outcome {
        let environment = request.environment;
        let target = DeploymentRef {
            namespace: environment.namespace.to_string(),
            name: request.deployment.to_owned(),
        };
        debug_assert!(turn.is_on(&environment.name, &target.name));
        let earlier = match self.earlier(request).await {
            Ok(earlier) => earlier,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("the deploy record could not be read: {e}"),
                }
            }
        };
        if let Some((record, outcome)) = earlier
            .as_ref()
            .and_then(|r| Some((r, Outcome::of_record(r)?)))
        {
            note(&format!("already {}", record.state));
            return outcome;
        }
        let (id, outcome) = match self.cluster(environment) {
            Ok(cluster) => {
                let rollout = Rollout {
                    deployer: self,
                    cluster,
                    request,
                    target: &target,
                    note,
                };
                rollout.drive(earlier).await
            }
            Err(reason) => (earlier.map(|r| r.id), Outcome::Failed { reason }),
        };
        self.record_end(request, id, &outcome).await;
        outcome
    }

    /// The cluster of `environment`, or why there is none.
    fn cluster(&self, environment: &Environment) -> Result<&C, String> {
        match self.clusters.get(&environment.name) {
            Some(Ok(cluster)) => Ok(cluster),
            Some(Err(e)) => Err(format!("environment \"{}\": {e}", environment.name)),
            None => Err(format!(
                "environment \"{}\" has no cluster",
                environment.name
            )),
        }
    }
}
