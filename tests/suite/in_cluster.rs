//! deploybot itself as a pod on the local cluster (`scripts/build-image.sh`, `k8s/` through
//! `scripts/k8s/deploybot-pod.sh`): in-cluster access, the Kubernetes executor, its store on a
//! PersistentVolume, its secrets from a Secret. A signed MyEvents tag push sent to it is built as
//! pods, pushed, rolled out and reported, and deploybot uses no Docker engine for any of it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::build::{signed_push, SERVICES};
use crate::common::cluster::TestCluster;
use crate::common::forge_double::{states, ForgeDouble, STATUS_TOKEN};
use crate::common::infra::{docker_with_base_images, free_port, GitServer, Registry};
use crate::common::TEST_SECRET;

/// The pod's configuration: everything secret is a file from the Secret.
fn pod_config(
    registry: &Registry,
    git: &GitServer,
    forge: &str,
    apps: &str,
    builds: &str,
) -> String {
    format!(
        r#"[server]
data_dir = "/var/lib/deploybot"

[worker]
clone_schemes = ["https", "git"]

[registry]
address = "{registry}"
username = "{username}"
password_file = "/etc/deploybot/secrets/registry-password"

{toolchains}

[[projects]]
name = "myevents"
forge = "github"
repository = "bradrydzewski/drone-test-go"
webhook_secret_file = "/etc/deploybot/secrets/myevents-webhook-secret"
status_token_file = "/etc/deploybot/secrets/myevents-status-token"
api_url = "{forge}"
clone_url = "{clone_url}"
allow_network = true
allowed_deployments = ["eventservice", "bookingservice", "frontend"]

[[environments]]
name = "production"
namespace = "{apps}"
in_cluster = true
rollout_timeout_secs = 180

[executor]
kind = "kubernetes"
namespace = "{builds}"
in_cluster = true
host_network = true
start_timeout_secs = 180
"#,
        registry = registry.address,
        username = registry.username,
        toolchains = include_str!("../../config/local-toolchains.toml"),
        clone_url = git.url,
    )
}

fn script(args: &[&str], env: &[(&str, &str)]) {
    let output = Command::new("bash")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn job(address: &str, id: i64) -> Value {
    reqwest::get(format!("{address}/api/v1/jobs/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploybot_in_a_pod_builds_a_tag_push_as_pods_then_pushes_rolls_out_and_reports() {
    let Some(()) = docker_with_base_images() else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return;
    };
    let Some(cluster) = TestCluster::start(&registry).await else {
        return;
    };
    let Some((git, sha)) = GitServer::start() else {
        return;
    };
    git.tag("v1.0.0", &sha);
    registry.push_static_base().await;
    for service in SERVICES {
        cluster.create_deployment(service, 120).await;
    }
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let image = format!("deploybot-test:{}", cluster.namespace);
    let binary = env!("CARGO_BIN_EXE_deploybot");
    script(
        &["scripts/build-image.sh"],
        &[("BINARY", binary), ("IMAGE", &image)],
    );

    let (bot, builds) = (
        format!("{}-bot", cluster.namespace),
        format!("{}-builds", cluster.namespace),
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("deploybot.toml");
    std::fs::write(
        &config,
        pod_config(
            &registry,
            &git,
            &github.server.uri(),
            &cluster.namespace,
            &builds,
        ),
    )
    .unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for (file, value) in [
        ("registry-password", registry.password.as_str()),
        ("myevents-webhook-secret", TEST_SECRET),
        ("myevents-status-token", STATUS_TOKEN),
    ] {
        std::fs::write(secrets.join(file), value).unwrap();
    }
    let port = free_port().to_string();
    let data = dir.path().join("pv");
    let env = [
        ("NAMESPACE", bot.as_str()),
        ("BUILDS_NAMESPACE", builds.as_str()),
        ("APPS_NAMESPACE", cluster.namespace.as_str()),
        ("IMAGE", image.as_str()),
        ("PORT", port.as_str()),
        ("CONFIG", config.to_str().unwrap()),
        ("SECRETS_DIR", secrets.to_str().unwrap()),
        ("DATA_DIR", data.to_str().unwrap()),
    ];
    script(&["scripts/k8s/deploybot-pod.sh", "up"], &env);
    let address = format!("http://127.0.0.1:{port}");

    let delivery = signed_push(&git.url, "refs/tags/v1.0.0", &sha);
    let mut request = reqwest::Client::new()
        .post(format!("{address}/hooks/myevents"))
        .body(delivery.body.clone());
    for (k, v) in &delivery.headers {
        request = request.header(k, v);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["job"]
        .as_i64()
        .unwrap();
    let mut build_pods = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(900);
    let detail = loop {
        for pod in pods_in(&cluster, &builds).await {
            build_pods.insert(pod);
        }
        let detail = job(&address, id).await;
        if !matches!(detail["job"]["state"].as_str(), Some("queued" | "running")) {
            break detail;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} did not finish: {detail:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    assert_eq!(detail["job"]["state"], "deployed", "{detail:#}");
    for service in SERVICES {
        assert!(
            build_pods
                .iter()
                .any(|p| p.ends_with(&format!("-{service}"))),
            "{service} built as a pod: {build_pods:?}"
        );
        let recorded = detail["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["service"] == service)
            .unwrap();
        let pushed = registry
            .digest(&format!("myevents/{service}"), "v1.0.0")
            .await;
        assert_eq!(pushed.as_deref(), recorded["digest"].as_str(), "{service}");
        let running = cluster.image(service).await;
        assert!(
            running.ends_with(recorded["digest"].as_str().unwrap()),
            "{service} runs {running}"
        );
    }
    let contexts = [
        "deploybot",
        "deploybot/eventservice",
        "deploybot/bookingservice",
        "deploybot/frontend",
    ];
    let seen = github.wait_for_results("context", &contexts, 60).await;
    for context in contexts {
        assert_eq!(
            states(&seen, "context", context).last().map(String::as_str),
            Some("success"),
            "{context}"
        );
    }
    assert_no_engine_container_of_deploybot();

    script(&["scripts/k8s/deploybot-pod.sh", "down"], &env);
    cluster.delete().await;
    let _ = Command::new("docker").args(["rmi", &image]).output();
    let _ = std::fs::remove_dir_all(Path::new(&data));
}

/// The pods of the builds namespace, as deploybot named them.
async fn pods_in(cluster: &TestCluster, namespace: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::Pod;
    kube::Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .list(&kube::api::ListParams::default().labels("deploybot.job"))
        .await
        .map(|list| list.into_iter().filter_map(|p| p.metadata.name).collect())
        .unwrap_or_default()
}

/// deploybot's Docker executor labels every container it makes with its instance (a digest of
/// its store's path, here the pod's): none exists but the build pods' own (the kubelet runs
/// them on this node's engine, with the pod's labels and its name).
fn assert_no_engine_container_of_deploybot() {
    let instance = deploybot::executor::instance_id(Path::new("/var/lib/deploybot"));
    let listed = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=deploybot.instance={instance}"),
            "--format",
            "{{.ID}} pod={{.Label \"io.kubernetes.pod.name\"}}",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    let made = listed
        .lines()
        .filter(|line| line.ends_with(" pod="))
        .count();
    assert_eq!(made, 0, "deploybot made engine containers:\n{listed}");
}
