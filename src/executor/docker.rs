//! [`Executor`] on the Docker Engine API (bollard). No docker CLI, no socket in any container.

use std::collections::HashMap;

use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, TagImageOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::lines::{script, LineSplitter};
use super::split_reference;
use super::{
    BuildSpec, ExecError, Executor, Limits, LogSink, PushSpec, StepSpec, INSTANCE_LABEL, JOB_LABEL,
    SERVICE_LABEL,
};

pub struct DockerEngine {
    docker: Docker,
    instance: String,
}

fn engine(e: bollard::errors::Error) -> ExecError {
    ExecError::Engine(e.to_string())
}

impl DockerEngine {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket) and checks that it
    /// answers, so a missing daemon fails at startup, not at the first push.
    /// `instance` names this deploybot's containers (see [`INSTANCE_LABEL`]).
    pub async fn connect(instance: &str) -> Result<DockerEngine, ExecError> {
        let docker = Docker::connect_with_local_defaults().map_err(engine)?;
        docker.ping().await.map_err(|e| {
            ExecError::Engine(format!(
                "cannot reach the Docker engine ({e}); is dockerd running?"
            ))
        })?;
        Ok(DockerEngine {
            docker,
            instance: instance.to_owned(),
        })
    }

    async fn ensure_image(&self, image: &str) -> Result<(), ExecError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(ExecError::MissingImage {
                image: image.to_owned(),
            }),
            Err(e) => Err(engine(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), ExecError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // Gone already (removed by a cancel or by the engine): what was wanted.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => {
                tracing::warn!(container = id, error = %e, "Could not remove a step container");
                Err(engine(e))
            }
        }
    }

    /// Streams the container's output into `log` until it exits, and returns the exit code.
    async fn follow(&self, id: &str, log: &dyn LogSink) -> Result<i64, ExecError> {
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut output = self.docker.logs(id, Some(options));
        let mut lines = LineSplitter::default();
        while let Some(chunk) = output.next().await {
            match chunk.map_err(engine)? {
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message } => lines.push(&message, log),
                LogOutput::StdIn { .. } => {}
            }
        }
        lines.finish(log);
        let wait = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waited = self.docker.wait_container(id, Some(wait));
        match waited.next().await {
            Some(Ok(status)) => Ok(status.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(engine(e)),
            None => Err(ExecError::Engine(
                "the engine did not report the exit code".into(),
            )),
        }
    }

    /// One push through the engine; its digest as the registry reports it.
    async fn push_once(&self, spec: &PushSpec<'_>, log: &dyn LogSink) -> Result<String, ExecError> {
        let (reference, auth) = (spec.reference, spec.auth);
        let (repository, tag) = split_reference(reference);
        let push_error = |reason: String| ExecError::Push {
            reference: reference.to_owned(),
            reason,
        };
        // The engine's credential type derives Debug with the password inside: it lives only
        // for this call and is never logged.
        let credentials = auth.map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.expose_secret().to_owned()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        });
        let options = PushImageOptionsBuilder::default().tag(tag).build();
        let mut stream = self
            .docker
            .push_image(repository, Some(options), credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| push_error(e.to_string()))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message).or(info.error) {
                return Err(push_error(error));
            }
            if let (Some(status), None) = (&info.status, &info.progress) {
                log.line(status);
            }
        }
        let inspected = self.docker.inspect_image(reference).await.map_err(engine)?;
        let prefix = format!("{repository}@");
        inspected
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find_map(|d| d.strip_prefix(&prefix).map(str::to_owned))
            .ok_or_else(|| push_error("the registry reported no digest".into()))
    }
}

/// The scheduler period the CPU quota is a share of (Docker's default, 100 ms).
const CPU_PERIOD_MICROS: i32 = 100_000;

fn clamp_i32(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// `nano_cpus` as a quota of [`CPU_PERIOD_MICROS`] (the build API takes no NanoCpus).
fn cpu_quota(limits: &Limits) -> i32 {
    clamp_i32(limits.nano_cpus * i64::from(CPU_PERIOD_MICROS) / 1_000_000_000)
}

/// A step's container: the workspace and caches mounted, every capability dropped, no new
/// privileges, the toolchain's non-root user, memory (no swap), CPU and pids limits, and no
/// network unless the step asks (and its project may).
fn step_container(spec: &StepSpec, instance: &str) -> ContainerCreateBody {
    let mut binds = vec![format!("{}:/workspace", spec.workspace.display())];
    binds.extend(
        spec.volumes
            .iter()
            .map(|(name, path)| format!("{name}:{path}")),
    );
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(vec!["sh".into(), "-c".into(), script(&spec.commands)]),
        working_dir: Some(format!("/workspace/{}", spec.workdir)),
        user: Some(spec.user.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(HashMap::from([
            (JOB_LABEL.to_owned(), spec.job.to_string()),
            (SERVICE_LABEL.to_owned(), spec.service.clone()),
            (INSTANCE_LABEL.to_owned(), instance.to_owned()),
        ])),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: Some(if spec.network { "bridge" } else { "none" }.into()),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            memory: Some(spec.limits.memory_bytes),
            memory_swap: Some(spec.limits.memory_bytes),
            nano_cpus: Some(spec.limits.nano_cpus),
            pids_limit: Some(spec.limits.pids),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Executor for DockerEngine {
    async fn run_step(
        &self,
        spec: &StepSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<i64, ExecError> {
        self.ensure_image(&spec.image).await?;
        let body = step_container(spec, &self.instance);
        let created = self
            .docker
            .create_container(Some(CreateContainerOptionsBuilder::default().build()), body)
            .await
            .map_err(engine)?;
        let id = created.id;
        let result = async {
            self.docker
                .start_container(
                    &id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
                .map_err(engine)?;
            let stopped = tokio::select! {
                code = self.follow(&id, log) => return code,
                () = cancel.cancelled() => ExecError::Canceled,
                () = tokio::time::sleep(spec.timeout) => ExecError::TimedOut(spec.timeout.as_secs()),
            };
            // Stopped at once, not when the job ends: a timed-out step must not keep running.
            let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
            let _ = self.docker.kill_container(&id, Some(kill)).await;
            Err(stopped)
        }
        .await;
        // Logged when it fails; the job's end removes whatever is left by label.
        let _ = self.remove(&id).await;
        result
    }

    async fn build_image(
        &self,
        spec: &BuildSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, ExecError> {
        let context = tokio::fs::File::open(&spec.context_tar)
            .await
            .map_err(|e| ExecError::Context {
                path: spec.context_tar.display().to_string(),
                reason: e.to_string(),
            })?;
        let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&spec.dockerfile)
            .t(&spec.tag)
            .labels(&labels)
            .rm(true)
            .forcerm(true)
            // The Dockerfile's commands get no network unless the project may use one.
            .networkmode(if spec.network { "default" } else { "none" })
            .memory(clamp_i32(spec.limits.memory_bytes))
            .memswap(clamp_i32(spec.limits.memory_bytes))
            .cpuperiod(CPU_PERIOD_MICROS)
            .cpuquota(cpu_quota(&spec.limits))
            .build();
        let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(context));
        let mut stream = self.docker.build_image(options, None, Some(body));
        let mut lines = LineSplitter::default();
        let mut image_id = None;
        let deadline = tokio::time::sleep(spec.timeout);
        tokio::pin!(deadline);
        loop {
            // Dropping the stream ends the request, and the engine cancels the build.
            let item = tokio::select! {
                item = stream.next() => item,
                () = cancel.cancelled() => return Err(ExecError::Canceled),
                () = &mut deadline => return Err(ExecError::TimedOut(spec.timeout.as_secs())),
            };
            let Some(item) = item else { break };
            let info = item.map_err(|e| ExecError::Build(e.to_string()))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message).or(info.error) {
                lines.finish(log);
                return Err(ExecError::Build(error.trim().to_owned()));
            }
            if let Some(text) = info.stream {
                lines.push(text.as_bytes(), log);
            }
            if let Some(id) = info.aux.and_then(|aux| aux.id) {
                image_id = Some(id);
            }
        }
        lines.finish(log);
        match image_id {
            Some(id) => Ok(id),
            None => {
                let inspected = self.docker.inspect_image(&spec.tag).await.map_err(engine)?;
                inspected
                    .id
                    .ok_or_else(|| ExecError::Build("the engine reported no image id".into()))
            }
        }
    }

    /// The engine's push, tried again with backoff while the registry fails in a way it may
    /// get over; the last failure names the reference (and so the registry) and the tries.
    async fn push_image(
        &self,
        spec: &PushSpec<'_>,
        log: &dyn LogSink,
    ) -> Result<String, ExecError> {
        super::with_push_retries(log, || self.push_once(spec, log)).await
    }

    async fn pin(&self, reference: &str) -> Result<Option<String>, ExecError> {
        self.image_id(reference).await
    }

    async fn image_id(&self, reference: &str) -> Result<Option<String>, ExecError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(engine(e)),
        }
    }

    async fn tag(&self, image: &str, reference: &str) -> Result<(), ExecError> {
        let (repository, tag) = split_reference(reference);
        let options = TagImageOptionsBuilder::default()
            .repo(repository)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image, Some(options))
            .await
            .map_err(engine)
    }

    async fn remove_containers(&self, job: Option<i64>) -> Result<usize, ExecError> {
        let mut labels = vec![format!("{INSTANCE_LABEL}={}", self.instance)];
        if let Some(job) = job {
            labels.push(format!("{JOB_LABEL}={job}"));
        }
        let filters = HashMap::from([("label".to_owned(), labels)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine)?;
        let mut removed = 0;
        let mut failed = None;
        for id in containers.into_iter().filter_map(|c| c.id) {
            match self.remove(&id).await {
                Ok(()) => removed += 1,
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(removed), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cpus_are_a_quota_of_two_periods() {
        let limits = Limits {
            memory_bytes: 1,
            nano_cpus: 2_000_000_000,
            pids: 1,
        };
        assert_eq!(cpu_quota(&limits), 2 * CPU_PERIOD_MICROS);
    }
}
