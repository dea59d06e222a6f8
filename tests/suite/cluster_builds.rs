//! The Kubernetes executor on the real local cluster: each service's build is a pod in the
//! builds namespace; no Docker engine is used by deploybot to build or push.

use crate::common::build::{detail, hello_steps, stage};
use crate::common::cluster_build::ClusterBuild;

const CHECK_STEP: &str = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo checking the health page\", \"test -f health\", \"sleep 2\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_push_is_built_and_pushed_by_a_pod_and_leaves_nothing_behind() {
    let Some(cb) =
        ClusterBuild::hello(|c| c.replace("allow_network = true", "allow_network = false")).await
    else {
        return;
    };
    let build = &cb.build;
    let sha = build.git.commit(
        "refs/tags/v1.0.0",
        "master",
        Some("v1.0.0"),
        hello_steps(CHECK_STEP),
    );
    let job = build.send("refs/tags/v1.0.0", &sha).await;
    let mut policies = Vec::new();
    while matches!(
        build.jobs().get(job).unwrap().unwrap().job.state.as_str(),
        "queued" | "running"
    ) {
        if policies.is_empty() {
            policies = cb.network_policies().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let detail_ = build.finished(job).await;

    let log = build.log(job);
    assert_eq!(detail_.job.state, "success", "{detail_:#?}\n{log}");
    assert_eq!(stage(&detail_, "web", "check").state, "success");
    assert!(log.contains("checking the health page"), "{log}");
    let image = detail_.images.iter().find(|i| i.service == "web").unwrap();
    let pushed = build.registry.digest("myevents/web", "v1.0.0").await;
    assert_eq!(pushed.as_deref(), image.digest.as_deref(), "{log}");
    let labels = build.registry.labels("myevents/web", "v1.0.0").await;
    assert_eq!(labels["org.opencontainers.image.revision"], sha.as_str());
    assert_eq!(
        labels["org.opencontainers.image.source"],
        build.git.url.as_str()
    );
    assert_eq!(
        policies.len(),
        1,
        "a build without network gets an egress policy"
    );
    assert_eq!(cb.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_in_a_pod_fails_its_stage_with_exit_code_command_and_log_tail() {
    let Some(cb) = ClusterBuild::hello(|c| c).await else {
        return;
    };
    let build = &cb.build;
    let failing = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo vet found a problem\", \"exit 3\"]\n";

    let (job, detail_) = build
        .push_change("refs/tags/v1.0.0", hello_steps(failing))
        .await;

    assert_eq!(detail_.job.state, "failed", "{}", build.log(job));
    let check = stage(&detail_, "web", "check");
    assert_eq!(check.state, "failed");
    assert_eq!(check.exit_code, Some(3));
    let said = detail(&detail_, "web", "check");
    assert!(said.contains("`exit 3` exited with 3"), "{said}");
    assert!(said.contains("vet found a problem"), "{said}");
    assert_eq!(stage(&detail_, "web", "image").state, "skipped");
    assert_eq!(build.registry.digest("myevents/web", "v1.0.0").await, None);
    assert_eq!(cb.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}

/// k8s/builds.yaml's Role, and nothing more, is enough to build on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builds_role_is_all_the_kubernetes_executor_needs() {
    let Some(cb) = ClusterBuild::hello_narrow().await else {
        return;
    };
    let build = &cb.build;

    let (job, detail_) = build
        .push_change("refs/tags/v1.0.0", hello_steps(CHECK_STEP))
        .await;

    assert_eq!(detail_.job.state, "success", "{}", build.log(job));
    assert!(build
        .registry
        .digest("myevents/web", "v1.0.0")
        .await
        .is_some());
    assert_eq!(cb.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}
