//! A rollout from where its record says it is to an end: a change already sent is waited for,
//! a rollback under way is finished, anything else is checked against what is in place and
//! patched (or, for the digest already running, only annotated: the end); then the wait, and
//! on failure the rollback.

use tokio::time::Instant;

use super::patch::Sent;
use super::wait::{replaced, Waited};
use super::{Outcome, Rollout};
use crate::deploy::cluster::{Cluster, ClusterError};
use crate::deploy::health::Since;
use crate::store::{DeployRow, RolloutState};

/// Where a rollout picks up.
enum Start {
    /// A change of ours is on the server: wait for it (record `id`, the image before it).
    Wait {
        id: i64,
        since: Since,
        previous: Option<String>,
    },
    /// It ended before any wait (skipped, unchanged, a rollback finished, a failed patch).
    Ended { id: Option<i64>, outcome: Outcome },
}

impl<C: Cluster> Rollout<'_, C> {
    /// Drives the rollout from where the record says it is; answers the record's id (None if
    /// nothing could be recorded) and the outcome.
    pub(super) async fn drive(&self, record: Option<DeployRow>) -> (Option<i64>, Outcome) {
        // The deadline covers the patch too, not only the wait.
        let deadline = Instant::now() + self.request.environment.rollout_timeout;
        let (id, since, previous) = match self.start(record).await {
            Start::Wait {
                id,
                since,
                previous,
            } => (id, since, previous),
            Start::Ended { id, outcome } => return (id, outcome),
        };
        self.note(&format!("waiting for {} to roll out", self.target));
        let ours = (self.request.container, self.request.image);
        let reason = match self.wait(&since, ours, deadline).await {
            Ok(Waited::Complete) => {
                self.note(&format!(
                    "{} is running {}",
                    self.target, self.request.image
                ));
                let image = self.request.image.to_owned();
                return (Some(id), Outcome::Deployed { image });
            }
            Ok(Waited::Replaced(image)) => {
                let reason = replaced(self.target, self.request.container, &image);
                return (Some(id), Outcome::Failed { reason });
            }
            Ok(Waited::Failed(reason)) => reason,
            Ok(Waited::TimedOut(last)) => format!(
                "not healthy within {}s ({last})",
                self.request.environment.rollout_timeout.as_secs()
            ),
            Err(e) => return (Some(id), failed(e)),
        };
        (Some(id), self.after_failure(id, previous, reason).await)
    }

    /// Resumes what the record says was under way, or checks and sends the change.
    async fn start(&self, record: Option<DeployRow>) -> Start {
        match record {
            Some(record) if record.state == RolloutState::Patched => {
                self.note("resuming: the change was already sent; waiting for the rollout");
                let since = Since {
                    generation: record.generation.unwrap_or(0),
                    stale_verdict: None,
                };
                Start::Wait {
                    id: record.id,
                    since,
                    previous: record.previous_image.clone(),
                }
            }
            Some(record) if record.state == RolloutState::RollingBack => {
                let reason = record.reason.clone().unwrap_or_default();
                let previous = record.previous_image.clone().unwrap_or_default();
                self.note("resuming the rollback");
                let outcome = self.roll_back(record.id, &previous, reason).await;
                Start::Ended {
                    id: Some(record.id),
                    outcome,
                }
            }
            record => {
                if record.is_none() && !self.request.by_hand() {
                    let newer = self
                        .deployer
                        .newer_in_place(self.request, self.target)
                        .await;
                    if let Some(newer) = newer {
                        self.note(&newer);
                        let outcome = Outcome::Skipped { reason: newer };
                        return Start::Ended { id: None, outcome };
                    }
                }
                match self.change_image(record.as_ref()).await {
                    Ok(Sent::Image {
                        id,
                        since,
                        previous,
                    }) => Start::Wait {
                        id,
                        since,
                        previous,
                    },
                    Ok(Sent::Annotations { id, running }) => Start::Ended {
                        id: Some(id),
                        outcome: Outcome::Unchanged { running },
                    },
                    Err((id, e)) => Start::Ended {
                        id,
                        outcome: failed(e),
                    },
                }
            }
        }
    }

    /// A rollout that failed for `reason`: explained by its pods, then rolled back to
    /// `previous` (a release only, and only to another image) or ended as failed.
    async fn after_failure(&self, id: i64, previous: Option<String>, reason: String) -> Outcome {
        let ours = (self.request.container, self.request.image);
        let reason = self.explained(ours, reason).await;
        self.note(&format!("rollout failed: {reason}"));
        match previous {
            Some(previous) if !self.request.by_hand() && previous != self.request.image => {
                self.roll_back(id, &previous, reason).await
            }
            _ => Outcome::Failed { reason },
        }
    }
}

fn failed(e: ClusterError) -> Outcome {
    Outcome::Failed {
        reason: e.to_string(),
    }
}
