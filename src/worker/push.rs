//! A service's push stage: once per tag. A tag deploybot already pushed keeps its first
//! digest (`pushed_tags` in the store): a retry, resume or re-run of the same commit reuses it
//! instead of pushing again, and a tag pushed from another commit is refused.

use std::time::Duration;

use super::job::{log_mask, with_timeout, Failure};
use super::runner::{JobContext, Runner};
use crate::deploy::Cluster;
use crate::docker::{Executor, RegistryAuth};
use crate::domain::{StageName, StageState};
use crate::pipeline::Service;
use crate::report::StatusState;
use crate::store::StageUpdate;

impl<E: Executor, C: Cluster> Runner<E, C> {
    /// Push, once per tag: a retry of a job that already pushed reuses that digest, and a
    /// tag pushed from another commit is refused.
    pub(super) async fn push_stage(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        reference: &str,
        timeout: Duration,
    ) -> Result<(), Failure> {
        let job = cx.job;
        if !cx.pushes {
            // Built, and by policy not pushed: that is this service's success.
            let words = format!(
                "Built {reference}; not pushed ({} is not a pushing ref)",
                job.git_ref.name()
            );
            let reports = cx.status(&service.name, StatusState::Success, &words);
            let update = StageUpdate::new(&service.name, StageName::Push, StageState::Skipped);
            self.stage_with(job.id, update, reports).await;
            return Ok(());
        }
        let update = StageUpdate::new(&service.name, StageName::Push, StageState::Running);
        self.stage(job.id, update).await;
        let digest = self.pushed(cx, service, reference, timeout).await?;
        let pushed = format!("{reference}@{digest}");
        let reports = if cx.deploys(service) {
            let words = format!("Pushed {pushed}; deploying next");
            cx.status(&service.name, StatusState::Pending, &words)
        } else {
            let words = format!("Pushed {pushed}");
            cx.status(&service.name, StatusState::Success, &words)
        };
        let (id, name, reference) = (job.id, service.name.clone(), reference.to_owned());
        self.record_stage(
            &service.name,
            StageName::Push,
            StageState::Success,
            reports,
            move |jobs, reports| jobs.record_push(id, &name, &reference, &digest, reports),
        )
        .await;
        Ok(())
    }

    /// The tag's digest: the one it was first pushed with (same commit), or a fresh push.
    async fn pushed(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        reference: &str,
        timeout: Duration,
    ) -> Result<String, Failure> {
        let fail = |reason: String| Failure {
            stage: StageName::Push,
            exit_code: None,
            reason,
        };
        let sink = cx.log.stage(&service.name, StageName::Push);
        let earlier = {
            let reference = reference.to_owned();
            self.blocking(move |jobs| jobs.pushed_digest(&reference))
                .await
                .ok()
                .flatten()
        };
        let digest = match earlier {
            Some((digest, sha)) if sha == cx.job.sha.as_ref() => {
                sink.note(&format!(
                    "{reference} was already pushed as {digest}; not pushing again"
                ));
                digest
            }
            Some((digest, sha)) => {
                let commit: String = sha.chars().take(12).collect();
                return Err(fail(format!(
                    "{reference} was already pushed from commit {commit} as {digest}; pushed tags are immutable (use a new tag)"
                )));
            }
            None => {
                let auth = self.registry_auth();
                let push = self.executor.push_image(reference, auth.as_ref(), &sink);
                with_timeout(timeout, push)
                    .await
                    .map_err(|e| fail(log_mask(cx.log, &e.to_string())))?
            }
        };
        sink.note(&format!("pushed {reference}@{digest}"));
        Ok(digest)
    }

    /// The registry's credentials, in the executor's terms, when a password is configured.
    fn registry_auth(&self) -> Option<RegistryAuth> {
        let registry = self.settings.registry.as_ref()?;
        registry.password.as_ref().map(|password| RegistryAuth {
            server: registry.address.clone(),
            username: registry.username.clone(),
            password: password.clone(),
        })
    }
}
