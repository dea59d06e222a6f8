//! A service's push stage: once per tag. A tag deploybot already pushed keeps its first
//! digest (`pushed_tags` in the store): a retry, resume or re-run of the same commit reuses it
//! instead of pushing again, and a tag pushed from another commit is refused.

use std::time::Duration;

use super::job::{log_mask, with_timeout, Failure};
use super::runner::{JobContext, Runner};
use crate::docker::{Executor, RegistryAuth};
use crate::pipeline::Service;
use crate::report::StatusState;

impl<E: Executor> Runner<E> {
    /// Push, once per tag: a retry of a job that already pushed reuses that digest, and a
    /// tag pushed from another commit is refused.
    pub(super) async fn push_stage(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        reference: &str,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let (job, log) = (cx.job, cx.log);
        if !cx.pushes {
            // Built, and by policy not pushed: that is this service's success.
            let words = format!(
                "Built {reference}; not pushed ({} is not a pushing ref)",
                job.ref_name
            );
            let reports = cx.status(&service.name, StatusState::Success, &words);
            self.stage_with(
                job.id,
                &service.name,
                "push",
                "skipped",
                None,
                None,
                reports,
            )
            .await;
            return Ok(());
        }
        self.stage(job.id, &service.name, "push", "running", None, None)
            .await;
        let sink = log.stage(&service.name, "push");
        let earlier = {
            let reference = reference.to_owned();
            self.blocking(move |jobs| jobs.pushed_digest(&reference))
                .await
                .ok()
                .flatten()
        };
        let digest = match earlier {
            Some((digest, sha)) if sha == job.sha => {
                sink.note(&format!(
                    "{reference} was already pushed as {digest}; not pushing again"
                ));
                digest
            }
            Some((digest, sha)) => {
                return Err(Failure {
                    stage: "push",
                    exit_code: None,
                    reason: format!(
                        "{reference} was already pushed from commit {} as {digest}; pushed tags are immutable (use a new tag)",
                        &sha[..12.min(sha.len())]
                    ),
                });
            }
            None => {
                let auth = self.settings.registry.as_ref().and_then(|r| {
                    r.password.as_ref().map(|password| RegistryAuth {
                        server: r.address.clone(),
                        username: r.username.clone(),
                        password: password.clone(),
                    })
                });
                with_timeout(
                    timeout,
                    self.executor.push_image(reference, auth.as_ref(), &sink),
                )
                .await
                .map_err(|e| Failure {
                    stage: "push",
                    exit_code: None,
                    reason: log_mask(log, &e.to_string()),
                })?
            }
        };
        sink.note(&format!("pushed {reference}@{digest}"));
        let pushed = format!("{reference}@{digest}");
        let reports = if cx.deploys(service) {
            let words = format!("Pushed {pushed}; deploying next");
            cx.status(&service.name, StatusState::Pending, &words)
        } else {
            cx.status(
                &service.name,
                StatusState::Success,
                &format!("Pushed {pushed}"),
            )
        };
        let (id, name, reference) = (job.id, service.name.clone(), reference.to_owned());
        self.record_stage(
            &service.name,
            "push",
            "success",
            reports,
            move |jobs, reports| jobs.record_push(id, &name, &reference, &digest, reports),
        )
        .await;
        Ok(())
    }
}
