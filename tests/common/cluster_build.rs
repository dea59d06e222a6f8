//! deploybot with the Kubernetes executor on the local cluster: builds run as pods in a test
//! namespace (host network, as this single-node cluster needs to reach the test registry and
//! git daemon on 127.0.0.1), with the base image the hello fixture builds `FROM` pushed to the
//! test registry, where the builder finds it.

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::ListParams;
use kube::Api;

use super::build::{config, Build};
use super::cluster::{run_dir, TestCluster};
use super::infra::{docker_with_base_images, require, GitServer, Registry};
use super::TestApp;

pub struct ClusterBuild {
    pub build: Build,
    pub cluster: TestCluster,
}

/// The executor's table for `namespace`, reached with the admin kubeconfig.
pub fn executor_section(namespace: &str) -> String {
    let access = format!(
        "kubeconfig = \"{}\"",
        run_dir().join("kubeconfig").display()
    );
    executor_with(namespace, &access)
}

/// The executor's table for `namespace`, reached as the narrow test user (only what a Role
/// granted it).
pub fn narrow_executor_section(cluster: &TestCluster) -> String {
    let access = format!(
        "api_server = \"{}\"\nca_file = \"{}\"\ntoken_file = \"{}\"",
        super::cluster::API,
        cluster.ca_file.display(),
        cluster.narrow_token_file.display()
    );
    executor_with(&cluster.namespace, &access)
}

fn executor_with(namespace: &str, access: &str) -> String {
    format!(
        "[executor]\nkind = \"kubernetes\"\nnamespace = \"{namespace}\"\n{access}\nhost_network = true\nstart_timeout_secs = 120\n"
    )
}

/// The rules of `k8s/builds.yaml`'s Role, as JSON (its flow-style lists are JSON).
pub fn builds_role_rules() -> serde_json::Value {
    let yaml = include_str!("../../k8s/builds.yaml");
    let role = yaml
        .split("\n---\n")
        .find(|doc| doc.contains("kind: Role\n"))
        .expect("a Role in k8s/builds.yaml");
    let mut rules = Vec::new();
    for line in role.lines().map(str::trim) {
        let value = |prefix: &str| {
            line.strip_prefix(prefix)
                .map(|v| serde_json::from_str::<serde_json::Value>(v.trim()).unwrap())
        };
        if let Some(groups) = value("- apiGroups:") {
            rules.push(serde_json::json!({ "apiGroups": groups }));
        } else if let Some(resources) = value("resources:") {
            rules.last_mut().unwrap()["resources"] = resources;
        } else if let Some(verbs) = value("verbs:") {
            rules.last_mut().unwrap()["verbs"] = verbs;
        }
    }
    serde_json::Value::Array(rules)
}

impl ClusterBuild {
    /// The hello fixture built on the cluster, the usual configuration as `edit` changes it.
    pub async fn hello(edit: impl FnOnce(String) -> String) -> Option<ClusterBuild> {
        ClusterBuild::hello_as(false, edit).await
    }

    /// The same, building as the narrow test user with only `k8s/builds.yaml`'s Role.
    pub async fn hello_narrow() -> Option<ClusterBuild> {
        ClusterBuild::hello_as(true, |c| c).await
    }

    async fn hello_as(narrow: bool, edit: impl FnOnce(String) -> String) -> Option<ClusterBuild> {
        let parts = ClusterParts::start(narrow).await?;
        let app = TestApp::spawn_config(&edit(parts.config)).await;
        let build = Build {
            app,
            registry: parts.registry,
            git: parts.git,
            sha: parts.sha,
        };
        Some(ClusterBuild {
            build,
            cluster: parts.cluster,
        })
    }
}

/// What a deploybot building on the cluster needs: a registry holding the hello fixture's base
/// image, a builds namespace, the hello fixture served by git, and the configuration for them.
pub struct ClusterParts {
    pub registry: Registry,
    pub cluster: TestCluster,
    pub git: GitServer,
    pub sha: String,
    pub config: String,
}

impl ClusterParts {
    /// `narrow`: the executor reaches the cluster as the narrow test user, granted exactly
    /// `k8s/builds.yaml`'s Role.
    pub async fn start(narrow: bool) -> Option<ClusterParts> {
        docker_with_base_images()?;
        require(
            "deploybot-local/builder:1",
            super::infra::command_works(
                "docker",
                &["image", "inspect", "deploybot-local/builder:1"],
            ),
            "run scripts/build-base-images.sh builder",
        )?;
        let registry = Registry::start()?;
        let cluster = TestCluster::start(&registry).await?;
        registry.push_static_base().await;
        let (git, sha) = GitServer::start_fixture("hello")?;
        let executor = if narrow {
            cluster.grant_narrow_rules(builds_role_rules()).await;
            narrow_executor_section(&cluster)
        } else {
            executor_section(&cluster.namespace)
        };
        let config = config(&registry, &git, &registry.password) + &executor;
        Some(ClusterParts {
            registry,
            cluster,
            git,
            sha,
            config,
        })
    }
}

impl TestCluster {
    /// What deploybot left in the builds namespace: pods, Secrets and NetworkPolicies it
    /// labelled (the test's own pull secret is not one).
    pub async fn leftovers(&self) -> Vec<String> {
        let params = ListParams::default().labels("deploybot.job");
        let (client, namespace) = (&self.client, &self.namespace);
        let mut names = Vec::new();
        for pod in Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&params)
            .await
            .unwrap()
        {
            names.push(format!("pod/{}", pod.metadata.name.unwrap_or_default()));
        }
        for secret in Api::<Secret>::namespaced(client.clone(), namespace)
            .list(&params)
            .await
            .unwrap()
        {
            names.push(format!(
                "secret/{}",
                secret.metadata.name.unwrap_or_default()
            ));
        }
        names.extend(self.network_policies().await);
        names
    }

    pub async fn network_policies(&self) -> Vec<String> {
        Api::<NetworkPolicy>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().labels("deploybot.job"))
            .await
            .unwrap()
            .into_iter()
            .map(|p| format!("networkpolicy/{}", p.metadata.name.unwrap_or_default()))
            .collect()
    }

    /// Waits (up to 30 s) until deploybot has deleted the job's objects; what is left.
    pub async fn settled_leftovers(&self) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // Deleted pods linger while they terminate; only deploybot's delete matters.
            let left = self.leftovers().await;
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    }
}
