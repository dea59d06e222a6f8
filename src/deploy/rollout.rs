//! One rollout of one service to one environment, from decision to a recorded end:
//! order check → previous image recorded → conditional patch (409: read again) → wait like
//! `kubectl rollout status` → deployed, or the previous image put back, waited for, and
//! recorded as `rolled_back` with the condition that failed.
//!
//! Every step is written to the store before the next one starts, so a process killed at any
//! point resumes from the record and never patches twice. Rollouts of one Deployment never
//! interleave (a lock per Deployment, in this process).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::cluster::{Cluster, ClusterError, DeploymentRef, ImageChange, Observed};
use super::health::{assess, Health, Since};
use super::order::{is_older, Version};
use crate::config::Environment;
use crate::store::{DeployRow, DeployUpdate, Jobs, NewDeploy, StoreError};

/// How often a 409 conflict is retried with a fresh read before the rollout fails.
const CONFLICT_RETRIES: usize = 5;

/// What to roll out, and why.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The job deploying; None for a rollback by hand.
    pub job: Option<i64>,
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
    /// A rollback by hand (no order check, no automatic rollback of the rollback).
    pub by_hand: bool,
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

impl Outcome {
    /// Rebuilds the outcome of a rollout that had already ended (a resumed job).
    fn of_record(row: &DeployRow) -> Outcome {
        let reason = row.reason.clone().unwrap_or_default();
        match row.state.as_str() {
            "deployed" => Outcome::Deployed {
                image: row.image.clone(),
            },
            "rolled_back" => Outcome::RolledBack {
                reason,
                previous: row.previous_image.clone().unwrap_or_default(),
            },
            "skipped" => Outcome::Skipped { reason },
            _ => Outcome::Failed { reason },
        }
    }
}

/// Where progress lines go (the job's deploy log).
pub type Note<'a> = &'a (dyn Fn(&str) + Send + Sync);

pub struct Deployer<C: Cluster> {
    /// By environment name; the error says why a cluster could not be set up.
    clusters: HashMap<String, Result<C, String>>,
    jobs: Arc<Jobs>,
    locks: std::sync::Mutex<HashMap<(String, DeploymentRef), DeploymentLock>>,
}

/// Held while one rollout of a Deployment runs.
type DeploymentLock = Arc<tokio::sync::Mutex<()>>;

enum Waited {
    Done(Health),
    TimedOut(String),
}

impl<C: Cluster> Deployer<C> {
    /// `clusters` by environment name.
    pub fn new(clusters: HashMap<String, Result<C, String>>, jobs: Arc<Jobs>) -> Deployer<C> {
        Deployer {
            clusters,
            jobs,
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub async fn run(&self, request: &Request<'_>, note: Note<'_>) -> Outcome {
        let environment = request.environment;
        let target = DeploymentRef {
            namespace: environment.namespace.clone(),
            name: request.deployment.to_owned(),
        };
        let lock = self.lock_for(&environment.name, &target);
        let _one_at_a_time = lock.lock().await;
        let cluster = match self.clusters.get(&environment.name) {
            Some(Ok(cluster)) => cluster,
            Some(Err(e)) => {
                return Outcome::Failed {
                    reason: format!("environment \"{}\": {e}", environment.name),
                }
            }
            None => {
                return Outcome::Failed {
                    reason: format!("environment \"{}\" has no cluster", environment.name),
                }
            }
        };
        let record = match self.record(request).await {
            Ok(record) => record,
            Err(e) => {
                return Outcome::Failed {
                    reason: format!("the deploy could not be recorded: {e}"),
                }
            }
        };
        if record.is_finished() {
            note(&format!("already {}", record.state));
            return Outcome::of_record(&record);
        }
        let outcome = self
            .drive(cluster, request, &target, record.clone(), note)
            .await;
        let (state, reason) = match &outcome {
            Outcome::Deployed { .. } => ("deployed", None),
            Outcome::RolledBack { reason, .. } => ("rolled_back", Some(reason.clone())),
            Outcome::Skipped { reason } => ("skipped", Some(reason.clone())),
            Outcome::Failed { reason } => ("failed", Some(reason.clone())),
        };
        self.update(
            record.id,
            DeployUpdate {
                state,
                reason,
                ..DeployUpdate::default()
            },
        )
        .await;
        outcome
    }

    fn lock_for(&self, environment: &str, target: &DeploymentRef) -> DeploymentLock {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks
            .entry((environment.to_owned(), target.clone()))
            .or_default()
            .clone()
    }

    async fn store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Jobs) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let jobs = self.jobs.clone();
        tokio::task::spawn_blocking(move || f(&jobs))
            .await
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
    }

    /// The job's rollout as recorded (a resumed job), or a new `planned` one.
    async fn record(&self, request: &Request<'_>) -> Result<DeployRow, StoreError> {
        if let Some(job) = request.job {
            let (service, environment) =
                (request.service.to_owned(), request.environment.name.clone());
            let earlier = self
                .store(move |jobs| jobs.deploy_of(job, &service, &environment))
                .await?;
            if let Some(earlier) = earlier {
                return Ok(earlier);
            }
        }
        let owned = (
            request.job,
            request.project.to_owned(),
            request.service.to_owned(),
            request.environment.name.clone(),
            request.environment.namespace.clone(),
            request.deployment.to_owned(),
            request.container.to_owned(),
            request.tag.to_owned(),
            request.pushed_at.to_owned(),
            request.image.to_owned(),
            if request.by_hand {
                "rollback"
            } else {
                "deploy"
            },
        );
        self.store(move |jobs| {
            let (
                job,
                project,
                service,
                environment,
                namespace,
                deployment,
                container,
                tag,
                pushed_at,
                image,
                kind,
            ) = &owned;
            jobs.plan_deploy(&NewDeploy {
                job: *job,
                project,
                service,
                environment,
                namespace,
                deployment,
                container,
                tag,
                pushed_at,
                image,
                kind,
            })
        })
        .await
    }

    async fn update(&self, id: i64, update: DeployUpdate) {
        if let Err(e) = self
            .store(move |jobs| jobs.update_deploy(id, &update))
            .await
        {
            tracing::error!(error = %e, deploy = id, "Could not record a deploy step");
        }
    }

    async fn drive(
        &self,
        cluster: &C,
        request: &Request<'_>,
        target: &DeploymentRef,
        record: DeployRow,
        note: Note<'_>,
    ) -> Outcome {
        let deadline = Instant::now() + request.environment.rollout_timeout;
        let failed = |e: ClusterError| Outcome::Failed {
            reason: e.to_string(),
        };
        let (since, previous) = match record.state.as_str() {
            "planned" => {
                if !request.by_hand {
                    if let Some(newer) = self.newer_in_place(request, target, record.id).await {
                        note(&newer);
                        return Outcome::Skipped { reason: newer };
                    }
                }
                match self
                    .change_image(cluster, request, target, &record, note)
                    .await
                {
                    Ok(done) => done,
                    Err(e) => return failed(e),
                }
            }
            "patched" => {
                note("resuming: the change was already sent; waiting for the rollout");
                let since = Since {
                    generation: record.generation.unwrap_or(0),
                    stale_verdict: None,
                };
                (since, record.previous_image.clone())
            }
            _ => {
                // rolling_back: the record says why.
                let reason = record.reason.clone().unwrap_or_default();
                let previous = record.previous_image.clone().unwrap_or_default();
                note("resuming the rollback");
                return self
                    .roll_back(cluster, request, target, record.id, &previous, reason, note)
                    .await;
            }
        };
        note(&format!("waiting for {target} to roll out"));
        let reason = match self.wait(cluster, target, &since, deadline, note).await {
            Ok(Waited::Done(Health::Complete)) => {
                note(&format!("{target} is running {}", request.image));
                return Outcome::Deployed {
                    image: request.image.to_owned(),
                };
            }
            Ok(Waited::Done(Health::Failed { reason, message })) => format!("{reason}: {message}"),
            Ok(Waited::Done(Health::Waiting(_))) => return unreachable_waiting(),
            Ok(Waited::TimedOut(last)) => format!(
                "not healthy within {}s ({last})",
                request.environment.rollout_timeout.as_secs()
            ),
            Err(e) => return failed(e),
        };
        note(&format!("rollout failed: {reason}"));
        match previous {
            Some(previous) if !request.by_hand && previous != request.image => {
                self.roll_back(cluster, request, target, record.id, &previous, reason, note)
                    .await
            }
            _ => Outcome::Failed { reason },
        }
    }

    /// A newer version already in place on this Deployment, by deploybot's record.
    async fn newer_in_place(
        &self,
        request: &Request<'_>,
        target: &DeploymentRef,
        id: i64,
    ) -> Option<String> {
        let (environment, target_owned) = (request.environment.name.clone(), target.clone());
        let in_place = self
            .store(move |jobs| {
                jobs.in_place(
                    &environment,
                    &target_owned.namespace,
                    &target_owned.name,
                    id,
                )
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

    /// Records the previous image, then sets the new one against the version read; a 409
    /// means someone changed the Deployment in between: read again, record again, retry.
    /// Returns what to wait for and the previous image.
    async fn change_image(
        &self,
        cluster: &C,
        request: &Request<'_>,
        target: &DeploymentRef,
        record: &DeployRow,
        note: Note<'_>,
    ) -> Result<(Since, Option<String>), ClusterError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let observed = cluster.read(target).await?;
            let current = container_image(&observed, target, request.container)?;
            if current == request.image {
                // Already in place: sent before a restart, or the same image again.
                let previous = record.previous_image.clone().unwrap_or(current);
                note(&format!(
                    "{target} already has {}; not patching",
                    request.image
                ));
                self.update(
                    record.id,
                    DeployUpdate {
                        state: "patched",
                        previous_image: Some(previous.clone()),
                        generation: Some(observed.generation),
                        ..DeployUpdate::default()
                    },
                )
                .await;
                return Ok((Since::change(&observed), Some(previous)));
            }
            // The previous image is on record before the change is sent.
            self.update(
                record.id,
                DeployUpdate {
                    state: "planned",
                    previous_image: Some(current.clone()),
                    ..DeployUpdate::default()
                },
            )
            .await;
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
                    self.update(
                        record.id,
                        DeployUpdate {
                            state: "patched",
                            generation: Some(after.generation),
                            patched: true,
                            ..DeployUpdate::default()
                        },
                    )
                    .await;
                    return Ok((Since::change(&after), Some(current)));
                }
                Err(ClusterError::Conflict(_)) if attempt < CONFLICT_RETRIES => {
                    note(&format!(
                        "{target} changed since it was read (409); reading again"
                    ));
                }
                Err(e) => return Err(e),
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
                state: "rolling_back",
                reason: Some(reason.clone()),
                ..DeployUpdate::default()
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
        match self.wait(cluster, target, &since, deadline, note).await {
            Ok(Waited::Done(Health::Complete)) => {
                note(&format!(
                    "rolled back: {target} is running {previous} again"
                ));
                Outcome::RolledBack {
                    reason,
                    previous: previous.to_owned(),
                }
            }
            Ok(Waited::Done(Health::Failed { reason: r, message })) => {
                rollback_failed(&reason, format!("{r}: {message}"))
            }
            Ok(Waited::Done(Health::Waiting(_))) => unreachable_waiting(),
            Ok(Waited::TimedOut(last)) => rollback_failed(&reason, format!("timed out ({last})")),
            Err(e) => rollback_failed(&reason, e.to_string()),
        }
    }

    /// Follows the Deployment until the rollout of the change `since` describes completes or
    /// fails, or the deadline passes.
    async fn wait(
        &self,
        cluster: &C,
        target: &DeploymentRef,
        since: &Since,
        deadline: Instant,
        note: Note<'_>,
    ) -> Result<Waited, ClusterError> {
        let mut last = String::new();
        loop {
            let observed = cluster.read(target).await?;
            if let Some(done) = judge(&observed, since, &mut last, note) {
                return Ok(Waited::Done(done));
            }
            let mut changes = cluster.follow(target, &observed.resource_version).await?;
            loop {
                match tokio::time::timeout_at(deadline, changes.next()).await {
                    Err(_) => return Ok(Waited::TimedOut(last)),
                    Ok(None) => break,
                    Ok(Some(change)) => {
                        if let Some(done) = judge(&change?, since, &mut last, note) {
                            return Ok(Waited::Done(done));
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

/// A finished health, or None while waiting (each new thing waited for is noted once).
fn judge(observed: &Observed, since: &Since, last: &mut String, note: Note<'_>) -> Option<Health> {
    match assess(observed, since) {
        Health::Waiting(what) => {
            if what != *last {
                note(&what);
                *last = what;
            }
            None
        }
        done => Some(done),
    }
}

fn unreachable_waiting() -> Outcome {
    // `wait` returns only finished health; kept total instead of panicking.
    Outcome::Failed {
        reason: "internal: a rollout reported as finished while waiting".into(),
    }
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
    let job = request
        .job
        .map(|j| j.to_string())
        .unwrap_or_else(|| "-".into());
    let cause = if request.by_hand {
        format!(
            "deploybot rollback of {} to {}",
            request.service, request.tag
        )
    } else {
        format!(
            "deploybot job {job}: {} {} ({short})",
            request.project, request.tag
        )
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
