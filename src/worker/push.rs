//! A service's push stage: once per tag. A tag deploybot already pushed keeps its first
//! digest (`pushed_tags` in the store): a retry, resume or re-run of the same commit reuses it
//! instead of pushing again, and a tag pushed from another commit is refused. An image already
//! in the registry (an unchanged service) gets its tag there, by a copy of its manifest.

use std::time::Duration;

use super::image::{repository_of, PushSource};
use super::job::{log_mask, with_timeout, Failure};
use super::runner::{JobContext, Runner};
use crate::deploy::Cluster;
use crate::domain::{RefKind, StageName, StageState};
use crate::executor::{ExecError, Executor, PushSpec, RegistryAuth};
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
        push: Push<'_>,
    ) -> Result<(), Failure> {
        let (job, reference) = (cx.job, push.reference);
        if !cx.pushes {
            // Built, and by policy not pushed: that is this service's success.
            let words = if job.git_ref.kind() == RefKind::Pull {
                format!(
                    "Built {reference} for {}; never pushed",
                    job.git_ref.label()
                )
            } else {
                format!(
                    "Built {reference}; not pushed ({} is not a pushing ref)",
                    job.git_ref.name()
                )
            };
            let reports = cx.status(&service.name, StatusState::Success, &words);
            let update = StageUpdate::new(&service.name, StageName::Push, StageState::Skipped);
            self.stage_with(job.id, update, reports).await;
            return Ok(());
        }
        let update = StageUpdate::new(&service.name, StageName::Push, StageState::Running);
        self.stage(job.id, update).await;
        let input = push.input.map(str::to_owned);
        let digest = self.pushed(cx, service, push).await?;
        let pushed = format!("{reference}@{digest}");
        let reports = if cx.deploys(service) {
            let words = format!("Pushed {pushed}; deploying next");
            cx.status(&service.name, StatusState::Pending, &words)
        } else {
            let words = format!("Pushed {pushed}");
            cx.status(&service.name, StatusState::Success, &words)
        };
        let (id, name, reference) = (job.id, service.name.to_string(), reference.to_owned());
        let (project, in_registry) = (
            job.project.clone(),
            format!("{}@{digest}", repository_of(&reference)),
        );
        // Nothing deploys an image whose push is not on record.
        self.record_stage(
            &service.name,
            StageName::Push,
            StageState::Success,
            reports,
            move |jobs, reports| {
                jobs.record_push(id, &name, &reference, &digest, reports)?;
                // A later release of the same inputs copies this in the registry; without the
                // note it is built again, so its failure fails nothing.
                if let Some(input) = input {
                    if let Err(e) = jobs.record_built_push(&project, &input, &in_registry) {
                        tracing::warn!(error = %e, "Could not note where the image was pushed");
                    }
                }
                Ok(())
            },
        )
        .await
        .map_err(|e| Failure {
            stage: StageName::Push,
            exit_code: None,
            reason: format!("pushed {pushed}, but could not record it: {e}"),
        })
    }

    /// The tag's digest: the one it was first pushed with (same commit), or a fresh push.
    async fn pushed(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        push: Push<'_>,
    ) -> Result<String, Failure> {
        let reference = push.reference;
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
            None => with_timeout(
                push.timeout,
                self.send((cx.job.id, &service.name), reference, push.source, &sink),
            )
            .await
            .map_err(|e| fail(log_mask(cx.log, &e.to_string())))?,
        };
        sink.note(&format!("pushed {reference}@{digest}"));
        Ok(digest)
    }

    /// Puts the image in the registry under `reference`: the engine pushes it, or the
    /// registry copies the manifest of an image already there.
    async fn send(
        &self,
        (job, service): (i64, &str),
        reference: &str,
        source: PushSource,
        sink: &dyn crate::executor::LogSink,
    ) -> Result<String, ExecError> {
        match (source, &self.registry) {
            (PushSource::Copy { repository, digest }, Some(registry)) => {
                let (name, tag) = name_and_tag(&repository, reference);
                sink.line(&format!("copying {repository}@{digest} to the tag {tag}"));
                crate::executor::with_push_retries(sink, || async {
                    registry
                        .copy_tag(name, &digest, tag)
                        .await
                        .map_err(|e| ExecError::Push {
                            reference: reference.to_owned(),
                            reason: e.to_string(),
                        })?;
                    Ok(digest.clone())
                })
                .await
            }
            _ => {
                let auth = self.registry_auth();
                let spec = PushSpec {
                    job,
                    service,
                    reference,
                    auth: auth.as_ref(),
                };
                self.executor.push_image(&spec, sink).await
            }
        }
    }

    /// The registry's credentials, in the executor's terms, when a password is configured.
    pub(super) fn registry_auth(&self) -> Option<RegistryAuth> {
        let registry = self.settings.registry.as_ref()?;
        registry.password.as_ref().map(|password| RegistryAuth {
            server: registry.address.clone(),
            username: registry.username.clone(),
            password: password.clone(),
        })
    }
}

/// What the push stage pushes: the tag's reference, the build inputs it came from (recorded
/// with where it lands), where the image comes from, and how long it may take.
pub(super) struct Push<'a> {
    pub(super) reference: &'a str,
    pub(super) input: Option<&'a str>,
    pub(super) source: PushSource,
    pub(super) timeout: Duration,
}

/// The repository's name in the registry (`team/web`, without the registry's address) and
/// the tag of `reference` (`registry/team/web:tag`).
fn name_and_tag<'a>(repository: &'a str, reference: &'a str) -> (&'a str, &'a str) {
    let name = repository
        .split_once('/')
        .map_or(repository, |(_, name)| name);
    let tag = reference
        .strip_prefix(repository)
        .and_then(|rest| rest.strip_prefix(':'))
        .unwrap_or("latest");
    (name, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_names_its_repository_and_tag_in_the_registry() {
        assert_eq!(
            name_and_tag("127.0.0.1:5000/team/web", "127.0.0.1:5000/team/web:v1.2.3"),
            ("team/web", "v1.2.3")
        );
        assert_eq!(
            repository_of("127.0.0.1:5000/team/web:v1"),
            "127.0.0.1:5000/team/web"
        );
    }
}
