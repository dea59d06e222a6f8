//! The API server is stopped in the middle of a rollout: the rollout resumes when it returns
//! (or fails clearly after its deadline), and the Deployment is patched once, never twice.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::build::Build;
use crate::common::cluster::{run_dir, TestCluster};
use crate::common::infra::{docker_with_base_images, GitServer, Registry};

/// Stops kube-apiserver hard (`kill -9`, by the PID cluster-up.sh recorded: a graceful stop
/// waits for its watches to end); returns once it is gone.
fn stop_api_server() {
    let pid = std::fs::read_to_string(run_dir().join("kube-apiserver.pid")).unwrap();
    let pid = pid.trim();
    Command::new("kill").args(["-9", pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "kube-apiserver did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts it again the one way the cluster is started (scripts/k8s/cluster-up.sh leaves the
/// components still running alone and waits until the API server is ready).
fn start_api_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/k8s/cluster-up.sh");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "cluster-up.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_whose_api_server_stops_resumes_when_it_returns_and_patches_once() {
    let Some(()) = docker_with_base_images() else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return;
    };
    let Some((git, sha)) = GitServer::start_fixture("hello") else {
        return;
    };
    let Some(cluster) = TestCluster::start(&registry).await else {
        return;
    };
    cluster.create_deployment("web", 120).await;
    // New pods take ~20 s to be ready: the rollout is under way when the API server stops.
    let slow = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "api", "readinessProbe": {"initialDelaySeconds": 20}}
    ]}}}});
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(cluster.client.clone(), &cluster.namespace);
    deployments
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(slow),
        )
        .await
        .unwrap();
    cluster.wait_available("web").await;
    let before = cluster.rollout_history("web").await.len();
    let environment = cluster.environment(&cluster.token_file);
    let build = Build::with_parts(registry, git, sha.clone(), None, &environment)
        .await
        .unwrap();

    build.git.tag("v3.0.0", &sha);
    let job = build.send("refs/tags/v3.0.0", &sha).await;
    let jobs = build.jobs();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let detail = jobs.get(job).unwrap().unwrap();
        if detail.deploys.iter().any(|d| d.state.as_str() == "patched") {
            break;
        }
        assert!(Instant::now() < deadline, "never patched: {detail:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tokio::task::block_in_place(stop_api_server);
    tokio::time::sleep(Duration::from_secs(10)).await;
    tokio::task::block_in_place(start_api_server);

    let detail = build.finished(job).await;
    assert_eq!(
        detail.job.state.as_str(),
        "deployed",
        "{detail:#?}\n{}",
        build.log(job)
    );
    assert_eq!(detail.deploys.len(), 1, "{:#?}", detail.deploys);
    assert_eq!(
        cluster.rollout_history("web").await.len(),
        before + 1,
        "one patch, one new ReplicaSet"
    );
    let image = &detail.images[0];
    assert_eq!(
        cluster.image("web").await,
        format!("{}@{}", image.reference, image.digest.clone().unwrap())
    );
    cluster.delete().await;
}
