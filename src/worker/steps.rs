//! A service's check and compile stages: each step in its toolchain's image, as the
//! toolchain's non-root user, with every capability dropped, the toolchain's limits, the
//! network only where the step asks and its project may (the policy checked that), and the
//! dependency caches of the ref's trust class. After each step no file in the workspace keeps
//! a set-user-ID or set-group-ID bit, and a step's artifacts must be files inside the checkout.

use std::collections::BTreeMap;

use super::job::{cache_volume, Failure};
use super::runner::{JobContext, Runner};
use crate::config::Toolchain;
use crate::deploy::Cluster;
use crate::domain::{StageName, StageState};
use crate::executor::{Executor, StepSpec};
use crate::pipeline::{Service, Stage, Step};
use crate::report::StatusState;
use crate::store::StageUpdate;

/// One run of a step: a step of a matrix runs once per toolchain image.
pub(super) struct OrderedStep<'a> {
    pub(super) index: usize,
    pub(super) step: &'a Step,
    pub(super) image: &'a str,
}

/// Every run of the service's steps, in the order they run: check steps, then compile steps,
/// each once per image.
pub(super) fn ordered_steps(service: &Service) -> Vec<OrderedStep<'_>> {
    let runs = [Stage::Check, Stage::Compile]
        .into_iter()
        .flat_map(|stage| {
            service
                .steps
                .iter()
                .filter(move |s| s.stage == stage)
                .flat_map(|step| step.images.iter().map(move |image| (step, image.as_str())))
        });
    runs.enumerate()
        .map(|(index, (step, image))| OrderedStep { index, step, image })
        .collect()
}

impl<E: Executor, C: Cluster> Runner<E, C> {
    /// Runs the service's check, then compile steps; stops at the first that fails.
    pub(super) async fn run_steps(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
    ) -> Result<(), Failure> {
        let ordered = ordered_steps(service);
        for stage in [Stage::Check, Stage::Compile] {
            let steps: Vec<_> = ordered.iter().filter(|s| s.step.stage == stage).collect();
            if steps.is_empty() {
                continue;
            }
            let name = StageName::from(stage);
            let update = StageUpdate::new(&service.name, name, StageState::Running);
            self.stage(cx.job.id, update).await;
            for step in steps {
                self.run_step(cx, service, step).await?;
            }
            let words = format!("{name} passed; building the image");
            let reports = cx.status(&service.name, StatusState::Pending, &words);
            let update = StageUpdate {
                exit_code: Some(0),
                ..StageUpdate::new(&service.name, name, StageState::Success)
            };
            self.stage_with(cx.job.id, update, reports).await;
        }
        Ok(())
    }

    /// One step in one toolchain image (a matrix runs it once per image).
    async fn run_step(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        ordered: &OrderedStep<'_>,
    ) -> Result<(), Failure> {
        let (step, image) = (ordered.step, ordered.image);
        let stage = StageName::from(step.stage);
        let fail = |exit_code, reason: String| Failure {
            stage,
            exit_code,
            reason,
        };
        let toolchain = self.settings.toolchain(image).ok_or_else(|| {
            fail(
                None,
                format!("toolchain \"{image}\" is no longer configured"),
            )
        })?;
        let sink = cx.log.stage(&service.name, stage);
        sink.note(&format!(
            "{stage} in {} as {} ({})",
            toolchain.image,
            toolchain.user,
            if step.network {
                "network on"
            } else {
                "network off"
            }
        ));
        let spec = self.step_spec(cx, service, ordered, toolchain);
        let run = self.executor.run_step(&spec, &sink, cx.cancel).await;
        if !E::BUILDS_IN_CHECKOUT {
            // The executor cleared set-id bits and checked the artifacts where it builds.
            let code = run.map_err(|e| fail(None, e.to_string()))?;
            return match code {
                0 => Ok(()),
                code => Err(fail(
                    Some(code),
                    self.failed_command(cx, service, toolchain, code),
                )),
            };
        }
        let stripped = {
            let tree = cx.tree.clone();
            tokio::task::spawn_blocking(move || tree.strip_set_id_bits()).await
        };
        match stripped {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => sink.note(&format!(
                "cleared the set-user-ID/set-group-ID bits the step left on {n} file(s)"
            )),
            Ok(Err(e)) => return Err(fail(None, e.to_string())),
            Err(e) => return Err(fail(None, e.to_string())),
        }
        let code = run.map_err(|e| fail(None, e.to_string()))?;
        if code != 0 {
            return Err(fail(
                Some(code),
                self.failed_command(cx, service, toolchain, code),
            ));
        }
        for artifact in &step.artifacts {
            let path = format!("{}/{artifact}", step.workdir);
            match cx.tree.is_file(&path) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(fail(
                        None,
                        format!("the step did not produce {artifact} in {}", step.workdir),
                    ))
                }
                Err(e) => return Err(fail(None, format!("artifact {e}"))),
            }
        }
        Ok(())
    }

    /// The container that runs `ordered` in `toolchain`.
    pub(super) fn step_spec(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        ordered: &OrderedStep<'_>,
        toolchain: &Toolchain,
    ) -> StepSpec {
        let (job, step) = (cx.job, ordered.step);
        let volumes: BTreeMap<String, String> = toolchain
            .caches
            .iter()
            .map(|path| (cache_volume(&job.project, cx.caches(), path), path.clone()))
            .collect();
        StepSpec {
            job: job.id,
            service: service.name.to_string(),
            image: toolchain.image.clone(),
            commands: step.commands.clone(),
            workspace: cx.workspace.to_path_buf(),
            workdir: step.workdir.clone(),
            network: step.network && cx.network(),
            user: toolchain.user.clone(),
            volumes,
            env: vec![
                ("CI".into(), "true".into()),
                ("DEPLOYBOT_REF".into(), job.git_ref.to_string()),
                ("DEPLOYBOT_SHA".into(), job.sha.to_string()),
            ],
            limits: asked_limits(step, toolchain.limits),
            reserve: step.millicpus.is_some() || step.memory_mb.is_some(),
            timeout: self.settings.worker.step_timeout,
            index: ordered.index,
            artifacts: step.artifacts.clone(),
        }
    }

    /// The script echoes each command before running it: the last one echoed failed.
    fn failed_command(
        &self,
        cx: &JobContext<'_>,
        service: &Service,
        toolchain: &Toolchain,
        code: i64,
    ) -> String {
        let failed = cx
            .log
            .tail(&service.name)
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("$ ").map(str::to_owned));
        match failed {
            Some(command) => format!("`{command}` exited with {code} (in {})", toolchain.image),
            None => format!("a command in {} exited with {code}", toolchain.image),
        }
    }
}

/// The toolchain's limits with what the step asked for in their place (the policy checked that
/// it asks for no more).
fn asked_limits(step: &Step, mut limits: crate::executor::Limits) -> crate::executor::Limits {
    if let Some(millicpus) = step.millicpus {
        limits.nano_cpus = i64::try_from(millicpus.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    }
    if let Some(memory_mb) = step.memory_mb {
        limits.memory_bytes =
            i64::try_from(memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    }
    limits
}
