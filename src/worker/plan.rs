//! For an executor that builds away from deploybot's checkout (a pod): the service's whole
//! build, checked and handed over before its first step. The Dockerfile built is the one the
//! commit has, checked against the project's policy here; the steps are those `steps.rs` runs,
//! in the same order; the image is pushed by the executor only when the push stage would push
//! it (never a tag deploybot already pushed).

use super::image::{check_dockerfile, image_failure};
use super::job::Failure;
use super::runner::{JobContext, Runner};
use super::steps::ordered_steps;
use crate::deploy::Cluster;
use crate::domain::{StageName, StageState};
use crate::executor::{Executor, ImagePlan, PushPlan, ServicePlan, Source};
use crate::pipeline::{Service, Stage};
use crate::store::StageUpdate;

impl<E: Executor, C: Cluster> Runner<E, C> {
    /// Sets up `service`'s build with the executor, when it builds elsewhere.
    pub(super) async fn prepare_service(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        reference: &str,
    ) -> Result<(), Failure> {
        if E::BUILDS_IN_CHECKOUT {
            return Ok(());
        }
        let prepared = match self.plan(cx, service, reference).await {
            Ok(plan) => self.executor.prepare(&plan).await.map_err(|e| Failure {
                stage: first_stage(service),
                exit_code: None,
                reason: e.to_string(),
            }),
            Err(failure) => Err(failure),
        };
        if let Err(failure) = &prepared {
            self.skip_before(cx, service, failure.stage).await;
        }
        prepared
    }

    async fn plan(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        reference: &str,
    ) -> Result<ServicePlan, Failure> {
        let job = cx.job;
        let path = match service.context.as_str() {
            "." => service.dockerfile.clone(),
            context => format!("{context}/{}", service.dockerfile),
        };
        let dockerfile = cx
            .tree
            .read_text(&path, super::policy::MAX_DEFINITION_BYTES)
            .map_err(|e| image_failure(format!("{path}: {e}")))?
            .ok_or_else(|| {
                image_failure(format!(
                    "{path} is not in the commit (the Kubernetes executor builds the committed Dockerfile)"
                ))
            })?;
        check_dockerfile(cx, service, &dockerfile)?;
        let mut steps = Vec::new();
        for ordered in ordered_steps(service) {
            let toolchain = self
                .settings
                .toolchain(ordered.image)
                .ok_or_else(|| Failure {
                    stage: StageName::from(ordered.step.stage),
                    exit_code: None,
                    reason: format!("toolchain \"{}\" is no longer configured", ordered.image),
                })?;
            steps.push(self.step_spec(cx, service, &ordered, toolchain));
        }
        let already_pushed = {
            let reference = reference.to_owned();
            self.blocking(move |jobs| jobs.pushed_digest(&reference))
                .await
                .ok()
                .flatten()
                .is_some()
        };
        let push = (cx.pushes && !already_pushed).then(|| PushPlan {
            reference: reference.to_owned(),
        });
        Ok(ServicePlan {
            job: job.id,
            service: service.name.to_string(),
            source: Source {
                url: cx.project.clone_url.clone(),
                git_ref: job.git_ref.to_string(),
                sha: job.sha.to_string(),
                auth_header: cx.project.git_credentials.as_ref().map(|c| c.header()),
            },
            steps,
            image: ImagePlan {
                context: service.context.clone(),
                dockerfile,
                tag: reference.to_owned(),
                labels: self.labels(cx),
                network: cx.network(),
                limits: self.settings.worker.limits,
            },
            // A fork's build gets no credential: its `FROM` images must be public.
            registry_auth: (!cx.fork).then(|| self.registry_auth()).flatten(),
            push,
        })
    }

    /// The service's stages before `failed` did not run: they say so instead of staying
    /// pending.
    async fn skip_before(&self, cx: &JobContext<'_>, service: &Service, failed: StageName) {
        for stage in [Stage::Check, Stage::Compile] {
            let name = StageName::from(stage);
            if name == failed || !service.steps.iter().any(|s| s.stage == stage) {
                continue;
            }
            let update = StageUpdate {
                detail: Some("not run: the build could not be set up"),
                ..StageUpdate::new(&service.name, name, StageState::Skipped)
            };
            self.stage(cx.job.id, update).await;
        }
    }
}

/// The stage a service's build starts with.
fn first_stage(service: &Service) -> StageName {
    [Stage::Check, Stage::Compile]
        .into_iter()
        .find(|stage| service.steps.iter().any(|s| s.stage == *stage))
        .map_or(StageName::Image, StageName::from)
}
