//! Containers and images: the only code that talks to a container engine or runs builds.
//!
//! The worker sees the [`Executor`] trait: run a step in a container, build an image from a
//! context directory, push an image. `docker.rs` implements it on the Docker Engine API
//! through bollard; another backend (Podman, a remote builder) would be one more file.
//! Every container deploybot creates carries the label `deploybot.job=<id>`, so a job's
//! leftovers (and a crashed process's orphans) can be found and removed.

mod docker;
mod kubernetes;
mod lines;
#[cfg(test)]
pub(crate) mod memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub(crate) use docker::DockerEngine;

/// A push that fails for a reason a registry may get over (unreachable, 5xx, a dropped
/// connection) is tried again this many times in all, waiting `PUSH_RETRY_FIRST_SECS` and then
/// twice as long before each next try (1 + 2 + 4 s); a refusal of the credentials is not.
pub(crate) const PUSH_ATTEMPTS: u32 = 4;
pub(crate) const PUSH_RETRY_FIRST_SECS: u64 = 1;

/// The words (lower case) with which registries and engines say that the credentials or the
/// repository were refused: trying again cannot help.
pub(crate) const PUSH_REFUSED: [&str; 4] = [
    "unauthorized",
    "authentication required",
    "denied",
    "no basic auth",
];

/// Runs `push` until it succeeds, fails with a refusal, or has failed [`PUSH_ATTEMPTS`] times,
/// waiting 1, 2, 4 s between tries and saying so in the log; the last failure says how many
/// tries it took.
pub(crate) async fn with_push_retries<F, Fut>(
    log: &dyn LogSink,
    mut push: F,
) -> Result<String, ExecError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, ExecError>>,
{
    let mut wait = std::time::Duration::from_secs(PUSH_RETRY_FIRST_SECS);
    let mut attempt = 1;
    loop {
        match push().await {
            Err(ExecError::Push { reference, reason })
                if attempt < PUSH_ATTEMPTS && !push_refused(&reason) =>
            {
                log.line(&format!(
                    "push of {reference} failed ({reason}); trying again in {} s (attempt {} of {PUSH_ATTEMPTS})",
                    wait.as_secs(),
                    attempt + 1,
                ));
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(ExecError::Push { reference, reason }) if attempt > 1 => {
                return Err(ExecError::Push {
                    reference,
                    reason: format!("{reason} (after {attempt} attempts)"),
                })
            }
            other => return other,
        }
    }
}

/// Whether a failed push's reason is a refusal ([`PUSH_REFUSED`]).
pub(crate) fn push_refused(reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    PUSH_REFUSED.iter().any(|word| reason.contains(word))
}
pub(crate) use kubernetes::KubeExecutor;

/// The label every deploybot container and image carries, with the job id as value.
pub const JOB_LABEL: &str = "deploybot.job";
/// On step containers: the service the step belongs to.
pub const SERVICE_LABEL: &str = "deploybot.service";
/// Which deploybot (which store) a container belongs to: several may share one engine, and
/// one must never remove another's containers.
pub const INSTANCE_LABEL: &str = "deploybot.instance";

/// The [`INSTANCE_LABEL`] value of the deploybot whose store is `data_dir`: a digest of the
/// store's absolute path, so a restart on the same store finds its orphans.
pub fn instance_id(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    hex::encode(&sha2::Sha256::digest(path.to_string_lossy().as_bytes())[..6])
}

/// Where an executor sends output lines (already split, without newlines).
pub trait LogSink: Send + Sync {
    fn line(&self, text: &str);
}

/// What one step container (or image build) may use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: i64,
    /// CPUs in billionths (Docker's `NanoCpus`).
    pub nano_cpus: i64,
    pub pids: i64,
}

/// One step: commands run in order by `sh -e` in `image`, with the workspace mounted.
#[derive(Debug, Clone)]
pub struct StepSpec {
    pub job: i64,
    pub service: String,
    pub image: String,
    pub commands: Vec<String>,
    /// The checkout on this host, mounted at `/workspace`.
    pub workspace: PathBuf,
    /// Working directory inside the workspace (relative).
    pub workdir: String,
    pub network: bool,
    /// `uid[:gid]` to run as (never root: see `config::Toolchain`).
    pub user: String,
    /// Named volumes (name → container path): the dependency caches.
    pub volumes: BTreeMap<String, String>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// The step asked for its CPUs or memory: an executor that schedules reserves its limits
    /// (Kubernetes requests = limits) instead of its default requests.
    pub reserve: bool,
    /// Past this the container is stopped and the step fails as timed out.
    pub timeout: Duration,
    /// Its place in the service's [`ServicePlan::steps`].
    pub index: usize,
    /// Files (relative to `workdir`) the step must leave; checked by executors that do not
    /// build in deploybot's own checkout (see [`Executor::BUILDS_IN_CHECKOUT`]).
    pub artifacts: Vec<String>,
}

/// A service's whole build, known before its first step runs: an executor that builds
/// elsewhere (a pod) sets it all up at once; the Docker engine needs nothing ahead.
#[derive(Debug)]
pub struct ServicePlan {
    pub job: i64,
    pub service: String,
    pub source: Source,
    /// In the order [`Executor::run_step`] is then called with them.
    pub steps: Vec<StepSpec>,
    pub image: ImagePlan,
    /// Where the image goes once built; None when this job pushes no tag for it (a branch, or
    /// a tag deploybot already pushed).
    pub push: Option<PushPlan>,
    /// deploybot's registry credentials: for `FROM` images there and for the push.
    pub registry_auth: Option<RegistryAuth>,
}

/// The exact commit, fetched where the build runs.
#[derive(Debug)]
pub struct Source {
    pub url: String,
    pub git_ref: String,
    pub sha: String,
    /// The `http.extraHeader` value that authenticates the fetch, if the project has one.
    pub auth_header: Option<SecretString>,
}

/// The image of a service, as its policy-checked definition says.
#[derive(Debug)]
pub struct ImagePlan {
    /// The build context, relative to the checkout.
    pub context: String,
    /// The Dockerfile's text as committed (what the project's policy checked).
    pub dockerfile: String,
    pub tag: String,
    pub labels: BTreeMap<String, String>,
    pub network: bool,
    pub limits: Limits,
}

#[derive(Debug)]
pub struct PushPlan {
    pub reference: String,
}

#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub job: i64,
    pub service: String,
    /// The build context as a tar file on this host, made from the checkout by
    /// `checkout::Tree::context_tar` (so nothing outside the checkout is in it).
    pub context_tar: PathBuf,
    /// The Dockerfile, relative to the context.
    pub dockerfile: String,
    /// Full reference to tag the image with (`registry/repo:tag`).
    pub tag: String,
    pub labels: BTreeMap<String, String>,
    /// Whether the Dockerfile's commands get a network.
    pub network: bool,
    pub limits: Limits,
    pub timeout: Duration,
}

/// A built image to push.
#[derive(Debug)]
pub struct PushSpec<'a> {
    pub job: i64,
    pub service: &'a str,
    /// Full reference (`registry/repo:tag`).
    pub reference: &'a str,
    pub auth: Option<&'a RegistryAuth>,
}

/// Credentials for a registry; built into the engine's type only inside the push call.
#[derive(Debug)]
pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: SecretString,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("container engine: {0}")]
    Engine(String),
    #[error("image {image} is not available locally (nothing is pulled during a build)")]
    MissingImage { image: String },
    #[error("image build failed: {0}")]
    Build(String),
    #[error("push of {reference} failed: {reason}")]
    Push { reference: String, reason: String },
    #[error("canceled")]
    Canceled,
    #[error("timed out after {0} s")]
    TimedOut(u64),
    #[error("build context {path}: {reason}")]
    Context { path: String, reason: String },
    /// What a step's own check found wrong (an artifact it did not leave).
    #[error("{0}")]
    Step(String),
}

/// What the worker needs from a container engine.
pub trait Executor: Send + Sync + 'static {
    /// Whether steps run in deploybot's own checkout (bind-mounted), so that the worker checks
    /// their artifacts, clears set-id bits and makes the build context there; an executor
    /// that builds elsewhere does all three where it builds.
    const BUILDS_IN_CHECKOUT: bool = true;

    /// Sets up a service's build before its first step.
    fn prepare(&self, _plan: &ServicePlan) -> impl Future<Output = Result<(), ExecError>> + Send {
        async { Ok(()) }
    }

    /// Runs a step to completion (or cancellation); returns its exit code.
    fn run_step(
        &self,
        spec: &StepSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<i64, ExecError>> + Send;

    /// Builds and tags an image; returns its id.
    fn build_image(
        &self,
        spec: &BuildSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> impl Future<Output = Result<String, ExecError>> + Send;

    /// Pushes a tagged image; returns the registry's digest (`sha256:...`).
    fn push_image(
        &self,
        spec: &PushSpec<'_>,
        log: &dyn LogSink,
    ) -> impl Future<Output = Result<String, ExecError>> + Send;

    /// What pins `reference` down for a build's inputs (an image id or a registry digest), or
    /// None when it cannot be.
    fn pin(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<String>, ExecError>> + Send;

    /// The id of a local image, or None if there is no such image.
    fn image_id(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<String>, ExecError>> + Send;

    /// Tags a local image (by id) with a full reference.
    fn tag(
        &self,
        image: &str,
        reference: &str,
    ) -> impl Future<Output = Result<(), ExecError>> + Send;

    /// Removes this deploybot's containers of `job` (or all of its containers, for None).
    fn remove_containers(
        &self,
        job: Option<i64>,
    ) -> impl Future<Output = Result<usize, ExecError>> + Send;
}

/// `host:port/repo/name:tag` → (`host:port/repo/name`, `tag`).
pub(crate) fn split_reference(reference: &str) -> (&str, &str) {
    let slash = reference.rfind('/').unwrap_or(0);
    match reference[slash..].rfind(':') {
        Some(colon) => (&reference[..slash + colon], &reference[slash + colon + 1..]),
        None => (reference, "latest"),
    }
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
}
