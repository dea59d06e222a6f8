//! Putting the previous image back after a failed rollout: recorded as `rolling_back` first
//! (a restart finishes it), set conditionally like the change (a 409 is read again), waited
//! for like it, and recorded as `rolled_back` with why, or as `failed` saying why the
//! rollback failed too.

use tokio::time::Instant;

use super::patch::{annotations, CONFLICT_RETRIES};
use super::wait::{replaced, Waited};
use super::{Outcome, Rollout};
use crate::deploy::cluster::{Cluster, ClusterError, ImageChange};
use crate::deploy::health::Since;
use crate::store::{DeployUpdate, RolloutState};

impl<C: Cluster> Rollout<'_, C> {
    /// Rolls the rollout recorded as `id` back to `previous`, because of `reason`.
    pub(super) async fn roll_back(&self, id: i64, previous: &str, reason: String) -> Outcome {
        let update = DeployUpdate {
            reason: Some(reason.clone()),
            ..DeployUpdate::to(RolloutState::RollingBack)
        };
        self.deployer.update(id, update).await;
        self.note(&format!("rolling {} back to {previous}", self.target));
        let deadline = Instant::now() + self.request.environment.rollout_timeout;
        let since = match self.put_back(previous, &reason).await {
            Ok(since) => since,
            Err(e) => return rollback_failed(&reason, e.to_string()),
        };
        let ours = (self.request.container, previous);
        match self.wait(&since, ours, deadline).await {
            Ok(Waited::Replaced(image)) => rollback_failed(
                &reason,
                replaced(self.target, self.request.container, &image),
            ),
            Ok(Waited::Complete) => {
                self.note(&format!(
                    "rolled back: {} is running {previous} again",
                    self.target
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

    /// Sets the container back to `previous` unless it already runs it; answers what to wait
    /// for.
    async fn put_back(&self, previous: &str, reason: &str) -> Result<Since, ClusterError> {
        let request = self.request;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let observed = self.cluster.read(self.target).await?;
            if observed.images.get(request.container).map(String::as_str) == Some(previous) {
                return Ok(Since::change(&observed));
            }
            // The image rolled back from is the "previous" one of this change.
            let mut annotations = annotations(request, request.image);
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
            match self.cluster.set_image(self.target, change).await {
                Ok(after) => return Ok(Since::change(&after)),
                Err(ClusterError::Conflict(_)) if attempt < CONFLICT_RETRIES => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

fn rollback_failed(reason: &str, why: String) -> Outcome {
    Outcome::Failed {
        reason: format!("{reason}; the rollback to the previous image also failed: {why}"),
    }
}
