//! The change itself: read the Deployment, record what runs now as the previous image, then
//! set the container's image conditionally on the version read (a 409 is read again and
//! retried), with annotations that say what the change is and why; or, when the container
//! already runs the image's digest under another tag, set only those annotations.

use std::collections::BTreeMap;

use super::{Request, Rollout};
use crate::deploy::cluster::{Cluster, ClusterError, DeploymentRef, ImageChange, Observed};
use crate::deploy::health::Since;
use crate::deploy::image::same_content;
use crate::store::{DeployRow, DeployUpdate, RolloutCause, RolloutState};

/// How often a 409 conflict is retried with a fresh read before the rollout fails.
pub(super) const CONFLICT_RETRIES: usize = 5;

/// What a rollout sent to the Deployment.
pub(super) enum Sent {
    /// The new image is on the server (sent now, or found in place): wait for it. With the
    /// record's id, what to wait for and the image that ran before.
    Image {
        id: i64,
        since: Since,
        previous: Option<String>,
    },
    /// The Deployment already ran the image's digest (`running`, under another tag): only its
    /// own annotations were changed, so there is nothing to wait for.
    Annotations { id: i64, running: String },
}

impl<C: Cluster> Rollout<'_, C> {
    /// Reads the Deployment, records the rollout with the image it runs now (the previous
    /// image is on record before the change is sent: one write), then sends the change
    /// against the version read. A 409 means someone changed the Deployment in between: read
    /// again, record again, retry. An error comes with the record's id if there is one.
    pub(super) async fn change_image(
        &self,
        record: Option<&DeployRow>,
    ) -> Result<Sent, (Option<i64>, ClusterError)> {
        let mut id = record.map(|r| r.id);
        // What ran before, as recorded before a patch that a restart interrupted.
        let recorded_previous = record.and_then(|r| r.previous_image.clone());
        let mut attempt = 0;
        loop {
            attempt += 1;
            let observed = self.cluster.read(self.target).await.map_err(|e| (id, e))?;
            let current = container_image(&observed, self.target, self.request.container)
                .map_err(|e| (id, e))?;
            let already = current == self.request.image;
            id = self.record_read(id, &observed, &current).await;
            let Some(recorded) = id else {
                return Err((None, not_recorded(self.target)));
            };
            if already {
                // The change in place is ours (or the same image): a verdict on it counts.
                let since = Since {
                    generation: observed.generation,
                    stale_verdict: None,
                };
                let previous = recorded_previous.or(Some(current));
                return Ok(Sent::Image {
                    id: recorded,
                    since,
                    previous,
                });
            }
            match self.send(recorded, &observed, &current).await {
                Ok(sent) => return Ok(sent),
                Err(ClusterError::Conflict(_)) if attempt < CONFLICT_RETRIES => {
                    self.note(&format!(
                        "{} changed since it was read (409); reading again",
                        self.target
                    ));
                }
                Err(e) => return Err((id, e)),
            }
        }
    }

    /// Sends the change against the version `observed`, over `current`: only the annotations
    /// when `current` is the same image under another tag (a new tag in the pod template
    /// would restart every pod for nothing), else the new image, recorded as `patched`.
    async fn send(
        &self,
        id: i64,
        observed: &Observed,
        current: &str,
    ) -> Result<Sent, ClusterError> {
        if same_content(current, self.request.image) {
            self.annotate(observed, current).await?;
            let running = current.to_owned();
            return Ok(Sent::Annotations { id, running });
        }
        let after = self.patch(observed, current).await?;
        let update = DeployUpdate {
            generation: Some(after.generation),
            patched: true,
            ..DeployUpdate::to(RolloutState::Patched)
        };
        self.deployer.update(id, update).await;
        Ok(Sent::Image {
            id,
            since: Since::change(&after),
            previous: Some(current.to_owned()),
        })
    }

    /// Records what was read, before anything is sent: `planned` with the image running now as
    /// the previous one, or `patched` when the new image is already in place. Answers the
    /// record's id (`id`, or a new record's); None if nothing could be recorded.
    async fn record_read(
        &self,
        id: Option<i64>,
        observed: &Observed,
        current: &str,
    ) -> Option<i64> {
        let already = current == self.request.image;
        let (state, generation) = if already {
            // In place: sent before a restart, or the same image again.
            self.note(&format!(
                "{} already has {}; not patching",
                self.target, self.request.image
            ));
            (RolloutState::Patched, Some(observed.generation))
        } else {
            (RolloutState::Planned, None)
        };
        match id {
            Some(id) => {
                let update = DeployUpdate {
                    // A resumed record keeps the previous image it has.
                    previous_image: (!already).then(|| current.to_owned()),
                    generation,
                    ..DeployUpdate::to(state)
                };
                self.deployer.update(id, update).await;
                Some(id)
            }
            None => {
                let previous = Some(current.to_owned());
                self.deployer
                    .plan(self.request, state, previous, generation, None)
                    .await
            }
        }
    }

    /// Writes this release on the Deployment's own annotations, against the version
    /// `observed`, leaving its pod template (which runs `current`) as it is.
    async fn annotate(&self, observed: &Observed, current: &str) -> Result<(), ClusterError> {
        self.note(&format!(
            "{} already runs {current} (the same digest); writing {} on its annotations, not on its pods",
            self.target, self.request.tag
        ));
        let annotations = annotations(self.request, current);
        self.cluster
            .annotate(self.target, &annotations, &observed.resource_version)
            .await?;
        Ok(())
    }

    /// Sets the new image in place of `current`, against the version `observed`.
    async fn patch(&self, observed: &Observed, current: &str) -> Result<Observed, ClusterError> {
        let annotations = annotations(self.request, current);
        self.note(&format!(
            "{}: container {} {current} -> {}",
            self.target, self.request.container, self.request.image
        ));
        let change = ImageChange {
            container: self.request.container,
            image: self.request.image,
            annotations: &annotations,
            resource_version: &observed.resource_version,
        };
        self.cluster.set_image(self.target, change).await
    }
}

fn not_recorded(target: &DeploymentRef) -> ClusterError {
    ClusterError::Other {
        verb: "patch",
        target: target.clone(),
        message: "the deploy could not be recorded; nothing was changed".to_owned(),
    }
}

pub(super) fn container_image(
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
pub(super) fn annotations(request: &Request<'_>, previous: &str) -> BTreeMap<String, String> {
    // A sha is hex; `get` keeps even a malformed one from panicking on a char boundary.
    let short = request.sha.get(..12).unwrap_or(request.sha);
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
