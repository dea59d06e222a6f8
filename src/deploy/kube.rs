//! [`Cluster`] on the Kubernetes API, through kube-rs: `apps/v1` Deployments (get, watch,
//! patch: an image, or only the Deployment's own annotations) and, only to say why a failed
//! rollout's pods were not ready, a list of its pods: the calls the Role in `k8s/rbac.yaml`
//! allows.

use std::collections::BTreeMap;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::{Api, Client, Config};

use super::cluster::{
    Changes, Cluster, ClusterError, Condition, DeploymentRef, ImageChange, Observed,
};
use crate::config::ClusterAccess;

/// Seconds a watch stays open before the server ends it (and deploybot follows again).
const WATCH_SECONDS: u32 = 60;
/// Pods described when a rollout fails: enough to see the pattern, short enough to read.
const PODS_DESCRIBED: usize = 3;

#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    /// Watches get their own connection pool: a watch holds its connection for the whole
    /// rollout, and sharing one pool would make the next get/patch open (and TLS-handshake) a
    /// new connection every time.
    watcher: Client,
}

impl KubeCluster {
    /// A client for `access`. Nothing is sent yet: an unreachable server shows at the first
    /// call, as an error naming that call.
    pub async fn connect(access: &ClusterAccess) -> Result<KubeCluster, String> {
        let mut config = client_config(access).await?;
        config.read_timeout = Some(std::time::Duration::from_secs(
            u64::from(WATCH_SECONDS) + 30,
        ));
        let client =
            Client::try_from(config.clone()).map_err(|e| format!("Kubernetes client: {e}"))?;
        let watcher = Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
        Ok(KubeCluster { client, watcher })
    }

    fn api(&self, target: &DeploymentRef) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &target.namespace)
    }

    /// Sends a strategic merge `patch` as deploybot's field manager.
    async fn patch(
        &self,
        target: &DeploymentRef,
        patch: serde_json::Value,
    ) -> Result<Observed, ClusterError> {
        let params = PatchParams {
            field_manager: Some("deploybot".into()),
            ..PatchParams::default()
        };
        let deployment = self
            .api(target)
            .patch(&target.name, &params, &Patch::Strategic(patch))
            .await
            .map_err(|e| named(e, "patch", target))?;
        Ok(observe(&deployment))
    }
}

impl Cluster for KubeCluster {
    async fn read(&self, target: &DeploymentRef) -> Result<Observed, ClusterError> {
        let deployment = self
            .api(target)
            .get(&target.name)
            .await
            .map_err(|e| named(e, "get", target))?;
        Ok(observe(&deployment))
    }

    async fn set_image(
        &self,
        target: &DeploymentRef,
        change: ImageChange<'_>,
    ) -> Result<Observed, ClusterError> {
        // A strategic merge patch keyed by container name touches only that container; the
        // resourceVersion makes it conditional, so a change made since our read is a 409
        // instead of a silent overwrite of what we recorded as "previous".
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": change.resource_version,
                "annotations": change.annotations,
            },
            "spec": {"template": {"spec": {"containers": [
                {"name": change.container, "image": change.image}
            ]}}}
        });
        self.patch(target, patch).await
    }

    async fn annotate(
        &self,
        target: &DeploymentRef,
        annotations: &BTreeMap<String, String>,
        resource_version: &str,
    ) -> Result<Observed, ClusterError> {
        // Metadata only: with the pod template as it was, the controller makes no new
        // ReplicaSet and replaces no pod. (The generation still moves: the API server counts a
        // Deployment's annotations, which the controller copies to its current ReplicaSet,
        // where `kubectl rollout history` reads the change-cause.)
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": annotations,
            },
        });
        self.patch(target, patch).await
    }

    async fn follow(
        &self,
        target: &DeploymentRef,
        resource_version: &str,
    ) -> Result<Changes, ClusterError> {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", target.name))
            .timeout(WATCH_SECONDS);
        let api: Api<Deployment> = Api::namespaced(self.watcher.clone(), &target.namespace);
        let events = api
            .watch(&params, resource_version)
            .await
            .map_err(|e| named(e, "watch", target))?;
        // The watch stream borrows the Api; a task owns both and hands changes over a channel.
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let who = target.clone();
        let task = tokio::spawn(async move {
            let _api = api;
            let mut events = std::pin::pin!(events.map_err(|e| named(e, "watch", &who)));
            while let Some(event) = events.next().await {
                let item = match event {
                    Ok(WatchEvent::Added(d)) | Ok(WatchEvent::Modified(d)) => Ok(observe(&d)),
                    Ok(WatchEvent::Deleted(_)) => Err(ClusterError::NotFound(who.clone())),
                    Ok(WatchEvent::Bookmark(_)) => continue,
                    // 410 Gone: the version is too old to follow; the caller reads again.
                    Ok(WatchEvent::Error(e)) if e.code == 410 => break,
                    Ok(WatchEvent::Error(e)) => Err(ClusterError::Other {
                        verb: "watch",
                        target: who.clone(),
                        message: e.message,
                    }),
                    Err(e) => Err(e),
                };
                if sender.send(item).await.is_err() {
                    break;
                }
            }
        });
        // Dropping the stream stops the task (and closes the watch) at once.
        let state = (receiver, AbortOnDrop(task));
        Ok(Box::pin(futures_util::stream::unfold(
            state,
            |(mut receiver, task)| async move {
                receiver.recv().await.map(|item| (item, (receiver, task)))
            },
        )))
    }

    async fn pods_not_ready(
        &self,
        target: &DeploymentRef,
        selector: &BTreeMap<String, String>,
        container: &str,
        image: &str,
    ) -> Result<Vec<String>, ClusterError> {
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &target.namespace);
        let list = pods
            .list(&ListParams::default().labels(&labels.join(",")))
            .await
            .map_err(|e| match e {
                kube::Error::Api(response) if response.code == 403 => ClusterError::Other {
                    verb: "list the pods of",
                    target: target.clone(),
                    message: "forbidden (give the deploybot Role the verb `list` on pods to see why pods are not ready)".into(),
                },
                other => named(other, "list the pods of", target),
            })?;
        Ok(list
            .items
            .iter()
            .filter(|pod| runs(pod, container, image))
            .filter_map(|pod| not_ready(pod, container))
            .take(PODS_DESCRIBED)
            .collect())
    }
}

/// Whether `pod` runs `image` in `container` (a pod of the rollout, not of an older version).
fn runs(pod: &Pod, container: &str, image: &str) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .any(|c| c.name == container && c.image.as_deref() == Some(image))
    })
}

/// Why `pod` is not ready, in the words `kubectl describe pod` would use; None if it is.
fn not_ready(pod: &Pod, container: &str) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let reason = c.reason.as_deref().unwrap_or("Unschedulable");
        let message = c.message.as_deref().unwrap_or_default();
        return Some(format!("pod {name} is not scheduled: {reason}: {message}"));
    }
    let Some(state) = status
        .container_statuses
        .iter()
        .flatten()
        .find(|s| s.name == container)
    else {
        let phase = status.phase.as_deref().unwrap_or("Pending");
        return Some(format!(
            "pod {name} is {phase}, container {container} not started"
        ));
    };
    if state.ready {
        return None;
    }
    let restarts = match state.restart_count {
        0 => String::new(),
        1 => ", restarted once".to_owned(),
        n => format!(", restarted {n} times"),
    };
    let last_exit = state
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| format!(" (last exit code {})", t.exit_code))
        .unwrap_or_default();
    let now = state.state.as_ref();
    if let Some(waiting) = now.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.as_deref().unwrap_or("Waiting");
        let message = waiting
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Some(format!(
            "pod {name}: container {container} {reason}{message}{last_exit}{restarts}"
        ));
    }
    if let Some(done) = now.and_then(|s| s.terminated.as_ref()) {
        let reason = done.reason.as_deref().unwrap_or("Terminated");
        return Some(format!(
            "pod {name}: container {container} exited: exit code {} ({reason}){restarts}",
            done.exit_code
        ));
    }
    Some(format!(
        "pod {name}: container {container} is running but not ready (its readiness probe does not pass){last_exit}{restarts}"
    ))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn named(error: kube::Error, verb: &'static str, target: &DeploymentRef) -> ClusterError {
    match error {
        kube::Error::Api(response) => match response.code {
            403 => ClusterError::Forbidden {
                verb,
                namespace: target.namespace.clone(),
                name: target.name.clone(),
                message: response.message,
            },
            404 => ClusterError::NotFound(target.clone()),
            409 => ClusterError::Conflict(target.clone()),
            _ => ClusterError::Other {
                verb,
                target: target.clone(),
                message: format!("{} ({})", response.message, response.code),
            },
        },
        other => ClusterError::Unreachable {
            verb,
            target: target.clone(),
            message: other.to_string(),
        },
    }
}

fn observe(deployment: &Deployment) -> Observed {
    let spec = deployment.spec.as_ref();
    let status = deployment.status.as_ref();
    let images: BTreeMap<String, String> = spec
        .and_then(|s| s.template.spec.as_ref())
        .map(|pod| {
            pod.containers
                .iter()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let progressing = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Progressing"))
        .map(|c| Condition {
            status: c.status.clone(),
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
            last_update: c
                .last_update_time
                .as_ref()
                .map(|t| format!("{:?}", t.0))
                .unwrap_or_default(),
        });
    Observed {
        resource_version: deployment
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default(),
        generation: deployment.metadata.generation.unwrap_or(0),
        observed_generation: status.and_then(|s| s.observed_generation).unwrap_or(0),
        desired: spec.and_then(|s| s.replicas).unwrap_or(1),
        total: status.and_then(|s| s.replicas).unwrap_or(0),
        updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
        available: status.and_then(|s| s.available_replicas).unwrap_or(0),
        progressing,
        images,
        selector: spec
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default(),
    }
}

/// The DER bytes of every certificate in a PEM bundle.
fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use base64::Engine;
    let mut certificates = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        match (line, &mut body) {
            ("-----BEGIN CERTIFICATE-----", None) => body = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(text)) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| format!("a certificate is not valid base64: {e}"))?;
                certificates.push(der);
                body = None;
            }
            (line, Some(text)) => text.push_str(line),
            _ => {}
        }
    }
    if certificates.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certificates)
}

/// The client configuration for `access` (kubeconfig, in-cluster service account, or an API
/// server with a token file), with a connect timeout; nothing is sent yet.
pub(crate) async fn client_config(access: &ClusterAccess) -> Result<Config, String> {
    let mut config = match access {
        ClusterAccess::InCluster => {
            Config::incluster().map_err(|e| format!("in-cluster service account: {e}"))?
        }
        ClusterAccess::Kubeconfig { path, context } => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            let options = kube::config::KubeConfigOptions {
                context: context.clone(),
                ..Default::default()
            };
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        ClusterAccess::Explicit {
            api_server,
            ca_file,
            token_file,
        } => {
            let url = api_server
                .parse()
                .map_err(|e| format!("api_server \"{api_server}\": {e}"))?;
            let mut config = Config::new(url);
            if let Some(ca_file) = ca_file {
                let pem = std::fs::read_to_string(ca_file)
                    .map_err(|e| format!("ca_file {}: {}", ca_file.display(), e.kind()))?;
                config.root_cert = Some(
                    pem_certificates(&pem)
                        .map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?,
                );
            }
            // kube reads the file itself and again when it changes (rotated tokens).
            config.auth_info.token_file = Some(token_file.display().to_string());
            config
        }
    };
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    Ok(config)
}
