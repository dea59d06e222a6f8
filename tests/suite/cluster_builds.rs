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
            policies = cb.cluster.network_policies().await;
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
    assert_eq!(cb.cluster.settled_leftovers().await, Vec::<String>::new());
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
    assert_eq!(cb.cluster.settled_leftovers().await, Vec::<String>::new());
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
    assert_eq!(cb.cluster.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_push_builds_on_the_cluster_and_pushes_nothing() {
    let Some(cb) = ClusterBuild::hello(|c| c).await else {
        return;
    };
    let build = &cb.build;

    let (job, detail_) = build
        .push_change("refs/heads/feature", hello_steps(CHECK_STEP))
        .await;

    assert_eq!(detail_.job.state, "success", "{}", build.log(job));
    assert_eq!(stage(&detail_, "web", "image").state, "success");
    assert_eq!(stage(&detail_, "web", "push").state, "skipped");
    let tag = format!("sha-{}", &detail_.job.sha[..12]);
    assert_eq!(build.registry.digest("myevents/web", &tag).await, None);
    assert_eq!(cb.cluster.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_registry_password_fails_the_cluster_build_clearly_and_shows_it_nowhere() {
    let wrong = "wrong-registry-password-3c9a";
    let mut real = String::new();
    let Some(cb) = ClusterBuild::hello(|c| {
        let line = c.lines().find(|l| l.starts_with("password = ")).unwrap();
        real = line
            .trim_start_matches("password = ")
            .trim_matches('"')
            .to_owned();
        c.replace(line, &format!("password = \"{wrong}\""))
    })
    .await
    else {
        return;
    };
    let build = &cb.build;

    let (job, detail_) = build.push_change("refs/tags/v1.0.0", |_| {}).await;

    assert_eq!(detail_.job.state, "failed", "{}", build.log(job));
    let failed: Vec<_> = detail_
        .stages
        .iter()
        .filter(|s| s.state == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:#?}");
    let said = failed[0].detail.clone().unwrap_or_default().to_lowercase();
    assert!(
        said.contains("unauthorized") || said.contains("authentication"),
        "{said}"
    );
    let everything = format!("{detail_:?}{}", build.log(job));
    assert!(!everything.contains(wrong), "the password leaked");
    assert!(!everything.contains(&real), "the real password leaked");
    assert_eq!(cb.cluster.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_branch_push_supersedes_a_cluster_build_and_its_pod_goes() {
    let Some(cb) = ClusterBuild::hello(|c| c).await else {
        return;
    };
    let build = &cb.build;
    let slow = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo started\", \"sleep 120\"]\n";
    let older_sha = build.git.commit("slow", "master", None, hello_steps(slow));
    let older = build.send("refs/heads/master", &older_sha).await;
    // The older build's step is running in its pod.
    while !build.log(older).contains("started") {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let newer_sha = build.git.commit("quick", "master", None, |dir| {
        std::fs::write(
            dir.join(".deploybot.toml"),
            include_str!("../fixtures/hello/.deploybot.toml"),
        )
        .unwrap();
    });
    let newer = build.send("refs/heads/master", &newer_sha).await;

    let older = build.finished(older).await;
    let newer = build.finished(newer).await;

    assert_eq!(older.job.state, "superseded", "{older:#?}");
    assert_eq!(newer.job.state, "success", "{}", build.log(newer.job.id));
    assert_eq!(cb.cluster.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_printed_by_a_step_in_a_pod_is_masked_in_the_stored_log() {
    let Some(cb) = ClusterBuild::hello(|c| c).await else {
        return;
    };
    let build = &cb.build;
    let password = build.registry.password.clone();
    let leaky = format!("\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo token is {password}\"]\n");

    let (job, detail_) = build
        .push_change("refs/heads/leaky", hello_steps(&leaky))
        .await;

    assert_eq!(detail_.job.state, "success", "{detail_:#?}");
    let log = build.log(job);
    assert!(log.contains("token is ***"), "{log}");
    assert!(!log.contains(&password));
    cb.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_touching_one_service_rebuilds_only_that_one_on_the_cluster() {
    let Some(cb) = ClusterBuild::hello(|c| c).await else {
        return;
    };
    let build = &cb.build;
    let api = "\n[[services]]\nname = \"api\"\ncontext = \"api\"\ndockerfile = \"Dockerfile\"\nimage = \"myevents/api\"\n";
    let (first, detail_) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            // Two services, each with its own context directory.
            for service in ["web", "api"] {
                std::fs::create_dir(dir.join(service)).unwrap();
                std::fs::copy(dir.join("Dockerfile"), dir.join(service).join("Dockerfile"))
                    .unwrap();
                std::fs::write(dir.join(service).join("health"), format!("{service} ok\n"))
                    .unwrap();
            }
            let path = dir.join(".deploybot.toml");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace("context = \".\"", "context = \"web\"")).unwrap();
            hello_steps(api)(dir);
        })
        .await;
    assert_eq!(detail_.job.state, "success", "{}", build.log(first));

    let (second, detail_) = build
        .push_change("refs/tags/v1.1.0", |dir| {
            std::fs::write(dir.join("api/health"), "api ok again\n").unwrap();
        })
        .await;

    assert_eq!(detail_.job.state, "success", "{}", build.log(second));
    let log = build.log(second);
    assert!(log.contains("tagged in the registry"), "{log}");
    let web = |tag: &'static str| build.registry.digest("myevents/web", tag);
    assert_eq!(web("v1.1.0").await, web("v1.0.0").await, "web is reused");
    let api = |tag: &'static str| build.registry.digest("myevents/api", tag);
    assert_ne!(api("v1.1.0").await, api("v1.0.0").await, "api is rebuilt");
    assert!(detail(&detail_, "web", "image").contains("reusing"));
    cb.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_build_killed_mid_way_completes_once_after_a_restart() {
    use crate::common::binary::Server;
    use crate::common::build::{finished, signed_push};
    use crate::common::cluster_build::ClusterParts;
    let Some(parts) = ClusterParts::start(false).await else {
        return;
    };
    let slow = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo started\", \"sleep 5\"]\n";
    let sha = parts
        .git
        .commit("slow", "master", Some("v3.0.0"), hello_steps(slow));
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("deploybot.toml");
    let config = parts.config.replacen(
        "[server]\n",
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n",
        1,
    );
    std::fs::write(&config_path, config).unwrap();
    let server = Server::start(dir.path(), &config_path, &[]);
    let delivery = signed_push(&parts.git.url, "refs/tags/v3.0.0", &sha);
    let job = server.post_delivery("myevents", &delivery).await;
    let jobs = deploybot::store::Jobs::open(&dir.path().join("data"), "test").unwrap();

    // Kill -9 once the step runs in its pod.
    while !parts
        .cluster
        .leftovers()
        .await
        .iter()
        .any(|o| o.starts_with("pod/"))
        || jobs
            .get(job)
            .unwrap()
            .unwrap()
            .stages
            .iter()
            .all(|s| s.state != "running" || s.service == "-")
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.kill_hard();
    let restarted = Server::start(dir.path(), &config_path, &[]);

    let detail_ = finished(&jobs, job).await;
    assert_eq!(
        detail_.job.state,
        "success",
        "{detail_:#?}\n{}",
        restarted.log()
    );
    assert_eq!(detail_.job.attempt, 2, "taken back once after the crash");
    let image = detail_.images.iter().find(|i| i.service == "web").unwrap();
    let pushed = parts.registry.digest("myevents/web", "v3.0.0").await;
    assert_eq!(
        pushed.as_deref(),
        image.digest.as_deref(),
        "one push, one digest"
    );
    assert_eq!(
        parts.cluster.settled_leftovers().await,
        Vec::<String>::new()
    );
    parts.cluster.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_over_its_timeout_in_a_pod_is_stopped_and_fails_as_timed_out() {
    let Some(cb) =
        ClusterBuild::hello(|c| c.replace("step_timeout_secs = 600", "step_timeout_secs = 5"))
            .await
    else {
        return;
    };
    let build = &cb.build;
    let endless = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo waiting\", \"sleep 600\"]\n";

    let (job, detail_) = build
        .push_change("refs/heads/slow", hello_steps(endless))
        .await;

    assert_eq!(detail_.job.state, "failed", "{}", build.log(job));
    let check = stage(&detail_, "web", "check");
    assert_eq!(check.state, "failed");
    assert!(
        detail(&detail_, "web", "check").contains("timed out after 5 s"),
        "{check:?}"
    );
    assert_eq!(cb.cluster.settled_leftovers().await, Vec::<String>::new());
    cb.cluster.delete().await;
}

/// Two steps in one toolchain share a container: each still has its own stage, output and
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_sharing_a_pod_container_each_report_their_own_stage_and_a_missing_artifact() {
    let Some(cb) = ClusterBuild::hello(|c| c).await else {
        return;
    };
    let build = &cb.build;
    let steps = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo checked\"]\n\n[[services.steps]]\nstage = \"compile\"\nimage = \"busybox\"\ncommands = [\"echo compiled\"]\nartifacts = [\"app.bin\"]\n";

    let (job, detail_) = build
        .push_change("refs/heads/two", hello_steps(steps))
        .await;

    assert_eq!(detail_.job.state, "failed", "{}", build.log(job));
    assert_eq!(stage(&detail_, "web", "check").state, "success");
    assert_eq!(stage(&detail_, "web", "compile").state, "failed");
    let said = detail(&detail_, "web", "compile");
    assert!(
        said.contains("the step did not produce app.bin in ."),
        "{said}"
    );
    let chunks = build.jobs().logs(job, Some("web"), 0).unwrap();
    let of = |stage: &str| -> String {
        chunks
            .iter()
            .filter(|c| c.stage == stage)
            .map(|c| c.text.clone())
            .collect()
    };
    assert!(
        of("check").contains("checked") && !of("check").contains("compiled"),
        "{chunks:?}"
    );
    assert!(of("compile").contains("compiled"), "{chunks:?}");
    assert!(
        !build.log(job).contains("::deploybot::"),
        "markers are not shown"
    );
    cb.cluster.delete().await;
}

/// A step replaces the committed context directory with a link out of the checkout: the
/// builder refuses it, naming it, before buildah reads anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_context_a_step_links_out_of_the_checkout_fails_the_image_stage_naming_it() {
    let Some(cb) = ClusterBuild::hello(|c| c).await else {
        return;
    };
    let build = &cb.build;
    let relink = "\n[[services.steps]]\nstage = \"compile\"\nimage = \"busybox\"\nworkdir = \".\"\ncommands = [\"rm -rf ctx\", \"ln -s /run/deploybot ctx\"]\n";

    let (job, detail_) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            std::fs::create_dir(dir.join("ctx")).unwrap();
            std::fs::copy(dir.join("Dockerfile"), dir.join("ctx/Dockerfile")).unwrap();
            std::fs::copy(dir.join("health"), dir.join("ctx/health")).unwrap();
            let path = dir.join(".deploybot.toml");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace("context = \".\"", "context = \"ctx\"")).unwrap();
            hello_steps(relink)(dir);
        })
        .await;

    assert_eq!(detail_.job.state, "failed", "{}", build.log(job));
    assert_eq!(stage(&detail_, "web", "compile").state, "success");
    let said = detail(&detail_, "web", "image");
    assert!(
        said.contains("build context ctx: ctx points outside the checkout"),
        "{said}"
    );
    assert_eq!(build.registry.digest("myevents/web", "v1.0.0").await, None);
    cb.cluster.delete().await;
}
