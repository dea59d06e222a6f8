//! [`Executor`] on a Kubernetes cluster: each service's build is one pod in the executor's
//! namespace (`pod.rs` says what it is made of, `containers.rs` what each container runs).
//! [`Executor::prepare`] creates the Secret, the NetworkPolicy and the pod; each later call
//! follows one *segment* of the pod in order (`segments.rs`, `follow.rs`): a step's exit code,
//! the image's id, the pushed digest. A step over its timeout, a cancel or a supersede deletes
//! the pod at once; every object of a job is labelled and deleted with it. No Docker engine is
//! used, nothing runs privileged, and no build pod gets a token for the cluster.

mod containers;
mod follow;
mod pod;
mod segments;

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::{
    split_reference, BuildSpec, ExecError, Executor, LogSink, PushSpec, ServicePlan, StepSpec,
    INSTANCE_LABEL, JOB_LABEL,
};
use crate::config::KubernetesExecutor;
use crate::registry::RegistryClient;
use containers::{Segment, CONTEXT_EXIT, STEP_CHECK_EXIT};
use segments::{Build, Builds, End};

pub struct KubeExecutor {
    client: Client,
    settings: KubernetesExecutor,
    instance: String,
    builds: Builds,
    /// Pins `FROM` and toolchain images found in deploybot's registry by their digest.
    registry: Option<(String, RegistryClient)>,
}

/// How long a build pod may live in all: a backstop to deploybot's own per-step timeouts.
const POD_DEADLINE_STEPS: i64 = 3;

impl KubeExecutor {
    pub async fn connect(
        settings: KubernetesExecutor,
        instance: &str,
        registry: Option<(String, RegistryClient)>,
    ) -> Result<KubeExecutor, ExecError> {
        let config = crate::deploy::client_config(&settings.cluster)
            .await
            .map_err(ExecError::Engine)?;
        let client = Client::try_from(config)
            .map_err(|e| ExecError::Engine(format!("Kubernetes client: {e}")))?;
        Ok(KubeExecutor {
            client,
            settings,
            instance: instance.to_owned(),
            builds: Builds::default(),
            registry,
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), self.settings.namespace.as_ref())
    }

    fn name(&self, job: i64, service: &str) -> String {
        pod::object_name(&self.instance, job, service)
    }

    /// Follows `segment` of the service's pod until it ends; stops the pod `timeout` after the
    /// segment started, or at `cancel`.
    async fn segment(
        &self,
        (job, service): (i64, &str),
        segment: Segment,
        timeout: Duration,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<End, ExecError> {
        self.follow((job, service), segment, timeout, false, log, cancel)
            .await
    }

    /// [`Self::segment`], where `checked` says the caller checks a success itself.
    async fn follow(
        &self,
        (job, service): (i64, &str),
        segment: Segment,
        timeout: Duration,
        checked: bool,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<End, ExecError> {
        let build = self
            .builds
            .get(job, service)
            .ok_or_else(|| ExecError::Engine(format!("no build pod was set up for {service}")))?;
        let mut build = build.lock().await;
        let pods: Api<Pod> = self.api();
        let start = self.settings.start_timeout;
        let result = tokio::select! {
            result = build.follow(&pods, &segment, (start, timeout), checked, log) => result,
            () = cancel.cancelled() => Err(ExecError::Canceled),
        };
        if matches!(result, Err(ExecError::Canceled | ExecError::TimedOut(_))) {
            // Stopped now, not when the job ends: a timed-out step must not keep running.
            let _ = pods.delete(&self.name(job, service), &delete_now()).await;
        }
        result
    }

    /// The addresses a build without network may still reach: the git server and registries.
    async fn reachable(&self, plan: &ServicePlan) -> Vec<IpAddr> {
        let mut hosts: Vec<String> = self.settings.search_registries.clone();
        if let Some(push) = &plan.push {
            hosts.extend(push.reference.split('/').next().map(str::to_owned));
        }
        hosts.extend(git_host(&plan.source.url));
        let mut addresses = Vec::new();
        for host in hosts {
            let host = if host.contains(':') {
                host
            } else {
                format!("{host}:443")
            };
            if let Ok(found) = tokio::net::lookup_host(host).await {
                addresses.extend(found.map(|a| a.ip()));
            }
        }
        addresses.sort();
        addresses.dedup();
        addresses
    }

    async fn create<K>(&self, object: &K) -> Result<(), ExecError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        let kind = K::kind(&Default::default()).into_owned();
        let mut created = api.create(&PostParams::default(), object).await;
        if matches!(&created, Err(kube::Error::Api(e)) if e.code == 409) {
            // Left by an earlier attempt of the same job and still going away.
            let name = object.meta().name.clone().unwrap_or_default();
            self.gone(&api, &name).await;
            created = api.create(&PostParams::default(), object).await;
        }
        match created {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("PodSecurity") => {
                Err(ExecError::Engine(format!(
                    "namespace {} refuses the build pod: {}. The builder container runs as root (in its container) with seccomp left unset, which Pod Security \"baseline\" allows and \"restricted\" does not; see the README, \"Builds on Kubernetes\"",
                    self.settings.namespace, e.message
                )))
            }
            Err(e) => Err(ExecError::Engine(format!(
                "cannot create the build's {kind} in namespace {}: {e}",
                self.settings.namespace
            ))),
        }
    }

    /// Deletes `name` at once and waits (up to a minute) until the API no longer has it.
    async fn gone<K>(&self, api: &Api<K>, name: &str)
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let _ = api.delete(name, &delete_now()).await;
        for _ in 0..240 {
            if let Ok(None) = api.get_opt(name).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes every object of `K` this deploybot labelled (for `job`, or all of them).
    async fn delete_all<K>(&self, selector: &str) -> Result<usize, ExecError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let api: Api<K> = self.api();
        let kind = K::kind(&Default::default()).into_owned();
        let found = api
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(|e| ExecError::Engine(format!("cannot list build {kind}s: {e}")))?;
        let mut deleted = 0;
        for object in found.items {
            let Some(name) = object.meta().name.clone() else {
                continue;
            };
            match api.delete(&name, &delete_now()).await {
                Ok(_) => deleted += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    return Err(ExecError::Engine(format!(
                        "cannot delete build {kind} {name}: {e}"
                    )))
                }
            }
        }
        Ok(deleted)
    }

    /// Whether the registry serves `reference` at `digest`, as the build said it pushed it.
    async fn confirm(&self, reference: &str, digest: &str) -> Result<(), String> {
        let Some((address, registry)) = &self.registry else {
            return Ok(());
        };
        let (repository, tag) = split_reference(reference);
        let repository = repository
            .strip_prefix(&format!("{address}/"))
            .unwrap_or(repository);
        match registry.digest_of(repository, tag).await {
            Ok(Some(served)) if served == digest => Ok(()),
            Ok(Some(served)) => Err(format!(
                "the build reported {digest}, but the registry serves {served} for the tag"
            )),
            Ok(None) => Err("the build reported a push, but the registry has no such tag".into()),
            Err(e) => Err(format!("could not confirm the push: {e}")),
        }
    }

    fn deadline_secs(&self, plan: &ServicePlan) -> i64 {
        let per_step = plan
            .steps
            .first()
            .map_or(Duration::from_secs(600), |s| s.timeout);
        let containers = i64::try_from(plan.steps.len()).unwrap_or(0) + POD_DEADLINE_STEPS;
        let secs = i64::try_from(per_step.as_secs()).unwrap_or(i64::MAX / 8);
        containers
            .saturating_mul(secs)
            .saturating_add(i64::try_from(self.settings.start_timeout.as_secs()).unwrap_or(0))
    }
}

impl Executor for KubeExecutor {
    const BUILDS_IN_CHECKOUT: bool = false;

    async fn prepare(&self, plan: &ServicePlan) -> Result<(), ExecError> {
        let name = self.name(plan.job, &plan.service);
        let labels = pod::labels(&self.instance, plan.job, &plan.service);
        let registries = &self.settings.search_registries;
        self.create(&pod::secret(&name, &labels, plan, registries))
            .await?;
        if !plan.image.network && !plan.steps.iter().any(|s| s.network) {
            let allowed = self.reachable(plan).await;
            self.create(&pod::network_policy(&name, &labels, &allowed))
                .await?;
        }
        let nonce = nonce(&name);
        let settings = pod::PodSettings {
            executor: &self.settings,
            deadline_secs: self.deadline_secs(plan),
            nonce: &nonce,
        };
        let (pod, layout) = pod::pod(&name, &labels, plan, &settings);
        self.create(&pod).await?;
        self.builds
            .insert(plan.job, &plan.service, Build::new(name, nonce, layout));
        Ok(())
    }

    async fn run_step(
        &self,
        spec: &StepSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<i64, ExecError> {
        let key = (spec.job, spec.service.as_str());
        let step = Segment::Step(spec.index);
        let end = self.segment(key, step, spec.timeout, log, cancel).await?;
        if end.code == STEP_CHECK_EXIT && !end.result.is_empty() {
            return Err(ExecError::Step(end.result));
        }
        Ok(end.code)
    }

    async fn build_image(
        &self,
        spec: &BuildSpec,
        log: &dyn LogSink,
        cancel: &CancellationToken,
    ) -> Result<String, ExecError> {
        let key = (spec.job, spec.service.as_str());
        let end = self
            .segment(key, Segment::Image, spec.timeout, log, cancel)
            .await?;
        match end.code {
            // An image id, nothing else, reaches the store.
            0 if is_image_id(&end.result) => Ok(end.result),
            0 => Err(ExecError::Build("buildah reported no image id".into())),
            CONTEXT_EXIT => Err(ExecError::Step(end.result)),
            code => Err(ExecError::Build(format!("buildah exited with {code}"))),
        }
    }

    async fn push_image(
        &self,
        spec: &PushSpec<'_>,
        log: &dyn LogSink,
    ) -> Result<String, ExecError> {
        // The push stage's own deadline bounds it; the pod goes with the job.
        // The registry confirms a pushed digest at once; without a client, the container's end
        // (which the kubelet notices up to a second later) does.
        let key = (spec.job, spec.service);
        let never = CancellationToken::new();
        let checked = self.registry.is_some();
        let end = self
            .follow(key, Segment::Push, Duration::MAX, checked, log, &never)
            .await?;
        let push_error = |reason: String| ExecError::Push {
            reference: spec.reference.to_owned(),
            reason,
        };
        match end.code {
            0 if end.result.starts_with("sha256:") => {
                self.confirm(spec.reference, &end.result)
                    .await
                    .map_err(push_error)?;
                Ok(end.result)
            }
            code => Err(push_error(format!(
                "buildah push exited with {code} (its log says why)"
            ))),
        }
    }

    async fn pin(&self, reference: &str) -> Result<Option<String>, ExecError> {
        let Some((address, registry)) = &self.registry else {
            return Ok(Some(format!("name {reference}")));
        };
        let (repository, tag) = split_reference(reference);
        let repository = repository
            .strip_prefix(&format!("{address}/"))
            .unwrap_or(repository);
        match registry.digest_of(repository, tag).await {
            Ok(Some(digest)) => Ok(Some(digest)),
            // Not in the registry (a node-local toolchain image): pinned by its name only.
            _ => Ok(Some(format!("name {reference}"))),
        }
    }

    async fn image_id(&self, _reference: &str) -> Result<Option<String>, ExecError> {
        // No image store of its own: an image is had again from the registry or rebuilt.
        Ok(None)
    }

    async fn tag(&self, image: &str, _reference: &str) -> Result<(), ExecError> {
        Err(ExecError::MissingImage {
            image: image.to_owned(),
        })
    }

    async fn remove_containers(&self, job: Option<i64>) -> Result<usize, ExecError> {
        let mut selector = format!("{INSTANCE_LABEL}={}", self.instance);
        if let Some(job) = job {
            selector.push_str(&format!(",{JOB_LABEL}={job}"));
        }
        self.builds.forget(job);
        let pods = self.delete_all::<Pod>(&selector).await?;
        self.delete_all::<Secret>(&selector).await?;
        self.delete_all::<NetworkPolicy>(&selector).await?;
        Ok(pods)
    }
}

/// What marks the ends of segments in this pod's output: not guessable from outside the pod
/// before it exists (a step can read it from its own command line, which is why a container's
/// real end decides; see `containers.rs`).
fn nonce(name: &str) -> String {
    use sha2::Digest;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{name} {now} {}", std::process::id());
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
}

/// Deleted at once: a build's processes get no grace period (a shell as PID 1 ignores SIGTERM,
/// and nothing in a build needs to finish once it is stopped).
fn delete_now() -> DeleteParams {
    DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::background()
    }
}

/// `sha256:<hex>` or bare hex, as buildah's `--iidfile` writes it.
fn is_image_id(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    (12..=64).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `host:port` of a clone URL (`scheme://[user@]host[:port]/path`), the port the scheme's own
/// when none is given.
fn git_host(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        return Some(host.to_owned());
    }
    let port = match scheme {
        "http" => 80,
        "git" => 9418,
        "ssh" => 22,
        _ => 443,
    };
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_urls_host_and_port_are_what_a_build_without_network_may_reach() {
        assert_eq!(
            git_host("https://git.example/team/app.git").as_deref(),
            Some("git.example:443")
        );
        assert_eq!(
            git_host("git://127.0.0.1:9418/app").as_deref(),
            Some("127.0.0.1:9418")
        );
        assert_eq!(
            git_host("http://u@10.0.0.5:3000/a").as_deref(),
            Some("10.0.0.5:3000")
        );
        assert_eq!(git_host("not a url"), None);
    }
}
