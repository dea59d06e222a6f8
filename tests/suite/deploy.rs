//! Deploys for real: images built and pushed by the worker roll out to Deployments on the
//! local Kubernetes (v1.20.2 from Debian's sources): a real deployment controller, real
//! ReplicaSets, real pods pulling from the test's registry, readiness probes deciding health.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::build::{finished, signed_push, stage, Build, SERVICES};
use crate::common::cluster::{TestCluster, INITIAL_IMAGE};
use crate::common::infra::{docker_with_base_images, GitServer, Registry};

/// A deploybot building `fixture` and deploying tags to a fresh namespace.
struct Deploy {
    build: Build,
    cluster: TestCluster,
}

impl Deploy {
    async fn start(
        fixture: &str,
        deployments: &[&str],
        progress_deadline_secs: i32,
    ) -> Option<Deploy> {
        Deploy::start_with(fixture, deployments, progress_deadline_secs, None, "").await
    }

    /// `token_file`: the cluster credential deploybot uses (default: the admin token);
    /// `extra`: keys for the project, then any tables (see `config_with`).
    async fn start_with(
        fixture: &str,
        deployments: &[&str],
        progress_deadline_secs: i32,
        token_file: Option<&Path>,
        extra: &str,
    ) -> Option<Deploy> {
        docker_with_base_images()?;
        let registry = Registry::start()?;
        let (git, sha) = GitServer::start_fixture(fixture)?;
        let cluster = TestCluster::start(&registry).await?;
        for name in deployments {
            cluster
                .create_deployment(name, progress_deadline_secs)
                .await;
        }
        let environment = cluster.environment(token_file.unwrap_or(&cluster.token_file));
        // The project's own keys and other tables first, then the environment.
        let extra = format!("{extra}\n{environment}");
        let build = Build::with_parts(registry, git, sha, None, &extra).await?;
        Some(Deploy { build, cluster })
    }

    /// Deploying to `web` as the narrow test user, whom a Role grants only `verbs` on
    /// Deployments in the test's namespace.
    async fn as_narrow_user(verbs: &[&str]) -> Option<Deploy> {
        Deploy::as_narrow_user_on(verbs, &[]).await
    }

    /// The same, the Role's rule naming only the Deployments `names` (`resourceNames`).
    async fn as_narrow_user_on(verbs: &[&str], names: &[&str]) -> Option<Deploy> {
        let narrow = crate::common::cluster::run_dir().join("narrow-token");
        let deploy = Deploy::start_with("hello", &["web"], 30, Some(&narrow), "").await?;
        deploy.cluster.grant_narrow_user(verbs, names).await;
        Some(deploy)
    }

    /// Tags `sha` as `tag`, sends the signed tag push, and waits for the job to end.
    async fn push_tag(&self, tag: &str, sha: &str) -> deploybot::store::JobDetail {
        self.build.git.tag(tag, sha);
        let job = self.build.send(&format!("refs/tags/{tag}"), sha).await;
        self.build.finished(job).await
    }

    /// A release the test builds on: `tag` on `sha` pushed, and deployed.
    async fn released(&self, tag: &str, sha: &str) -> deploybot::store::JobDetail {
        let detail = self.push_tag(tag, sha).await;
        assert_eq!(detail.job.state, "deployed", "{}", self.explain(&detail));
        detail
    }

    /// `registry/myevents/<service>:<tag>@<digest>` as the job recorded it.
    fn pinned(detail: &deploybot::store::JobDetail, service: &str) -> String {
        let image = detail.images.iter().find(|i| i.service == service).unwrap();
        format!("{}@{}", image.reference, image.digest.clone().unwrap())
    }

    /// A folder with a deploybot.toml for this test's registry, repository and namespace,
    /// `server_keys` added to its `[server]` table.
    fn config_dir(&self, server_keys: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::common::build::config_with(
            &self.build.registry,
            &self.build.git,
            &self.build.registry.password,
            &self.cluster.environment(&self.cluster.token_file),
        )
        .replacen("[server]\n", &format!("[server]\n{server_keys}"), 1);
        std::fs::write(dir.path().join("deploybot.toml"), config).unwrap();
        dir
    }

    /// The same, for CLI commands on the in-process app's store.
    fn cli_config(&self) -> tempfile::TempDir {
        let data_dir = self.build.app.data_dir.path().display();
        self.config_dir(&format!("data_dir = \"{data_dir}\"\n"))
    }

    /// `deploybot rollback ARGS` on the in-process app's store: exit status and all it printed.
    fn cli_rollback(dir: &Path, args: &[&str]) -> (std::process::ExitStatus, String) {
        let mut all = vec!["rollback", "--config", "deploybot.toml"];
        all.extend_from_slice(args);
        let out = crate::common::binary::run(dir, &all, &[]);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, printed)
    }

    /// Makes `name`'s pods take ~`seconds` to become ready, and waits for that rollout.
    async fn slow_readiness(&self, name: &str, seconds: i32) {
        let slow = serde_json::json!({"spec": {"template": {"spec": {"containers": [
            {"name": "api", "readinessProbe": {"initialDelaySeconds": seconds}}
        ]}}}});
        let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.cluster.client.clone(), &self.cluster.namespace);
        deployments
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Strategic(slow),
            )
            .await
            .unwrap();
        self.cluster.wait_available(name).await;
    }

    fn explain(&self, detail: &deploybot::store::JobDetail) -> String {
        format!("{detail:#?}\n{}", self.build.log(detail.job.id))
    }

    async fn finish(self) {
        self.cluster.delete().await;
    }
}

/// A commit to the hello fixture whose image never passes its readiness probe.
fn never_ready(dir: &Path) {
    runs_instead(dir, r#"CMD ["sleep","3600"]"#);
}

/// A commit to the hello fixture whose container exits with code 3 at once, again and again.
fn crashes(dir: &Path) {
    runs_instead(dir, r#"CMD ["sh","-c","exit 3"]"#);
}

fn runs_instead(dir: &Path, command: &str) {
    let dockerfile = std::fs::read_to_string(dir.join("Dockerfile")).unwrap();
    let broken = dockerfile.replace(r#"CMD ["httpd","-f","-p","8080","-h","/www"]"#, command);
    assert_ne!(dockerfile, broken);
    std::fs::write(dir.join("Dockerfile"), broken).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_push_rolls_the_image_out_pinned_by_digest_and_the_job_is_deployed() {
    let Some(deploy) = Deploy::start("hello", &["web"], 30).await else {
        return;
    };
    let before = deploy
        .cluster
        .deployment("web")
        .await
        .metadata
        .generation
        .unwrap();

    let detail = deploy.push_tag("v1.0.0", &deploy.build.sha).await;

    assert_eq!(detail.job.state, "deployed", "{}", deploy.explain(&detail));
    let pinned = Deploy::pinned(&detail, "web");
    assert!(pinned.contains(":v1.0.0@sha256:"), "{pinned}");
    assert_eq!(deploy.cluster.image("web").await, pinned);
    let digest = pinned.rsplit('@').next().unwrap();
    let running = deploy.cluster.ready_pod_images("web").await;
    assert!(
        !running.is_empty() && running.iter().all(|id| id.ends_with(digest)),
        "the ready pods run {digest}: {running:?}"
    );
    assert_eq!(
        deploy
            .cluster
            .deployment("web")
            .await
            .metadata
            .generation
            .unwrap(),
        before + 1,
        "one patch"
    );
    let annotations = deploy.cluster.annotations("web").await;
    assert_eq!(annotations["deploybot.dev/tag"], "v1.0.0");
    assert_eq!(annotations["deploybot.dev/sha"], deploy.build.sha);
    assert_eq!(annotations["deploybot.dev/previous-image"], INITIAL_IMAGE);
    assert!(
        annotations["kubernetes.io/change-cause"].contains("v1.0.0"),
        "{annotations:?}"
    );
    let record = &detail.deploys[0];
    assert_eq!(
        (record.state.as_str(), record.previous_image.as_deref()),
        ("deployed", Some(INITIAL_IMAGE))
    );
    assert_eq!(stage(&detail, "web", "deploy").state, "success");
    deploy.finish().await;
}

/// A second tag on the same commit reuses its image (the same digest): deploybot writes the
/// new release on the Deployment's own annotations and leaves its pod template, and so its
/// pods, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tag_on_the_same_digest_changes_only_the_deployments_annotations_and_restarts_no_pod()
{
    use crate::common::forge_double::{ForgeDouble, STATUS_TOKEN};
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let statuses = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"\n\n[report]\nretry_base_ms = 20\n",
        github.server.uri()
    );
    let Some(deploy) = Deploy::start_with("hello", &["web"], 30, None, &statuses).await else {
        return;
    };
    // Arrange: v1.0.0 runs.
    let first = deploy.released("v1.0.0", &deploy.build.sha).await;
    let running = Deploy::pinned(&first, "web");
    let generation = deploy
        .cluster
        .deployment("web")
        .await
        .metadata
        .generation
        .unwrap();
    let pods = deploy.cluster.pods("web").await;
    let replica_sets = deploy.cluster.replica_sets("web").await;
    let revisions: Vec<i64> = deploy
        .cluster
        .rollout_history("web")
        .await
        .into_keys()
        .collect();

    // Act: v1.0.1 on the same commit.
    let detail = deploy.push_tag("v1.0.1", &deploy.build.sha).await;

    // Assert: the same digest, recorded as unchanged; nothing restarted.
    assert_eq!(detail.job.state, "deployed", "{}", deploy.explain(&detail));
    let pinned = Deploy::pinned(&detail, "web");
    let digest = |image: &str| image.rsplit('@').next().unwrap().to_owned();
    assert!(pinned.contains(":v1.0.1@sha256:"), "{pinned}");
    assert_eq!(digest(&pinned), digest(&running), "the image is reused");
    let record = &detail.deploys[0];
    assert_eq!(
        (record.state.as_str(), record.previous_image.as_deref()),
        ("unchanged", Some(running.as_str())),
        "{}",
        deploy.explain(&detail)
    );
    assert_eq!(
        deploy.cluster.image("web").await,
        running,
        "the same template"
    );
    // The controller has seen the change before the cluster is looked at.
    deploy.cluster.wait_available("web").await;
    assert_eq!(
        deploy
            .cluster
            .deployment("web")
            .await
            .metadata
            .generation
            .unwrap(),
        generation + 1,
        "the API server counts a Deployment's annotations in its generation (the controller \
         copies them to the ReplicaSet); the revision, ReplicaSets and pods show no rollout"
    );
    assert_eq!(deploy.cluster.replica_sets("web").await, replica_sets);
    assert_eq!(deploy.cluster.pods("web").await, pods, "the same pod runs");
    let history = deploy.cluster.rollout_history("web").await;
    assert_eq!(history.keys().copied().collect::<Vec<_>>(), revisions);
    let (_, now) = history.last_key_value().unwrap();
    assert!(
        now.contains("v1.0.1"),
        "rollout history names the release: {history:?}"
    );
    let deploy_stage = stage(&detail, "web", "deploy");
    assert_eq!(deploy_stage.state, "success");
    let said = deploy_stage.detail.clone().unwrap_or_default();
    assert!(
        said.starts_with("Unchanged in production") && said.contains(&digest(&running)),
        "{said}"
    );
    let annotations = deploy.cluster.annotations("web").await;
    assert_eq!(annotations["deploybot.dev/tag"], "v1.0.1");
    assert_eq!(
        annotations["deploybot.dev/job"],
        detail.job.id.to_string(),
        "{annotations:?}"
    );
    assert!(
        annotations["kubernetes.io/change-cause"].contains("v1.0.1"),
        "{annotations:?}"
    );
    let says_unchanged = |seen: &[crate::common::forge_double::Seen]| {
        seen.iter().any(|s| {
            s.body["context"] == "deploybot/web"
                && s.body["description"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("Unchanged in production: already runs"))
        })
    };
    let seen = github.wait_until(30, says_unchanged).await;
    assert!(
        says_unchanged(&seen),
        "the commit status says so: {seen:#?}"
    );
    let metrics = deploy.build.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .contains(r#"deploybot_deploys_total{environment="production",outcome="unchanged"} 1"#),
        "{metrics}"
    );
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_myevents_tag_push_ends_with_all_three_deployments_running_the_new_images() {
    let Some(deploy) = Deploy::start("myevents", &SERVICES, 60).await else {
        return;
    };

    let detail = deploy.push_tag("v1.0.0", &deploy.build.sha).await;

    assert_eq!(detail.job.state, "deployed", "{}", deploy.explain(&detail));
    for service in SERVICES {
        let pinned = Deploy::pinned(&detail, service);
        assert_eq!(deploy.cluster.image(service).await, pinned, "{service}");
        let digest = pinned.rsplit('@').next().unwrap();
        let running = deploy.cluster.ready_pod_images(service).await;
        assert!(
            !running.is_empty() && running.iter().all(|id| id.ends_with(digest)),
            "{service}'s ready pods run {digest}: {running:?}"
        );
        let deploy_stage = stage(&detail, service, "deploy");
        assert_eq!(deploy_stage.state, "success", "{service}");
        assert!(deploy_stage
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("production"));
    }
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_never_becomes_ready_is_rolled_back_with_the_conditions_message() {
    use crate::common::forge_double::{states, ForgeDouble, STATUS_TOKEN};
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let statuses = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"\n\n[report]\nretry_base_ms = 20\n",
        github.server.uri()
    );
    let Some(deploy) = Deploy::start_with("hello", &["web"], 12, None, &statuses).await else {
        return;
    };
    let good = deploy.released("v1.0.0", &deploy.build.sha).await;
    let good_image = Deploy::pinned(&good, "web");

    let sha = deploy
        .build
        .git
        .commit("never ready", "master", None, never_ready);
    let detail = deploy.push_tag("v1.1.0", &sha).await;

    assert_eq!(
        detail.job.state,
        "rolled_back",
        "{}",
        deploy.explain(&detail)
    );
    let record = &detail.deploys[0];
    assert_eq!(record.state.as_str(), "rolled_back");
    let reason = record.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("ProgressDeadlineExceeded") && reason.contains("has timed out progressing"),
        "the condition's reason and message: {reason}"
    );
    assert!(
        reason.contains("container api is running but not ready"),
        "and why its pod was not ready: {reason}"
    );
    assert_eq!(record.previous_image.as_deref(), Some(good_image.as_str()));
    assert_eq!(
        deploy.cluster.image("web").await,
        good_image,
        "the previous image is back"
    );
    let deploy_stage = stage(&detail, "web", "deploy");
    assert_eq!(deploy_stage.state, "rolled_back");
    assert!(
        deploy_stage
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("ProgressDeadlineExceeded"),
        "{deploy_stage:?}"
    );
    let error = detail.job.error.clone().unwrap_or_default();
    assert!(error.contains("web rolled back"), "{error}");
    let page = deploy
        .build
        .app
        .get(&format!("/jobs/{}", detail.job.id))
        .await;
    let page = page.text().await.unwrap();
    assert!(
        page.contains("id=\"deploys\"")
            && page.contains("rolled back")
            && page.contains("has timed out progressing"),
        "the job page shows the rollback and why: {page}"
    );
    let seen = github
        .wait_until(30, |seen| {
            seen.iter().any(|s| {
                s.path.ends_with(&sha)
                    && s.body["context"] == "deploybot/web"
                    && s.body["state"] == "failure"
            })
        })
        .await;
    let on_sha: Vec<_> = seen
        .iter()
        .filter(|s| s.path.ends_with(&sha))
        .cloned()
        .collect();
    let web = states(&on_sha, "context", "deploybot/web");
    assert_eq!(web.last().map(String::as_str), Some("failure"), "{web:?}");
    let last = on_sha
        .iter()
        .rev()
        .find(|s| s.body["context"] == "deploybot/web")
        .unwrap();
    let words = last.body["description"].as_str().unwrap();
    assert!(
        words.starts_with("Rolled back in production: ProgressDeadlineExceeded"),
        "{words}"
    );
    let metrics = deploy.build.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(
            r#"deploybot_deploys_total{environment="production",outcome="rolled_back"} 1"#
        ),
        "{metrics}"
    );
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_image_is_rolled_back_naming_its_pod_and_exit_code() {
    let Some(deploy) = Deploy::start("hello", &["web"], 15).await else {
        return;
    };
    let good = deploy.released("v1.0.0", &deploy.build.sha).await;

    let sha = deploy.build.git.commit("crashes", "master", None, crashes);
    let detail = deploy.push_tag("v1.1.0", &sha).await;

    assert_eq!(
        detail.job.state,
        "rolled_back",
        "{}",
        deploy.explain(&detail)
    );
    let reason = detail.deploys[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("pod web-")
            && reason.contains("container api")
            && reason.contains("exit code 3"),
        "the reason names the pod, the container and how it exited: {reason}"
    );
    assert_eq!(
        deploy.cluster.image("web").await,
        Deploy::pinned(&good, "web")
    );
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_patch_permission_fails_the_deploy_naming_the_verb_resource_and_namespace() {
    let Some(deploy) = Deploy::as_narrow_user(&["get", "list", "watch"]).await else {
        return;
    };

    let detail = deploy.push_tag("v1.0.0", &deploy.build.sha).await;

    assert_eq!(detail.job.state, "failed", "{}", deploy.explain(&detail));
    let reason = detail.deploys[0].reason.clone().unwrap_or_default();
    for word in [
        "forbidden",
        "patch",
        "deployments",
        &deploy.cluster.namespace,
    ] {
        assert!(reason.contains(word), "{word:?} in {reason}");
    }
    assert_eq!(
        deploy.cluster.image("web").await,
        INITIAL_IMAGE,
        "nothing changed"
    );
    let narrow = crate::common::cluster::run_dir().join("narrow-token");
    let token = std::fs::read_to_string(narrow).unwrap();
    assert!(!deploy.build.log(detail.job.id).contains(token.trim()));
    deploy.finish().await;
}

/// The verbs of k8s/rbac.yaml's Role, and nothing more, are enough to deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_and_patch_on_deployments_are_all_a_deploy_needs() {
    let Some(deploy) = Deploy::as_narrow_user(&["get", "watch", "patch"]).await else {
        return;
    };

    let detail = deploy.push_tag("v1.0.0", &deploy.build.sha).await;

    assert_eq!(detail.job.state, "deployed", "{}", deploy.explain(&detail));
    deploy.finish().await;
}

/// k8s/rbac.yaml's Role narrowed by `resourceNames`: the watch names its Deployment in a field
/// selector, which is what lets the API server authorize it by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_naming_only_the_deployed_deployment_is_enough_to_deploy() {
    let Some(deploy) = Deploy::as_narrow_user_on(&["get", "watch", "patch"], &["web"]).await else {
        return;
    };

    let detail = deploy.push_tag("v1.0.0", &deploy.build.sha).await;

    assert_eq!(detail.job.state, "deployed", "{}", deploy.explain(&detail));
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_missing_from_the_roles_resource_names_is_refused_naming_verb_resource_and_namespace(
) {
    let Some(deploy) = Deploy::as_narrow_user_on(&["get", "watch", "patch"], &["api"]).await else {
        return;
    };

    let detail = deploy.push_tag("v1.0.0", &deploy.build.sha).await;

    assert_eq!(detail.job.state, "failed", "{}", deploy.explain(&detail));
    let reason = detail.deploys[0].reason.clone().unwrap_or_default();
    for word in [
        "forbidden",
        "get",
        "deployments",
        "\"web\"",
        &deploy.cluster.namespace,
        "resourceNames",
    ] {
        assert!(reason.contains(word), "{word:?} in {reason}");
    }
    assert_eq!(
        deploy.cluster.image("web").await,
        INITIAL_IMAGE,
        "nothing changed"
    );
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_does_not_exist_fails_the_deploy_naming_it() {
    let Some(deploy) = Deploy::start("hello", &[], 30).await else {
        return;
    };

    let detail = deploy.push_tag("v1.0.0", &deploy.build.sha).await;

    assert_eq!(detail.job.state, "failed", "{}", deploy.explain(&detail));
    let reason = detail.deploys[0].reason.clone().unwrap_or_default();
    let named = format!("Deployment {}/web not found", deploy.cluster.namespace);
    assert!(reason.contains(&named), "{reason}");
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_older_tag_does_not_overwrite_a_newer_one_already_deployed() {
    let Some(deploy) = Deploy::start("hello", &["web"], 30).await else {
        return;
    };
    let newer = deploy.released("v2.0.0", &deploy.build.sha).await;
    let generation = deploy.cluster.deployment("web").await.metadata.generation;

    let sha = deploy
        .build
        .git
        .commit("an old fix, tagged late", "master", None, |_| {});
    let older = deploy.push_tag("v1.9.0", &sha).await;

    assert_eq!(older.job.state, "success", "{}", deploy.explain(&older));
    let record = &older.deploys[0];
    assert_eq!(record.state.as_str(), "skipped");
    assert!(
        record
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("v2.0.0 is newer than v1.9.0"),
        "{record:?}"
    );
    assert_eq!(
        deploy.cluster.image("web").await,
        Deploy::pinned(&newer, "web")
    );
    assert_eq!(
        deploy.cluster.deployment("web").await.metadata.generation,
        generation
    );
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tags_for_the_same_service_deploy_one_after_the_other() {
    let Some(deploy) = Deploy::start("hello", &["web"], 30).await else {
        return;
    };
    let first_sha = deploy.build.sha.clone();
    let second_sha = deploy.build.git.commit("second", "master", None, |dir| {
        std::fs::write(dir.join("health"), "ok 2\n").unwrap();
    });
    deploy.build.git.tag("v1.1.0", &first_sha);
    deploy.build.git.tag("v1.2.0", &second_sha);

    let a = deploy.build.send("refs/tags/v1.1.0", &first_sha).await;
    let b = deploy.build.send("refs/tags/v1.2.0", &second_sha).await;
    let (a, b) = (
        deploy.build.finished(a).await,
        deploy.build.finished(b).await,
    );

    let mut records: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|d| d.deploys.clone())
        .filter(|r| r.state.as_str() == "deployed")
        .collect();
    records.sort_by(|x, y| x.finished_at.cmp(&y.finished_at));
    for pair in records.windows(2) {
        assert!(
            pair[1].created_at >= pair[0].finished_at.clone().unwrap()
                || pair[1].patched_at >= pair[0].finished_at,
            "the second rollout started after the first ended: {records:#?}"
        );
    }
    assert_eq!(
        deploy.cluster.image("web").await,
        Deploy::pinned(&b, "web"),
        "the newer tag is what runs\n{}\n{}",
        deploy.explain(&a),
        deploy.explain(&b)
    );
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_fails_the_deploy_with_a_clear_message() {
    docker_with_base_images();
    let Some(registry) = Registry::start() else {
        return;
    };
    let Some((git, sha)) = GitServer::start_fixture("hello") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "unreachable-token-value").unwrap();
    let environment = format!(
        "[[environments]]\nname = \"production\"\napi_server = \"https://127.0.0.1:9\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let build = Build::with_parts(registry, git, sha.clone(), None, &environment)
        .await
        .unwrap();
    build.git.tag("v1.0.0", &sha);
    let job = build.send("refs/tags/v1.0.0", &sha).await;
    let detail = build.finished(job).await;

    assert_eq!(detail.job.state, "failed", "{detail:#?}");
    let reason = detail.deploys[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("unreachable") && reason.contains("Deployment default/web"),
        "{reason}"
    );
    assert!(!format!("{detail:?}").contains("unreachable-token-value"));
}

/// Kill -9 while deploybot waits for a rollout; the restarted process finds the change on
/// record and waits for it instead of patching again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_killed_during_the_rollout_wait_resumes_waiting_and_patches_once() {
    stopped_mid_rollout(crate::common::binary::Server::kill_hard).await;
}

/// SIGTERM while deploybot waits for a rollout (deploybot restarted, or rolled out itself):
/// it exits at once, cleanly, and the next start finishes the rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_stopped_by_sigterm_during_the_rollout_wait_resumes_after_the_restart() {
    stopped_mid_rollout(|server| {
        let asked = Instant::now();
        let (status, log) = server.terminate();
        assert!(status.success(), "{status}: {log}");
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "it does not wait out the rollout before exiting: {:?}",
            asked.elapsed()
        );
        log
    })
    .await;
}

async fn stopped_mid_rollout(stop: impl FnOnce(crate::common::binary::Server) -> String) {
    use crate::common::binary::Server;
    let Some(deploy) = Deploy::start("hello", &["web"], 60).await else {
        return;
    };
    // Slow readiness: the rollout takes ~6 s, time to kill deploybot in the middle.
    deploy.slow_readiness("web", 6).await;
    let before = deploy
        .cluster
        .deployment("web")
        .await
        .metadata
        .generation
        .unwrap();
    // The in-process app is not used here: the real binary is, so it can be killed.
    let dir = deploy.config_dir("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n");
    let config_path = dir.path().join("deploybot.toml");
    let server = Server::start(dir.path(), &config_path, &[("RUST_LOG", "debug")]);
    deploy.build.git.tag("v1.0.0", &deploy.build.sha);
    let delivery = signed_push(&deploy.build.git.url, "refs/tags/v1.0.0", &deploy.build.sha);
    let job = server.post_delivery("myevents", &delivery).await;
    let jobs = deploybot::store::Jobs::open(&dir.path().join("data"), "test").unwrap();

    until_patched(&jobs, job).await;
    let first_log = stop(server);
    let restarted = Server::start(dir.path(), &config_path, &[("RUST_LOG", "debug")]);
    let detail = finished(&jobs, job).await;

    assert_eq!(
        detail.job.state,
        "deployed",
        "{detail:#?}\n{}",
        restarted.log()
    );
    assert_eq!(detail.job.attempt, 2);
    assert_eq!(
        deploy
            .cluster
            .deployment("web")
            .await
            .metadata
            .generation
            .unwrap(),
        before + 1,
        "patched once, not twice"
    );
    let log: String = jobs
        .logs(job, Some("web"), 0)
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert!(log.contains("resuming"), "{log}");
    let token = std::fs::read_to_string(&deploy.cluster.token_file).unwrap();
    for output in [first_log, restarted.log(), log] {
        assert!(!output.contains(token.trim()), "the cluster token leaked");
        assert!(!output.contains(&deploy.build.registry.password));
    }
    deploy.finish().await;
}

/// Waits until `job`'s rollout has sent its change and waits for the Deployment.
async fn until_patched(jobs: &deploybot::store::Jobs, job: i64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let patched = jobs
            .deploys_of_job(job)
            .unwrap()
            .iter()
            .any(|d| d.state.as_str() == "patched");
        if patched {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never patched: {:#?}",
            jobs.get(job).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two tags deployed, v1.0.0 then v1.1.0: the service's record to roll back on.
async fn two_releases(deploy: &Deploy) -> (String, String) {
    let first = deploy.released("v1.0.0", &deploy.build.sha).await;
    let sha = deploy.build.git.commit("v1.1", "master", None, |dir| {
        std::fs::write(dir.join("health"), "ok 1.1\n").unwrap();
    });
    let second = deploy.released("v1.1.0", &sha).await;
    (
        Deploy::pinned(&first, "web"),
        Deploy::pinned(&second, "web"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_action_puts_the_previous_image_back_and_needs_the_token() {
    let extra = "[web]\naction_token = \"rollback-action-token\"\n";
    let Some(deploy) = Deploy::start_with("hello", &["web"], 30, None, extra).await else {
        return;
    };
    let (v1, _v11) = two_releases(&deploy).await;
    let url = format!("{}/api/v1/rollback", deploy.build.app.address);
    let ask = serde_json::json!({"project": "myevents", "service": "web"});

    let anonymous = deploy
        .build
        .app
        .client
        .post(&url)
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let done = deploy
        .build
        .app
        .client
        .post(&url)
        .bearer_auth("rollback-action-token")
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    let answer: serde_json::Value = done.json().await.unwrap();
    assert_eq!(answer["image"], v1.as_str());
    assert_eq!(deploy.cluster.image("web").await, v1);
    deploy.cluster.wait_available("web").await;
    let metrics = deploy.build.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"deploybot_rollbacks_by_hand_total{environment="production"} 1"#),
        "{metrics}"
    );
    deploy.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploybot_rollback_to_a_tag_rolls_the_service_to_that_tags_image() {
    let Some(deploy) = Deploy::start("hello", &["web"], 30).await else {
        return;
    };
    let (v1, v11) = two_releases(&deploy).await;
    let dir = deploy.cli_config();

    let (status, printed) =
        Deploy::cli_rollback(dir.path(), &["myevents", "web", "--to", "v1.0.0"]);
    assert!(status.success(), "{printed}");
    assert!(
        printed.contains(&format!("rolled back: web runs {v1}")),
        "{printed}"
    );
    assert_eq!(deploy.cluster.image("web").await, v1);
    let token = std::fs::read_to_string(&deploy.cluster.token_file).unwrap();
    assert!(!printed.contains(token.trim()));

    let job =
        crate::common::binary::run(dir.path(), &["job", "2", "--config", "deploybot.toml"], &[]);
    let shown = String::from_utf8_lossy(&job.stdout);
    assert!(
        shown.contains("deploys:")
            && shown.contains("web  production")
            && shown.contains("deployed  (was"),
        "deploybot job shows the rollout: {shown}"
    );

    let (status, said) = Deploy::cli_rollback(dir.path(), &["myevents", "web", "--to", "v9.9.9"]);
    assert_eq!(status.code(), Some(2));
    assert!(
        said.contains("never deployed at v9.9.9") && said.contains("v1.1.0"),
        "{said}"
    );
    assert_ne!(v1, v11);
    deploy.finish().await;
}

/// `deploybot rollback` runs in its own process: while the server rolls the same Deployment
/// out, it waits for its turn (saying whose it is) instead of changing the image under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_rollback_during_a_server_rollout_waits_for_its_turn() {
    let Some(deploy) = Deploy::start("hello", &["web"], 60).await else {
        return;
    };
    let first = deploy.released("v1.0.0", &deploy.build.sha).await;
    let v1 = Deploy::pinned(&first, "web");
    deploy.slow_readiness("web", 6).await;
    let sha = deploy.build.git.commit("v1.1", "master", None, |dir| {
        std::fs::write(dir.join("health"), "ok 1.1\n").unwrap();
    });
    deploy.build.git.tag("v1.1.0", &sha);
    let job = deploy.build.send("refs/tags/v1.1.0", &sha).await;
    let jobs = deploy.build.jobs();
    until_patched(&jobs, job).await;
    let dir = deploy.cli_config();

    let (status, printed) = tokio::task::spawn_blocking(move || {
        Deploy::cli_rollback(dir.path(), &["myevents", "web", "--to", "v1.0.0"])
    })
    .await
    .unwrap();

    assert!(status.success(), "{printed}");
    assert!(
        printed.contains(&format!("waiting: job {job} (myevents v1.1.0)")),
        "it says whose turn it waits for: {printed}"
    );
    let released = deploy.build.finished(job).await;
    assert_eq!(
        released.job.state,
        "deployed",
        "the server's rollout ran to its end undisturbed: {}",
        deploy.explain(&released)
    );
    let history = jobs.deploy_history("myevents", "web", 10).unwrap();
    let (rollback, release) = (&history[0], &history[1]);
    assert_eq!(
        (rollback.cause.kind(), rollback.state.as_str()),
        ("rollback", "deployed")
    );
    assert_eq!(release.cause.job(), Some(job));
    assert!(
        rollback.patched_at.as_deref() >= release.finished_at.as_deref(),
        "the rollback's change came after the release's rollout ended: {history:#?}"
    );
    assert_eq!(
        rollback.previous_image.as_deref(),
        Some(Deploy::pinned(&released, "web").as_str()),
        "it went back over the release, read after its turn came"
    );
    assert_eq!(deploy.cluster.image("web").await, v1);
    deploy.finish().await;
}
