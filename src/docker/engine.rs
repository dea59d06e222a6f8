//! [`Executor`] on the Docker Engine API (bollard). No docker CLI, no socket in any container.

use std::collections::HashMap;
use std::path::Path;

use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, LogsOptionsBuilder,
    PushImageOptionsBuilder, RemoveContainerOptionsBuilder, TagImageOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::{
    BuildSpec, ExecError, Executor, LogSink, RegistryAuth, StepSpec, INPUT_LABEL, INSTANCE_LABEL,
    JOB_LABEL,
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

    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            tracing::warn!(container = id, error = %e, "Could not remove a step container");
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
}

/// `sh -e` runs the commands in order and stops at the first failure; each is echoed first,
/// so the log shows which one failed.
fn script(commands: &[String]) -> String {
    let mut script = String::from("set -e\n");
    for command in commands {
        let quoted = command.replace('\'', r"'\''");
        script.push_str(&format!("printf '%s\\n' '$ {quoted}'\n{command}\n"));
    }
    script
}

impl Executor for DockerEngine {
    async fn run_step(
        &self,
        spec: &StepSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<i64, ExecError> {
        self.ensure_image(&spec.image).await?;
        let mut binds = vec![format!("{}:/workspace", spec.workspace.display())];
        binds.extend(
            spec.volumes
                .iter()
                .map(|(name, path)| format!("{name}:{path}")),
        );
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(vec!["sh".into(), "-c".into(), script(&spec.commands)]),
            working_dir: Some(format!("/workspace/{}", spec.workdir)),
            user: spec.user.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(HashMap::from([
                (JOB_LABEL.to_owned(), spec.job.to_string()),
                (INSTANCE_LABEL.to_owned(), self.instance.clone()),
            ])),
            host_config: Some(HostConfig {
                binds: Some(binds),
                // Hermetic unless the step asks for the network.
                network_mode: Some(if spec.network { "bridge" } else { "none" }.into()),
                security_opt: Some(vec!["no-new-privileges".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
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
            tokio::select! {
                code = self.follow(&id, log) => code,
                () = cancel.cancelled() => {
                    let kill = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
                    let _ = self.docker.kill_container(&id, Some(kill)).await;
                    Err(ExecError::Canceled)
                }
            }
        }
        .await;
        self.remove(&id).await;
        result
    }

    async fn build_image(
        &self,
        spec: &BuildSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, ExecError> {
        let context = spec.context.clone();
        let tar = tokio::task::spawn_blocking(move || context_tar(&context))
            .await
            .map_err(|e| ExecError::Engine(e.to_string()))??;
        let labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&spec.dockerfile)
            .t(&spec.tag)
            .labels(&labels)
            .rm(true)
            .forcerm(true)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut lines = LineSplitter::default();
        let mut image_id = None;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                () = cancel.cancelled() => return Err(ExecError::Canceled),
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

    async fn push_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        log: &dyn LogSink,
    ) -> Result<String, ExecError> {
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

    async fn image_id(&self, reference: &str) -> Result<Option<String>, ExecError> {
        match self.docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(engine(e)),
        }
    }

    async fn find_built(&self, input: &str) -> Result<Option<String>, ExecError> {
        let filters = HashMap::from([("label".to_owned(), vec![format!("{INPUT_LABEL}={input}")])]);
        let options = ListImagesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let images = self
            .docker
            .list_images(Some(options))
            .await
            .map_err(engine)?;
        Ok(images.into_iter().next().map(|image| image.id))
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
        for container in containers {
            if let Some(id) = container.id {
                self.remove(&id).await;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `host:port/repo/name:tag` → (`host:port/repo/name`, `tag`).
fn split_reference(reference: &str) -> (&str, &str) {
    let slash = reference.rfind('/').unwrap_or(0);
    match reference[slash..].rfind(':') {
        Some(colon) => (&reference[..slash + colon], &reference[slash + colon + 1..]),
        None => (reference, "latest"),
    }
}

/// Splits a byte stream into lines for the log; a partial last line is kept until more comes.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, bytes: &[u8], log: &dyn LogSink) {
        self.pending.extend_from_slice(bytes);
        while let Some(newline) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            log.line(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']));
        }
    }

    fn finish(&mut self, log: &dyn LogSink) {
        if !self.pending.is_empty() {
            log.line(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

/// The build context as a tar, honouring the simple forms of `.dockerignore` (a name or path
/// per line, `*` wildcards, `#` comments): dependency folders left by compile steps
/// (`node_modules`) need not travel to the engine.
fn context_tar(context: &Path) -> Result<Vec<u8>, ExecError> {
    let fail = |reason: String| ExecError::Context {
        path: context.display().to_string(),
        reason,
    };
    let ignore: Vec<crate::pipeline::Pattern> =
        std::fs::read_to_string(context.join(".dockerignore"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().trim_start_matches("./").trim_end_matches('/'))
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
            .filter_map(|l| crate::pipeline::Pattern::parse(l).ok())
            .collect();
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut stack = vec![context.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| fail(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| fail(e.to_string()))?;
            let path = entry.path();
            let relative = path
                .strip_prefix(context)
                .map_err(|e| fail(e.to_string()))?
                .to_string_lossy()
                .into_owned();
            if ignore.iter().any(|p| p.matches(&relative)) {
                continue;
            }
            let kind = entry.file_type().map_err(|e| fail(e.to_string()))?;
            if kind.is_dir() {
                builder
                    .append_dir(&relative, &path)
                    .map_err(|e| fail(e.to_string()))?;
                stack.push(path);
            } else {
                builder
                    .append_path_with_name(&path, &relative)
                    .map_err(|e| fail(format!("{relative}: {e}")))?;
            }
        }
    }
    builder.into_inner().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_repository_and_tag() {
        assert_eq!(
            split_reference("127.0.0.1:5000/myevents/web:v1.2.3"),
            ("127.0.0.1:5000/myevents/web", "v1.2.3")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/web"),
            ("127.0.0.1:5000/web", "latest")
        );
    }

    #[test]
    fn the_step_script_echoes_each_command_and_stops_at_the_first_failure() {
        let script = script(&["go vet ./...".into(), "echo 'it''s'".into()]);
        assert!(script.starts_with("set -e\n"));
        assert!(script.contains("printf '%s\\n' '$ go vet ./...'\ngo vet ./...\n"));
    }

    struct Lines(std::sync::Mutex<Vec<String>>);
    impl LogSink for Lines {
        fn line(&self, text: &str) {
            self.0.lock().unwrap().push(text.to_owned());
        }
    }

    #[test]
    fn output_is_split_into_lines_across_chunks() {
        let lines = Lines(Default::default());
        let mut splitter = LineSplitter::default();
        splitter.push(b"one\ntw", &lines);
        splitter.push(b"o\r\nthree", &lines);
        splitter.finish(&lines);
        assert_eq!(*lines.0.lock().unwrap(), ["one", "two", "three"]);
    }

    #[test]
    fn the_context_tar_leaves_out_what_dockerignore_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(dir.path().join(".dockerignore"), "node_modules\n*.log\n").unwrap();
        std::fs::create_dir(dir.path().join("node_modules")).unwrap();
        std::fs::write(dir.path().join("node_modules/x.js"), "x").unwrap();
        std::fs::write(dir.path().join("debug.log"), "x").unwrap();
        std::fs::create_dir(dir.path().join("dist")).unwrap();
        std::fs::write(dir.path().join("dist/main.js"), "x").unwrap();

        let tar = context_tar(dir.path()).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".dockerignore", "Dockerfile", "dist", "dist/main.js"]
        );
    }
}
