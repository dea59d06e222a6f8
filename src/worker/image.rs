//! A service's image stage: its build context is read from the checkout only (a tar made by
//! `checkout::Tree`, so a link out of the checkout fails the stage naming it), its Dockerfile
//! is checked against the project's policy as the engine will see it, and the image is built
//! with the worker's limits and no network unless the project may use one. Or, when deploybot
//! itself recorded an image built from exactly these inputs for this project, that image is
//! tagged instead.

use std::collections::BTreeMap;

use super::job::Failure;
use super::policy;
use super::runner::{JobContext, Runner};
use crate::deploy::Cluster;
use crate::domain::{StageName, StageState};
use crate::executor::{BuildSpec, Executor, JOB_LABEL};
use crate::pipeline::dockerfile::Dockerfile;
use crate::pipeline::{Service, Stage};
use crate::report::StatusState;
use crate::store::StageUpdate;

/// How an image of unchanged inputs is had again.
pub(super) enum Reuse {
    /// The engine still has it: tag it (the push stage pushes it: the same digest).
    Local { image_id: String },
    /// It is in the job's registry repository: the push stage gives it the tag there.
    InRegistry { repository: String, digest: String },
}

/// Where the push stage gets the tag's image from.
pub(super) enum PushSource {
    /// The engine pushes the local image.
    Engine,
    /// The registry copies the manifest of `repository@digest` to the tag.
    Copy { repository: String, digest: String },
}

/// `registry/name` of `registry/name:tag`.
pub(super) fn repository_of(reference: &str) -> &str {
    let slash = reference.rfind('/').unwrap_or(0);
    match reference[slash..].rfind(':') {
        Some(colon) => &reference[..slash + colon],
        None => reference,
    }
}

pub(super) fn image_failure(reason: String) -> Failure {
    Failure {
        stage: StageName::Image,
        exit_code: None,
        reason,
    }
}

impl<E: Executor, C: Cluster> Runner<E, C> {
    /// How the image deploybot recorded for these inputs can be had again for `reference`, if
    /// it can: in the registry, when the job pushes there and the image was pushed to the same
    /// repository (no engine needed); else from the engine, when it still has it (it may have
    /// been pruned: then the service is built again).
    pub(super) async fn recorded_image(
        &self,
        cx: &JobContext<'_>,
        input: &str,
        reference: &str,
    ) -> Option<Reuse> {
        let (project, input) = (cx.job.project.clone(), input.to_owned());
        let built = self
            .blocking(move |jobs| jobs.built_image(&project, &input))
            .await
            .ok()
            .flatten()?;
        let in_registry = built.pushed.as_deref().and_then(|p| p.split_once('@'));
        if let (true, Some(_), Some((repository, digest))) =
            (cx.pushes, &self.registry, in_registry)
        {
            if repository == repository_of(reference) {
                return Some(Reuse::InRegistry {
                    repository: repository.to_owned(),
                    digest: digest.to_owned(),
                });
            }
        }
        let image_id = self
            .executor
            .image_id(&built.image_id)
            .await
            .ok()
            .flatten()?;
        Some(Reuse::Local { image_id })
    }

    /// Builds the service's image as `reference`; records it under `input` for reuse.
    pub(super) async fn image_stage(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        reference: &str,
        input: Option<&str>,
    ) -> Result<(), Failure> {
        let job = cx.job;
        let update = StageUpdate::new(&service.name, StageName::Image, StageState::Running);
        self.stage(job.id, update).await;
        let sink = cx.log.stage(&service.name, StageName::Image);
        let context_tar = self
            .checkouts
            .scratch(job.id, &format!("{}.context.tar", service.name));
        if E::BUILDS_IN_CHECKOUT {
            let size = self.context_tar(cx, service, &context_tar).await?;
            sink.note(&format!(
                "build context {} ({size} bytes){}",
                service.context,
                if cx.network() {
                    "; network on"
                } else {
                    "; network off"
                }
            ));
        }
        let build = BuildSpec {
            job: job.id,
            service: service.name.to_string(),
            context_tar: context_tar.clone(),
            dockerfile: service.dockerfile.clone(),
            tag: reference.to_owned(),
            labels: self.labels(cx),
            network: cx.network(),
            limits: self.settings.worker.limits,
            timeout: self.settings.worker.step_timeout,
        };
        let built = self.executor.build_image(&build, &sink, cx.cancel).await;
        let _ = tokio::fs::remove_file(&context_tar).await;
        let image_id = built.map_err(|e| image_failure(e.to_string()))?;
        sink.note(&format!("built {reference} ({image_id})"));
        let (id, name, reference_owned) = (job.id, service.name.clone(), reference.to_owned());
        let (project, input) = (job.project.clone(), input.map(str::to_owned));
        let image = image_id.clone();
        let _ = self
            .blocking(move |jobs| {
                jobs.record_image(id, &name, &reference_owned, None)?;
                match input {
                    Some(input) => jobs.record_built(id, &project, &input, &image),
                    None => Ok(()),
                }
            })
            .await;
        let words = format!("Built {reference}; pushing");
        self.image_done(cx, service, &words, reference).await;
        Ok(())
    }

    /// Writes the service's build context from the checkout to `into` and checks its
    /// Dockerfile, as the engine will see it, against the project's policy; returns its size.
    async fn context_tar(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        into: &std::path::Path,
    ) -> Result<u64, Failure> {
        let made = {
            let (tree, context, dockerfile, into) = (
                cx.tree.clone(),
                service.context.clone(),
                service.dockerfile.clone(),
                into.to_path_buf(),
            );
            let limit = self.settings.worker.max_context_bytes;
            tokio::task::spawn_blocking(move || {
                tree.context_tar(&context, &dockerfile, &into, limit)
            })
            .await
        };
        let context = match made {
            Ok(Ok(context)) => context,
            Ok(Err(e)) => return Err(image_failure(format!("build context: {e}"))),
            Err(e) => return Err(image_failure(e.to_string())),
        };
        check_dockerfile(cx, service, &context.dockerfile)?;
        Ok(context.size)
    }

    /// Same inputs as an image deploybot built before: tag that image instead of building.
    pub(super) async fn reuse_image(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        reuse: Reuse,
        reference: &str,
    ) -> Result<PushSource, Failure> {
        let job = cx.job;
        for stage in [Stage::Check, Stage::Compile] {
            if service.steps.iter().any(|s| s.stage == stage) {
                let update = StageUpdate {
                    detail: Some("unchanged inputs: the image built from them is reused"),
                    ..StageUpdate::new(&service.name, stage.into(), StageState::Skipped)
                };
                self.stage(job.id, update).await;
            }
        }
        let (note, source) = match reuse {
            Reuse::Local { image_id } => {
                self.executor
                    .tag(&image_id, reference)
                    .await
                    .map_err(|e| image_failure(e.to_string()))?;
                let note = format!("unchanged inputs: reusing {image_id} as {reference}");
                (note, PushSource::Engine)
            }
            Reuse::InRegistry { repository, digest } => {
                let note = format!(
                    "unchanged inputs: reusing {repository}@{digest}, tagged in the registry"
                );
                (note, PushSource::Copy { repository, digest })
            }
        };
        cx.log.stage(&service.name, StageName::Image).note(&note);
        let (id, name, reference_owned) = (job.id, service.name.clone(), reference.to_owned());
        let _ = self
            .blocking(move |jobs| jobs.record_image(id, &name, &reference_owned, None))
            .await;
        // The status says so: nothing changed in this service, its image is reused.
        let words = format!("Unchanged: reusing its image as {reference}; pushing");
        self.image_done(cx, service, &words, &note).await;
        Ok(source)
    }

    /// The image stage's success; the service's status (`words`) says the push is next.
    async fn image_done(&self, cx: &JobContext<'_>, service: &Service, words: &str, detail: &str) {
        let reports = if cx.pushes {
            cx.status(&service.name, StatusState::Pending, words)
        } else {
            Vec::new()
        };
        let update = StageUpdate {
            detail: Some(detail),
            ..StageUpdate::new(&service.name, StageName::Image, StageState::Success)
        };
        self.stage_with(cx.job.id, update, reports).await;
    }

    /// The OCI labels every image carries (the source is the project's own repository URL).
    pub(super) fn labels(&self, cx: &JobContext<'_>) -> BTreeMap<String, String> {
        let job = cx.job;
        BTreeMap::from([
            (
                "org.opencontainers.image.revision".to_owned(),
                job.sha.to_string(),
            ),
            (
                "org.opencontainers.image.source".to_owned(),
                cx.project.clone_url.clone(),
            ),
            // The push's time, not the build's: a retried build of the same push is the same image.
            (
                "org.opencontainers.image.created".to_owned(),
                crate::store::timestamp(cx.event.received_at),
            ),
            (JOB_LABEL.to_owned(), job.id.to_string()),
        ])
    }
}

/// The Dockerfile against the project's policy (no `RUN` unless allowed), named as the
/// repository has it.
pub(super) fn check_dockerfile(
    cx: &JobContext<'_>,
    service: &Service,
    dockerfile: &str,
) -> Result<(), Failure> {
    let shown = match service.context.as_str() {
        "." => service.dockerfile.clone(),
        context => format!("{context}/{}", service.dockerfile),
    };
    policy::check_dockerfile(&Dockerfile::parse(dockerfile), &shown, cx.project)
        .map_err(image_failure)
}
