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
