//! The real single-node Kubernetes (v1.20.2, built from Debian's sources by
//! `scripts/k8s/build.sh`, started by `scripts/k8s/cluster-up.sh`). Each test gets its own
//! namespace with a pull secret for its registry and the Deployments it deploys to; the
//! namespace is deleted at the end. Under `CI=true` a cluster that is not up fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, Config};
use serde_json::json;

use super::infra::{require, Registry};

pub const API: &str = "https://127.0.0.1:16443";
/// The image every test Deployment starts on: busybox httpd serving /health, built locally.
pub const INITIAL_IMAGE: &str = "deploybot-test/initial:v0";

pub fn run_dir() -> PathBuf {
    let cache = std::env::var_os("DEPLOYBOT_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
            base.join("deploybot/k8s-v1.20.2")
        });
    cache.join("run")
}

pub struct TestCluster {
    pub client: Client,
    pub namespace: String,
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    pub narrow_token_file: PathBuf,
}

impl TestCluster {
    /// A fresh namespace on the running cluster, with `registry`'s pull secret.
    pub async fn start(registry: &Registry) -> Option<TestCluster> {
        let run = run_dir();
        let ca_file = run.join("certs/apiserver.crt");
        let token_file = run.join("token");
        let up = ca_file.exists()
            && token_file.exists()
            && Command::new("curl")
                .args(["-sf", "--cacert"])
                .arg(&ca_file)
                .arg(format!("{API}/healthz"))
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        require(
            "the local Kubernetes cluster",
            up,
            "run scripts/k8s/build.sh and scripts/k8s/cluster-up.sh (scripts/test.sh does)",
        )?;
        build_initial_image();
        // The admin kubeconfig cluster-up.sh writes (its CA, its token file).
        let kubeconfig = kube::config::Kubeconfig::read_from(run.join("kubeconfig")).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = Client::try_from(config).unwrap();
        let namespace = format!("t-{}", crate::common::unique_delivery_id().replace('-', ""));
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
            )
            .await
            .unwrap();
        let auth = base64_text(&format!("{}:{}", registry.username, registry.password));
        let dockerconfig = json!({"auths": {registry.address.clone(): {"auth": auth}}});
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "registry"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": dockerconfig.to_string()}
        }))
        .unwrap();
        Api::<Secret>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        Some(TestCluster {
            client,
            namespace,
            ca_file,
            token_file,
            narrow_token_file: run.join("narrow-token"),
        })
    }

    /// The `[[environments]]` table that deploys tags to this namespace.
    pub fn environment(&self, token_file: &std::path::Path) -> String {
        format!(
            "[[environments]]\nname = \"production\"\nnamespace = \"{}\"\napi_server = \"{API}\"\nca_file = \"{}\"\ntoken_file = \"{}\"\nrollout_timeout_secs = 120\n",
            self.namespace,
            self.ca_file.display(),
            token_file.display()
        )
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A Deployment like `k8s/examples/myevents.yaml`'s (container `api`, readiness on
    /// /health:8080), with a 1 s probe period and a short progress deadline so that
    /// rollouts take seconds. Waits until it is available.
    pub async fn create_deployment(&self, name: &str, progress_deadline_secs: i32) {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": 1,
                "progressDeadlineSeconds": progress_deadline_secs,
                "revisionHistoryLimit": 5,
                "selector": {"matchLabels": {"app": name}},
                "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "imagePullSecrets": [{"name": "registry"}],
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{
                            "name": "api",
                            "image": INITIAL_IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": 8080},
                                "periodSeconds": 1,
                                "failureThreshold": 1
                            }
                        }]
                    }
                }
            }
        }))
        .unwrap();
        self.deployments()
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap();
        self.wait_available(name).await;
    }

    pub async fn wait_available(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = self.deployment(name).await;
            let status = d.status.clone().unwrap_or_default();
            let generation = d.metadata.generation.unwrap_or(0);
            if status.observed_generation.unwrap_or(0) >= generation
                && status.available_replicas.unwrap_or(0) == 1
                && status.updated_replicas.unwrap_or(0) == 1
                && status.replicas.unwrap_or(0) == 1
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become available: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn deployment(&self, name: &str) -> Deployment {
        self.deployments().get(name).await.unwrap()
    }

    /// The `api` container's image in the Deployment's pod template.
    pub async fn image(&self, name: &str) -> String {
        let d = self.deployment(name).await;
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }

    pub async fn annotations(&self, name: &str) -> BTreeMap<String, String> {
        self.deployment(name)
            .await
            .metadata
            .annotations
            .unwrap_or_default()
    }

    /// The image ids (`docker-pullable://...@sha256:...`) of the ready pods of `name`.
    pub async fn ready_pod_images(&self, name: &str) -> Vec<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap();
        list.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .flat_map(|p| {
                p.status
                    .and_then(|s| s.container_statuses)
                    .unwrap_or_default()
            })
            .filter(|c| c.ready)
            .map(|c| c.image_id)
            .collect()
    }

    /// The pods of `name` not being deleted, as (name, uid): the same pair before and after a
    /// change means no pod was replaced.
    pub async fn pods(&self, name: &str) -> Vec<(String, String)> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = pods
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap();
        let mut pods: Vec<(String, String)> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| (p.metadata.name.unwrap(), p.metadata.uid.unwrap()))
            .collect();
        pods.sort();
        pods
    }

    /// The names of `name`'s ReplicaSets: a new one means the pod template changed.
    pub async fn replica_sets(&self, name: &str) -> Vec<String> {
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = sets
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap();
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        names.sort();
        names
    }

    /// `kubectl rollout history`: each ReplicaSet's revision and change-cause.
    pub async fn rollout_history(&self, name: &str) -> BTreeMap<i64, String> {
        let sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = sets
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await
            .unwrap();
        list.items
            .into_iter()
            .map(|set| {
                let annotations = set.metadata.annotations.unwrap_or_default();
                let revision = annotations["deployment.kubernetes.io/revision"]
                    .parse()
                    .unwrap();
                let cause = annotations
                    .get("kubernetes.io/change-cause")
                    .cloned()
                    .unwrap_or_default();
                (revision, cause)
            })
            .collect()
    }

    /// Lets the narrow test user do only `verbs` on Deployments in this namespace: on the
    /// Deployments `names` lists (as the Role's `resourceNames`), or on all when it is empty.
    pub async fn grant_narrow_user(&self, verbs: &[&str], names: &[&str]) {
        let mut rule = json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": verbs});
        if !names.is_empty() {
            rule["resourceNames"] = json!(names);
        }
        self.grant_narrow_rules(json!([rule])).await;
    }

    /// Lets the narrow test user do exactly what `rules` (a Role's rules) allow here.
    pub async fn grant_narrow_rules(&self, rules: serde_json::Value) {
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": "narrow"},
            "rules": rules
        }))
        .unwrap();
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "narrow"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "narrow"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "deploybot-narrow"}]
        }))
        .unwrap();
        Api::<Role>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &role)
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(self.client.clone(), &self.namespace)
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }

    /// Deletes the namespace (and everything in it); the test's pods stop.
    pub async fn delete(self) {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

fn build_initial_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("health"), "ok\n").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM deploybot-local/static:latest\nCOPY health /www/\nUSER 65534\nCMD [\"httpd\",\"-f\",\"-p\",\"8080\",\"-h\",\"/www\"]\n",
    )
    .unwrap();
    let status = Command::new("docker")
        .args(["build", "-q", "-t", INITIAL_IMAGE])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "docker build {INITIAL_IMAGE}");
}

fn base64_text(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
