//! Waiting for a change to roll out, as `kubectl rollout status` does: follow the Deployment
//! until its controller completes or gives up on the change, someone else sets the container
//! to another image, or deploybot's own deadline passes; and, for a failed rollout, why its
//! pods were not ready.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::{Note, Rollout};
use crate::deploy::cluster::{Cluster, ClusterError, DeploymentRef, Observed};
use crate::deploy::health::{assess, Health, Since};

/// How a wait for a rollout ended.
pub(super) enum Waited {
    Complete,
    /// The controller gave up: "reason: message" of the Progressing condition.
    Failed(String),
    /// deploybot's own deadline passed; what it still waited for.
    TimedOut(String),
    /// Someone else set the container to this image meanwhile: no longer our rollout.
    Replaced(String),
}

impl<C: Cluster> Rollout<'_, C> {
    /// Follows the Deployment until the rollout of the change `since` describes completes or
    /// fails, someone else replaces `ours` (container, image), or the deadline passes.
    pub(super) async fn wait(
        &self,
        since: &Since,
        ours: (&str, &str),
        deadline: Instant,
    ) -> Result<Waited, ClusterError> {
        let (cluster, target, note) = (self.cluster, self.target, self.note);
        let mut last = String::new();
        let mut outage = Outage::default();
        loop {
            let observed = match cluster.read(target).await {
                Err(e) => {
                    outage.wait(e, deadline, note).await?;
                    continue;
                }
                Ok(observed) => observed,
            };
            outage.over(note);
            if let Some(done) = judge(&observed, since, ours, &mut last, note) {
                return Ok(done);
            }
            let mut changes = match cluster.follow(target, &observed.resource_version).await {
                Err(e) => {
                    outage.wait(e, deadline, note).await?;
                    continue;
                }
                Ok(changes) => changes,
            };
            loop {
                match tokio::time::timeout_at(deadline, changes.next()).await {
                    Err(_) => return Ok(Waited::TimedOut(last)),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        outage.wait(e, deadline, note).await?;
                        break;
                    }
                    Ok(Some(Ok(change))) => {
                        if let Some(done) = judge(&change, since, ours, &mut last, note) {
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

    /// `reason` a rollout failed for, with why its pods (those running `ours`: container,
    /// image) were not ready, when the cluster lets deploybot see them: read before the
    /// rollback replaces them.
    pub(super) async fn explained(
        &self,
        (container, image): (&str, &str),
        reason: String,
    ) -> String {
        let Ok(observed) = self.cluster.read(self.target).await else {
            return reason;
        };
        match self
            .cluster
            .pods_not_ready(self.target, &observed.selector, container, image)
            .await
        {
            Ok(pods) if !pods.is_empty() => format!("{reason}; {}", pods.join("; ")),
            Ok(_) => reason,
            Err(e) => {
                self.note(&format!("why its pods were not ready is not known: {e}"));
                reason
            }
        }
    }
}

/// The API server unreachable while a rollout is followed (restarting, upgraded, its network
/// down): waited for with backoff (1 s doubling to 10 s), said once, until the rollout's
/// deadline; past it, or for any other error, the error ends the wait. A patch already sent
/// stays sent: following again never patches again.
#[derive(Default)]
struct Outage {
    pause: Option<Duration>,
}

impl Outage {
    async fn wait(
        &mut self,
        error: ClusterError,
        deadline: Instant,
        note: Note<'_>,
    ) -> Result<(), ClusterError> {
        if !matches!(error, ClusterError::Unreachable { .. }) {
            return Err(error);
        }
        let pause = self.pause.unwrap_or(Duration::from_secs(1));
        if Instant::now() + pause >= deadline {
            return Err(error);
        }
        if self.pause.is_none() {
            note(&format!(
                "{error}; waiting for it until the rollout's deadline"
            ));
        }
        tokio::time::sleep(pause).await;
        self.pause = Some((pause * 2).min(Duration::from_secs(10)));
        Ok(())
    }

    /// The server answers again.
    fn over(&mut self, note: Note<'_>) {
        if self.pause.take().is_some() {
            note("the Kubernetes API server answers again; following the rollout");
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

/// Why a rollout is no longer deploybot's: someone set `container` to `image` meanwhile.
pub(super) fn replaced(target: &DeploymentRef, container: &str, image: &str) -> String {
    format!(
        "{target}: container {container} was set to {image} by someone else during the rollout; deploybot leaves it as it is"
    )
}
