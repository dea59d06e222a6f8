//! One rollout of one service to one environment, from decision to a recorded end:
//! order check → previous image recorded → conditional patch (409: read again) → wait like
//! `kubectl rollout status` → deployed, or the previous image put back, waited for, and
//! recorded as `rolled_back` with the condition that failed.
//!
//! Every step is written to the store before the next one starts, so a process killed at any
//! point resumes from the record and never patches twice. Rollouts of one Deployment never
//! interleave: each runs in a [`Turn`], a lock per Deployment in this process and a turn in
//! the store that other processes (`deploybot rollback` beside the server) wait for too.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::cluster::{Cluster, ClusterError, DeploymentRef, ImageChange, Observed};
use super::health::{assess, Health, Since};
use super::order::{is_older, Version};
use crate::config::Environment;
use crate::keyed_lock::KeyedLocks;
use crate::store::{
    DeployRow, DeployUpdate, Jobs, NewDeploy, RolloutCause, RolloutState, StoreError, TurnClaim,
};

/// How often a 409 conflict is retried with a fresh read before the rollout fails.
const CONFLICT_RETRIES: usize = 5;
/// How long a turn on a Deployment lasts unless renewed (it is renewed at a third of this);
/// the bound on how long a hung process can hold a Deployment.
const TURN_LEASE: Duration = Duration::from_secs(30);
/// How often a rollout waiting for another process's turn asks again.
const TURN_POLL: Duration = Duration::from_millis(250);

/// What to roll out, and why.
#[derive(Debug, Clone)]
pub struct Request<'a> {
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

impl Outcome {
    /// Rebuilds the outcome of a rollout that had already ended (a resumed job); None while
    /// it goes on.
    fn of_record(row: &DeployRow) -> Option<Outcome> {
        let reason = row.reason.clone().unwrap_or_default();
        Some(match row.state {
            RolloutState::Deployed => Outcome::Deployed {
                image: row.image.clone(),
            },
            RolloutState::RolledBack => Outcome::RolledBack {
                reason,
                previous: row.previous_image.clone().unwrap_or_default(),
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
            Outcome::RolledBack { reason, .. } => (RolloutState::RolledBack, Some(reason.clone())),
            Outcome::Skipped { reason } => (RolloutState::Skipped, Some(reason.clone())),
            Outcome::Failed { reason } => (RolloutState::Failed, Some(reason.clone())),
        }
    }
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

/// A rollout's turn on one Deployment: nobody else rolls it out until [`Turn::end`]. Dropped
/// without it (a stopped job), the renewal stops and the turn lapses.
pub struct Turn {
    _in_this_process: tokio::sync::OwnedMutexGuard<()>,
    claim: TurnClaim,
    renewal: tokio::task::JoinHandle<()>,
    jobs: Arc<Jobs>,
}

impl Turn {
    pub async fn end(self) {
        self.renewal.abort();
        let claim = self.claim.clone();
        if let Err(e) = self.jobs.call(move |jobs| jobs.end_turn(&claim)).await {
            // Not fatal: the turn lapses with its lease.
            tracing::warn!(error = %e, deployment = %self.claim.deployment, "Could not end a rollout's turn");
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// How a wait for a rollout ended.
enum Waited {
    Complete,
    /// The controller gave up: "reason: message" of the Progressing condition.
    Failed(String),
    /// deploybot's own deadline passed; what it still waited for.
    TimedOut(String),
    /// Someone else set the container to this image meanwhile: no longer our rollout.
    Replaced(String),
}

impl<C: Cluster> Deployer<C> {
    /// `clusters` by environment name.
    pub fn new(clusters: HashMap<String, Result<C, String>>, jobs: Arc<Jobs>) -> Deployer<C> {
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

    /// Waits for the turn on `deployment` in `environment` (noting who has it, once each),
    /// then holds it, renewed, until [`Turn::end`].
    pub async fn turn(
        &self,
        environment: &Environment,
        deployment: &str,
        what: String,
        note: Note<'_>,
    ) -> Result<Turn, StoreError> {
        let target = DeploymentRef {
            namespace: environment.namespace.clone(),
            name: deployment.to_owned(),
        };
        let local = self
            .locks
            .lock((environment.name.clone(), target.clone()))
            .await;
        let claim = TurnClaim {
            environment: environment.name.clone(),
            namespace: target.namespace.clone(),
            deployment: target.name.clone(),
            holder: self.holder.clone(),
            pid: std::process::id(),
            what,
        };
        let mut waiting_for = None;
        loop {
            let ask = claim.clone();
            match self
                .jobs
                .call(move |jobs| jobs.take_turn(&ask, TURN_LEASE))
                .await?
            {
                None => break,
                Some(other) => {
                    if waiting_for.as_ref() != Some(&other) {
                        note(&format!("waiting: {other} is rolling out {target}"));
                        waiting_for = Some(other);
                    }
                    tokio::time::sleep(TURN_POLL).await;
                }
            }
        }
        let renewal = tokio::spawn(renew(self.jobs.clone(), claim.clone()));
        Ok(Turn {
            _in_this_process: local,
            claim,
            renewal,
            jobs: self.jobs.clone(),
        })
    }

    /// The store its rollouts are recorded in.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// Rolls `request` out in its own turn.
    pub async fn run(&self, request: &Request<'_>, note: Note<'_>) -> Outcome {
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
    pub async fn run_in(&self, turn: &Turn, request: &Request<'_>, note: Note<'_>) -> Outcome {
        let environment = request.environment;
        let target = DeploymentRef {
            namespace: environment.namespace.clone(),
            name: request.deployment.to_owned(),
        };
        debug_assert_eq!(
            (&turn.claim.environment, &turn.claim.deployment),
            (&environment.name, &target.name)
        );
        let cluster = match self.clusters.get(&environment.name) {
            Some(Ok(cluster)) => Ok(cluster),
            Some(Err(e)) => Err(format!("environment \"{}\": {e}", environment.name)),
            None => Err(format!(
                "environment \"{}\" has no cluster",
                environment.name
            )),
        };
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
        let (id, outcome) = match cluster {
            Ok(cluster) => self.drive(cluster, request, &target, earlier, note).await,
            Err(reason) => (earlier.map(|r| r.id), Outcome::Failed { reason }),
        };
        let (state, reason) = outcome.recorded_as();
        match id {
            Some(id) => {
                let update = DeployUpdate {
                    reason,
                    ..DeployUpdate::to(state)
                };
                self.update(id, update).await
            }
            // Ended before anything was recorded (an unreadable Deployment): record how.
            None => {
                let _ = self.plan(request, state, None, None, reason).await;
            }
        }
        outcome
    }

    /// The job's rollout as recorded before (a resumed job).
    async fn earlier(&self, request: &Request<'_>) -> Result<Option<DeployRow>, StoreError> {
        let RolloutCause::Release { job } = request.cause else {
            return Ok(None);
        };
        let (service, environment) = (request.service.to_owned(), request.environment.name.clone());
        self.jobs
            .call(move |jobs| jobs.deploy_of(job, &service, &environment))
            .await
    }

    /// Records a new rollout; None if the store refused (logged: the rollout goes on).
    async fn plan(
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
            namespace: request.environment.namespace.clone(),
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

    async fn update(&self, id: i64, update: DeployUpdate) {
        if let Err(e) = self
            .jobs
            .call(move |jobs| jobs.update_deploy(id, &update))
            .await
        {
            tracing::error!(error = %e, deploy = id, "Could not record a deploy step");
        }
    }

    /// Drives the rollout from where the record says it is; answers the record's id (None if
    /// nothing could be recorded) and the outcome.
    async fn drive(
        &self,
        cluster: &C,
        request: &Request<'_>,
        target: &DeploymentRef,
        record: Option<DeployRow>,
        note: Note<'_>,
    ) -> (Option<i64>, Outcome) {
        let deadline = Instant::now() + request.environment.rollout_timeout;
        let failed = |e: ClusterError| Outcome::Failed {
            reason: e.to_string(),
        };
        let (id, since, previous) = match record {
            Some(record) if record.state == RolloutState::Patched => {
                note("resuming: the change was already sent; waiting for the rollout");
                let since = Since {
                    generation: record.generation.unwrap_or(0),
                    stale_verdict: None,
                };
                (record.id, since, record.previous_image.clone())
            }
            Some(record) if record.state == RolloutState::RollingBack => {
                let reason = record.reason.clone().unwrap_or_default();
                let previous = record.previous_image.clone().unwrap_or_default();
                note("resuming the rollback");
                let outcome = self
                    .roll_back(cluster, request, target, record.id, &previous, reason, note)
                    .await;
                return (Some(record.id), outcome);
            }
            record => {
                if record.is_none() && !request.by_hand() {
                    if let Some(newer) = self.newer_in_place(request, target).await {
                        note(&newer);
                        return (None, Outcome::Skipped { reason: newer });
                    }
                }
                match self
                    .change_image(cluster, request, target, record.as_ref(), note)
                    .await
                {
                    Ok(changed) => changed,
                    Err((id, e)) => return (id, failed(e)),
                }
            }
        };
        note(&format!("waiting for {target} to roll out"));
        let ours = (request.container, request.image);
        let reason = match self
            .wait(cluster, target, &since, ours, deadline, note)
            .await
        {
            Ok(Waited::Complete) => {
                note(&format!("{target} is running {}", request.image));
                let image = request.image.to_owned();
                return (Some(id), Outcome::Deployed { image });
            }
            Ok(Waited::Replaced(image)) => {
                let reason = replaced(target, request.container, &image);
                return (Some(id), Outcome::Failed { reason });
            }
            Ok(Waited::Failed(reason)) => reason,
            Ok(Waited::TimedOut(last)) => format!(
                "not healthy within {}s ({last})",
                request.environment.rollout_timeout.as_secs()
            ),
            Err(e) => return (Some(id), failed(e)),
        };
        let reason = explained(cluster, target, ours, reason, note).await;
        note(&format!("rollout failed: {reason}"));
        let outcome = match previous {
            Some(previous) if !request.by_hand() && previous != request.image => {
                self.roll_back(cluster, request, target, id, &previous, reason, note)
                    .await
            }
            _ => Outcome::Failed { reason },
        };
        (Some(id), outcome)
    }

    /// A newer version already in place on this Deployment, by deploybot's record.
    async fn newer_in_place(
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

    /// Reads the Deployment, records the rollout with the image it runs now (the previous
    /// image is on record before the change is sent: one write), then sets the new image
    /// against the version read. A 409 means someone changed the Deployment in between: read
    /// again, record again, retry. Answers the record's id, what to wait for and the previous
    /// image; an error comes with the record's id if there is one.
    async fn change_image(
        &self,
        cluster: &C,
        request: &Request<'_>,
        target: &DeploymentRef,
        record: Option<&DeployRow>,
        note: Note<'_>,
    ) -> Result<(i64, Since, Option<String>), (Option<i64>, ClusterError)> {
        let mut id = record.map(|r| r.id);
        // What ran before, as recorded before a patch that a restart interrupted.
        let recorded_previous = record.and_then(|r| r.previous_image.clone());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let observed = cluster.read(target).await.map_err(|e| (id, e))?;
            let current =
                container_image(&observed, target, request.container).map_err(|e| (id, e))?;
            let already = current == request.image;
            let (state, generation) = if already {
                // In place: sent before a restart, or the same image again.
                note(&format!(
                    "{target} already has {}; not patching",
                    request.image
                ));
                (RolloutState::Patched, Some(observed.generation))
            } else {
                (RolloutState::Planned, None)
            };
            let recorded = match id {
                Some(id) => {
                    let update = DeployUpdate {
                        // A resumed record keeps the previous image it has.
                        previous_image: (!already).then(|| current.clone()),
                        generation,
                        ..DeployUpdate::to(state)
                    };
                    self.update(id, update).await;
                    Some(id)
                }
                None => {
                    self.plan(request, state, Some(current.clone()), generation, None)
                        .await
                }
            };
            id = recorded;
            let Some(recorded) = recorded else {
                let reason = "the deploy could not be recorded; nothing was changed".to_owned();
                return Err((
                    None,
                    ClusterError::Other {
                        verb: "patch",
                        target: target.clone(),
                        message: reason,
                    },
                ));
            };
            if already {
                // The change in place is ours (or the same image): a verdict on it counts.
                let since = Since {
                    generation: observed.generation,
                    stale_verdict: None,
                };
                let previous = recorded_previous.or(Some(current));
                return Ok((recorded, since, previous));
            }
            let annotations = annotations(request, &current);
            note(&format!(
                "{target}: container {} {current} -> {}",
                request.container, request.image
            ));
            let change = ImageChange {
                container: request.container,
                image: request.image,
                annotations: &annotations,
                resource_version: &observed.resource_version,
            };
            match cluster.set_image(target, change).await {
                Ok(after) => {
                    let update = DeployUpdate {
                        generation: Some(after.generation),
                        patched: true,
                        ..DeployUpdate::to(RolloutState::Patched)
                    };
                    self.update(recorded, update).await;
                    return Ok((recorded, Since::change(&after), Some(current)));
                }
                Err(ClusterError::Conflict(_)) if attempt < CONFLICT_RETRIES => {
                    note(&format!(
                        "{target} changed since it was read (409); reading again"
                    ));
                }
                Err(e) => return Err((id, e)),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn roll_back(
        &self,
        cluster: &C,
        request: &Request<'_>,
        target: &DeploymentRef,
        id: i64,
        previous: &str,
        reason: String,
        note: Note<'_>,
    ) -> Outcome {
        self.update(
            id,
            DeployUpdate {
                reason: Some(reason.clone()),
                ..DeployUpdate::to(RolloutState::RollingBack)
            },
        )
        .await;
        note(&format!("rolling {target} back to {previous}"));
        let deadline = Instant::now() + request.environment.rollout_timeout;
        let back = Request {
            image: previous,
            ..request.clone()
        };
        let mut attempt = 0;
        let since = loop {
            attempt += 1;
            let observed = match cluster.read(target).await {
                Ok(observed) => observed,
                Err(e) => return rollback_failed(&reason, e.to_string()),
            };
            if observed.images.get(request.container).map(String::as_str) == Some(previous) {
                break Since::change(&observed);
            }
            let mut annotations = annotations(&back, request.image);
            annotations.insert(
                "kubernetes.io/change-cause".into(),
                format!("deploybot rolled back {} ({reason})", request.tag),
            );
            let change = ImageChange {
                container: request.container,
                image: previous,
                annotations: &annotations,
                resource_version: &observed.resource_version,
            };
            match cluster.set_image(target, change).await {
                Ok(after) => break Since::change(&after),
                Err(ClusterError::Conflict(_)) if attempt < CONFLICT_RETRIES => continue,
                Err(e) => return rollback_failed(&reason, e.to_string()),
            }
        };
        let ours = (request.container, previous);
        match self
            .wait(cluster, target, &since, ours, deadline, note)
            .await
        {
            Ok(Waited::Replaced(image)) => {
                rollback_failed(&reason, replaced(target, request.container, &image))
            }
            Ok(Waited::Complete) => {
                note(&format!(
                    "rolled back: {target} is running {previous} again"
                ));
                Outcome::RolledBack {
                    reason,
                    previous: previous.to_owned(),
                }
            }
            Ok(Waited::Failed(why)) => rollback_failed(&reason, why),
            Ok(Waited::TimedOut(last)) => rollback_failed(&reason, format!("timed out ({last})")),
            Err(e) => rollback_failed(&reason, e.to_string()),
        }
    }

    /// Follows the Deployment until the rollout of the change `since` describes completes or
    /// fails, someone else replaces `ours` (container, image), or the deadline passes.
    async fn wait(
        &self,
        cluster: &C,
        target: &DeploymentRef,
        since: &Since,
        ours: (&str, &str),
        deadline: Instant,
        note: Note<'_>,
    ) -> Result<Waited, ClusterError> {
        let mut last = String::new();
        loop {
            let observed = cluster.read(target).await?;
            if let Some(done) = judge(&observed, since, ours, &mut last, note) {
                return Ok(done);
            }
            let mut changes = cluster.follow(target, &observed.resource_version).await?;
            loop {
                match tokio::time::timeout_at(deadline, changes.next()).await {
                    Err(_) => return Ok(Waited::TimedOut(last)),
                    Ok(None) => break,
                    Ok(Some(change)) => {
                        if let Some(done) = judge(&change?, since, ours, &mut last, note) {
                            return Ok(done);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(Waited::TimedOut(last));
            }
            // A watch the server closed: a short pause so a flapping server is not hammered.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `reason` a rollout failed for, with why its pods (those running `ours`: container, image)
/// were not ready, when the cluster lets deploybot see them: read before the rollback
/// replaces them.
async fn explained<C: Cluster>(
    cluster: &C,
    target: &DeploymentRef,
    (container, image): (&str, &str),
    reason: String,
    note: Note<'_>,
) -> String {
    let Ok(observed) = cluster.read(target).await else {
        return reason;
    };
    match cluster
        .pods_not_ready(target, &observed.selector, container, image)
        .await
    {
        Ok(pods) if !pods.is_empty() => format!("{reason}; {}", pods.join("; ")),
        Ok(_) => reason,
        Err(e) => {
            note(&format!("why its pods were not ready is not known: {e}"));
            reason
        }
    }
}

/// Keeps a turn from lapsing while its rollout runs (stopped with the turn).
async fn renew(jobs: Arc<Jobs>, claim: TurnClaim) {
    loop {
        tokio::time::sleep(TURN_LEASE / 3).await;
        let ask = claim.clone();
        match jobs
            .call(move |jobs| jobs.renew_turn(&ask, TURN_LEASE))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(deployment = %claim.deployment, "A rollout's turn lapsed and another holder took it")
            }
            Err(e) => {
                tracing::warn!(error = %e, deployment = %claim.deployment, "Could not renew a rollout's turn")
            }
        }
    }
}

/// How the rollout ended, or None while it goes on (each new thing waited for is noted once).
fn judge(
    observed: &Observed,
    since: &Since,
    (container, image): (&str, &str),
    last: &mut String,
    note: Note<'_>,
) -> Option<Waited> {
    // A rollout someone else replaced (kubectl set image, another tool) is not ours to judge:
    // its completion would be recorded as ours, its failure rolled back over their change.
    match observed.images.get(container) {
        Some(running) if running != image => return Some(Waited::Replaced(running.clone())),
        _ => {}
    }
    match assess(observed, since) {
        Health::Waiting(what) => {
            if what != *last {
                note(&what);
                *last = what;
            }
            None
        }
        Health::Complete => Some(Waited::Complete),
        Health::Failed { reason, message } => Some(Waited::Failed(format!("{reason}: {message}"))),
    }
}

fn replaced(target: &DeploymentRef, container: &str, image: &str) -> String {
    format!(
        "{target}: container {container} was set to {image} by someone else during the rollout; deploybot leaves it as it is"
    )
}

fn rollback_failed(reason: &str, why: String) -> Outcome {
    Outcome::Failed {
        reason: format!("{reason}; the rollback to the previous image also failed: {why}"),
    }
}

fn container_image(
    observed: &Observed,
    target: &DeploymentRef,
    container: &str,
) -> Result<String, ClusterError> {
    observed.images.get(container).cloned().ok_or_else(|| {
        let names: Vec<&str> = observed.images.keys().map(String::as_str).collect();
        ClusterError::Other {
            verb: "patch",
            target: target.clone(),
            message: format!(
                "it has no container named \"{container}\" (it has: {})",
                names.join(", ")
            ),
        }
    })
}

/// What the change is and why, on the Deployment (the deployment controller copies them to
/// the new ReplicaSet, so `kubectl rollout history` shows the change-cause).
fn annotations(request: &Request<'_>, previous: &str) -> BTreeMap<String, String> {
    let short = &request.sha[..12.min(request.sha.len())];
    let (job, cause) = match request.cause {
        RolloutCause::Release { job } => (
            job.to_string(),
            format!(
                "deploybot job {job}: {} {} ({short})",
                request.project, request.tag
            ),
        ),
        RolloutCause::ByHand => (
            "-".to_owned(),
            format!(
                "deploybot rollback of {} to {}",
                request.service, request.tag
            ),
        ),
    };
    BTreeMap::from([
        ("deploybot.dev/tag".into(), request.tag.to_owned()),
        ("deploybot.dev/sha".into(), request.sha.to_owned()),
        ("deploybot.dev/delivery".into(), request.delivery.to_owned()),
        ("deploybot.dev/job".into(), job),
        ("deploybot.dev/previous-image".into(), previous.to_owned()),
        ("kubernetes.io/change-cause".into(), cause),
    ])
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::deploy::cluster::Changes;

    /// A Deployment whose controller finishes every rollout at once, and which someone else
    /// changes under deploybot `conflicts` times (each a 409).
    struct Fake {
        observed: Mutex<Observed>,
        conflicts: Mutex<u32>,
        patches: Mutex<u32>,
        /// Someone else's image, set right after deploybot's patch.
        then_someone_sets: Option<&'static str>,
        /// `web:2` never becomes ready: the controller has given up on it.
        stalls: bool,
        /// Listing pods is forbidden (a Role without `list` on pods).
        pods_hidden: bool,
    }

    impl Cluster for Fake {
        async fn read(&self, _: &DeploymentRef) -> Result<Observed, ClusterError> {
            let mut observed = self.observed.lock().unwrap().clone();
            if self.stalls && observed.images["api"] == "web:2" {
                observed.updated = 0;
                observed.progressing = Some(crate::deploy::cluster::Condition {
                    status: "False".into(),
                    reason: "ProgressDeadlineExceeded".into(),
                    message: "ReplicaSet \"web-2\" has timed out progressing.".into(),
                    last_update: "2026-01-01T00:00:09Z".into(),
                });
            }
            Ok(observed)
        }

        async fn set_image(
            &self,
            target: &DeploymentRef,
            change: ImageChange<'_>,
        ) -> Result<Observed, ClusterError> {
            let mut observed = self.observed.lock().unwrap();
            let mut conflicts = self.conflicts.lock().unwrap();
            if *conflicts > 0 {
                *conflicts -= 1;
                observed
                    .images
                    .insert("api".into(), "someone/else:2".into());
                observed.resource_version = format!("{}x", observed.resource_version);
            }
            if change.resource_version != observed.resource_version {
                return Err(ClusterError::Conflict(target.clone()));
            }
            *self.patches.lock().unwrap() += 1;
            observed
                .images
                .insert(change.container.into(), change.image.into());
            observed.generation += 1;
            observed.observed_generation = observed.generation;
            let answer = observed.clone();
            if let Some(theirs) = self.then_someone_sets {
                observed
                    .images
                    .insert(change.container.into(), theirs.into());
                observed.generation += 1;
                observed.observed_generation = observed.generation;
            }
            Ok(answer)
        }

        async fn follow(&self, _: &DeploymentRef, _: &str) -> Result<Changes, ClusterError> {
            Ok(Box::pin(futures_util::stream::empty()))
        }

        async fn pods_not_ready(
            &self,
            target: &DeploymentRef,
            _: &BTreeMap<String, String>,
            _: &str,
            image: &str,
        ) -> Result<Vec<String>, ClusterError> {
            if self.pods_hidden {
                return Err(ClusterError::Other {
                    verb: "list the pods of",
                    target: target.clone(),
                    message: "forbidden".into(),
                });
            }
            Ok(if self.stalls && image == "web:2" {
                vec!["pod web-2-x: container api is running but not ready".into()]
            } else {
                Vec::new()
            })
        }
    }

    fn environment() -> Environment {
        Environment {
            name: "production".into(),
            namespace: "default".into(),
            tags: Vec::new(),
            branches: Vec::new(),
            projects: Vec::new(),
            order: crate::config::DeployOrder::Semver,
            rollout_timeout: Duration::from_secs(1),
            cluster: crate::config::ClusterAccess::InCluster,
            tokens: Vec::new(),
        }
    }

    fn fake(conflicts: u32, then_someone_sets: Option<&'static str>) -> Fake {
        Fake {
            observed: Mutex::new(Observed {
                resource_version: "1".into(),
                generation: 1,
                observed_generation: 1,
                desired: 1,
                total: 1,
                updated: 1,
                available: 1,
                images: BTreeMap::from([("api".into(), "web:1".into())]),
                ..Observed::default()
            }),
            conflicts: Mutex::new(conflicts),
            patches: Mutex::new(0),
            then_someone_sets,
            stalls: false,
            pods_hidden: false,
        }
    }

    /// Deploys `web:2` (previously `web:1`) on `fake`; answers the outcome, the notes, the
    /// patches sent and the record.
    async fn deploy_on(fake: Fake) -> (Outcome, Vec<String>, u32, DeployRow) {
        resume_on(fake, None).await
    }

    /// The same, for a job whose rollout a killed process left recorded as `earlier` (state,
    /// generation): the restarted worker runs it again.
    async fn resume_on(
        fake: Fake,
        earlier: Option<(RolloutState, i64)>,
    ) -> (Outcome, Vec<String>, u32, DeployRow) {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Arc::new(Jobs::open_migrated(dir.path()).unwrap());
        let job = jobs.insert_running_job_for_tests("myevents").unwrap();
        let cause = RolloutCause::Release { job };
        if let Some((state, generation)) = earlier {
            let reason = (state == RolloutState::RollingBack)
                .then(|| "ProgressDeadlineExceeded: stalled".to_owned());
            jobs.plan_deploy(&crate::store::NewDeploy {
                cause,
                project: "myevents".into(),
                service: "web".into(),
                environment: "production".into(),
                namespace: "default".into(),
                deployment: "web".into(),
                container: "api".into(),
                tag: "v2".into(),
                pushed_at: "2026-01-01T00:00:00.000Z".into(),
                image: "web:2".into(),
                state,
                previous_image: Some("web:1".into()),
                generation: Some(generation),
                reason,
            })
            .unwrap();
        }
        let deployer = Deployer::new(
            HashMap::from([("production".into(), Ok(fake))]),
            jobs.clone(),
        );
        let environment = environment();
        let request = Request {
            cause,
            project: "myevents",
            service: "web",
            environment: &environment,
            deployment: "web",
            container: "api",
            tag: "v2",
            sha: "",
            delivery: "",
            pushed_at: "2026-01-01T00:00:00.000Z",
            image: "web:2",
        };
        let notes = Mutex::new(Vec::new());
        let note = |text: &str| notes.lock().unwrap().push(text.to_owned());
        let outcome = deployer.run(&request, &note).await;
        let patches = match deployer.clusters.get("production") {
            Some(Ok(fake)) => *fake.patches.lock().unwrap(),
            _ => unreachable!(),
        };
        let record = jobs
            .deploy_history("myevents", "web", 10)
            .unwrap()
            .remove(0);
        (outcome, notes.into_inner().unwrap(), patches, record)
    }

    /// `fake` after deploybot's patch to `web:2` went through (generation 2).
    fn already_patched(fake: Fake) -> Fake {
        {
            let mut observed = fake.observed.lock().unwrap();
            observed.images.insert("api".into(), "web:2".into());
            observed.generation = 2;
            observed.observed_generation = 2;
        }
        fake
    }

    #[tokio::test]
    async fn a_rollout_recorded_as_patched_is_waited_for_not_patched_again() {
        let (outcome, notes, patches, record) = resume_on(
            already_patched(fake(0, None)),
            Some((RolloutState::Patched, 2)),
        )
        .await;

        assert_eq!(
            outcome,
            Outcome::Deployed {
                image: "web:2".into()
            }
        );
        assert_eq!(patches, 0);
        assert_eq!(record.state, RolloutState::Deployed);
        assert!(notes.iter().any(|n| n.starts_with("resuming")), "{notes:?}");
    }

    /// Killed between sending the patch and recording it: the image is already the new one.
    #[tokio::test]
    async fn a_rollout_recorded_as_planned_whose_patch_went_through_is_not_patched_again() {
        let (outcome, notes, patches, record) = resume_on(
            already_patched(fake(0, None)),
            Some((RolloutState::Planned, 1)),
        )
        .await;

        assert_eq!(
            outcome,
            Outcome::Deployed {
                image: "web:2".into()
            }
        );
        assert_eq!(patches, 0);
        assert_eq!(
            record.previous_image.as_deref(),
            Some("web:1"),
            "kept from the record"
        );
        assert!(
            notes.iter().any(|n| n.contains("not patching")),
            "{notes:?}"
        );
    }

    /// ... and when that rollout then fails, the image put back is the recorded one.
    #[tokio::test]
    async fn a_resumed_rollout_that_fails_rolls_back_to_the_image_recorded_before_it() {
        let mut stalled = already_patched(fake(0, None));
        stalled.stalls = true;
        let (outcome, _, patches, record) =
            resume_on(stalled, Some((RolloutState::Planned, 1))).await;

        let Outcome::RolledBack { previous, reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(previous, "web:1");
        assert!(reason.starts_with("ProgressDeadlineExceeded"), "{reason}");
        assert!(
            reason.ends_with("; pod web-2-x: container api is running but not ready"),
            "the reason says why its pods were not ready: {reason}"
        );
        assert_eq!(patches, 1);
        assert_eq!(record.state, RolloutState::RolledBack);
    }

    #[tokio::test]
    async fn without_leave_to_list_pods_the_reason_is_the_condition_and_the_log_says_so() {
        let mut stalled = fake(0, None);
        stalled.stalls = true;
        stalled.pods_hidden = true;
        let (outcome, notes, _, _) = deploy_on(stalled).await;

        let Outcome::RolledBack { reason, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            reason,
            "ProgressDeadlineExceeded: ReplicaSet \"web-2\" has timed out progressing."
        );
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("why its pods were not ready is not known")),
            "{notes:?}"
        );
    }

    #[tokio::test]
    async fn a_rollback_recorded_as_started_is_finished_after_a_restart() {
        let (outcome, _, patches, record) = resume_on(
            already_patched(fake(0, None)),
            Some((RolloutState::RollingBack, 2)),
        )
        .await;

        assert_eq!(
            outcome,
            Outcome::RolledBack {
                reason: "ProgressDeadlineExceeded: stalled".into(),
                previous: "web:1".into()
            }
        );
        assert_eq!(patches, 1, "the previous image put back, once");
        assert_eq!(record.state, RolloutState::RolledBack);
    }

    #[tokio::test]
    async fn a_409_conflict_is_read_again_recorded_again_and_retried() {
        let (outcome, notes, patches, record) = deploy_on(fake(1, None)).await;

        assert_eq!(
            outcome,
            Outcome::Deployed {
                image: "web:2".into()
            }
        );
        assert_eq!(patches, 1);
        assert_eq!(record.state, RolloutState::Deployed);
        assert_eq!(
            record.previous_image.as_deref(),
            Some("someone/else:2"),
            "the previous image is the one read after the conflict"
        );
        assert!(notes.iter().any(|n| n.contains("409")));
    }

    #[tokio::test]
    async fn an_image_someone_else_sets_during_the_rollout_is_neither_claimed_nor_rolled_back() {
        let (outcome, _, patches, record) = deploy_on(fake(0, Some("hotfix:9"))).await;

        let Outcome::Failed { reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            reason.contains("was set to hotfix:9 by someone else"),
            "{reason}"
        );
        assert_eq!(patches, 1, "no rollback over their change");
        assert_eq!(record.state, RolloutState::Failed);
    }
}
