//! The worker on any machine: the in-memory executor (`docker/memory.rs`) for steps, image
//! builds and pushes, a fake cluster for rollouts, a real store and a real git repository on
//! disk (fetched over `file://`). The clock is tokio's, paused: a step that takes ten minutes
//! or a rollout deadline passes without waiting. Timeouts that must not fire in a test are set
//! to a year, because a paused clock jumps to the next timer whenever the runtime idles (a git
//! process or a store call in flight).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::config::{Settings, Sources};
use crate::deploy::{Changes, ClusterError, DeploymentRef, ImageChange, Observed};
use crate::deploy::{Cluster, Deployer};
use crate::domain::{CommitSha, GitRef, JobState, StageName, StageState};
use crate::executor::memory::{Event, MemoryExecutor, Script};
use crate::intake::PushEvent;
use crate::store::{JobDetail, Jobs, RolloutState};

const TOOLCHAIN_IMAGE: &str = "toolchain:1";
const BASE_IMAGE: &str = "base:1";
const A_YEAR: &str = "31536000";

/// Two services: `api` with a check and a compile step in one toolchain, and `web` with
/// one check step in the same toolchain (so it builds in the second phase), deploying to the
/// Deployment `web`.
const PIPELINE: &str = r#"
[push]
tags = ["v*"]

[[services]]
name = "api"
image = "app/api"

[[services.steps]]
stage = "check"
image = "go"
commands = ["go vet ./..."]

[[services.steps]]
stage = "compile"
image = "go"
commands = ["go build -o api ."]
artifacts = ["api"]

[[services]]
name = "web"
image = "app/web"
deployment = "web"
container = "api"

[[services.steps]]
stage = "check"
image = "go"
commands = ["test web"]
"#;

/// A repository on disk with the pipeline and a Dockerfile per service, one commit.
struct Repository {
    dir: tempfile::TempDir,
    sha: CommitSha,
}

impl Repository {
    fn new() -> Repository {
        let dir = tempfile::tempdir().unwrap();
        for service in ["api", "web"] {
            let context = dir.path().join(service);
            std::fs::create_dir_all(&context).unwrap();
            std::fs::write(
                context.join("Dockerfile"),
                format!("FROM {BASE_IMAGE}\nCOPY . /app\n"),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join(".deploybot.toml"), PIPELINE).unwrap();
        git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
        git(dir.path(), &["add", "-A"]);
        git(dir.path(), &["commit", "--quiet", "-m", "app"]);
        let sha = CommitSha::parse(&git(dir.path(), &["rev-parse", "HEAD"])).unwrap();
        Repository { dir, sha }
    }

    fn tag(&self, tag: &str) {
        git(self.dir.path(), &["tag", "--force", tag]);
    }

    /// Commits a change to `path` (relative to the repository); the new commit is `sha`.
    fn change(&mut self, path: &str, text: &str) {
        std::fs::write(self.dir.path().join(path), text).unwrap();
        git(self.dir.path(), &["commit", "--quiet", "-am", "change"]);
        self.sha = CommitSha::parse(&git(self.dir.path(), &["rev-parse", "HEAD"])).unwrap();
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A Deployment `web` whose new pods never become ready (and whose controller never says
/// so): only deploybot's own deadline ends the wait. Putting the first image back completes.
struct NeverReady {
    observed: Mutex<Observed>,
    patched: Mutex<Vec<String>>,
    first: String,
}

impl NeverReady {
    fn new(first: &str) -> NeverReady {
        NeverReady {
            observed: Mutex::new(Observed {
                resource_version: "1".into(),
                generation: 1,
                observed_generation: 1,
                desired: 1,
                total: 1,
                updated: 1,
                available: 1,
                images: BTreeMap::from([("api".into(), first.into())]),
                ..Observed::default()
            }),
            patched: Mutex::default(),
            first: first.into(),
        }
    }
}

impl Cluster for NeverReady {
    async fn read(&self, _: &DeploymentRef) -> Result<Observed, ClusterError> {
        let mut observed = self.observed.lock().unwrap().clone();
        if observed.images["api"] != self.first {
            observed.available = 0;
        }
        Ok(observed)
    }

    async fn set_image(
        &self,
        target: &DeploymentRef,
        change: ImageChange<'_>,
    ) -> Result<Observed, ClusterError> {
        let mut observed = self.observed.lock().unwrap();
        if change.resource_version != observed.resource_version {
            return Err(ClusterError::Conflict(target.clone()));
        }
        self.patched.lock().unwrap().push(change.image.to_owned());
        observed
            .images
            .insert(change.container.into(), change.image.into());
        observed.generation += 1;
        observed.observed_generation = observed.generation;
        observed.resource_version = observed.generation.to_string();
        Ok(observed.clone())
    }

    async fn annotate(
        &self,
        _: &DeploymentRef,
        _: &BTreeMap<String, String>,
        _: &str,
    ) -> Result<Observed, ClusterError> {
        Ok(self.observed.lock().unwrap().clone())
    }

    async fn follow(&self, _: &DeploymentRef, _: &str) -> Result<Changes, ClusterError> {
        Ok(Box::pin(futures_util::stream::pending()))
    }

    async fn pods_not_ready(
        &self,
        _: &DeploymentRef,
        _: &BTreeMap<String, String>,
        _: &str,
        _: &str,
    ) -> Result<Vec<String>, ClusterError> {
        Ok(vec![
            "pod web-2: container api is running but not ready".into()
        ])
    }
}

/// A worker on a store of its own, building `repository` with `executor`.
struct Harness {
    data: tempfile::TempDir,
    repository: Repository,
    jobs: Arc<Jobs>,
    executor: Arc<MemoryExecutor>,
    wake: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
}

impl Harness {
    fn start() -> Harness {
        let data = tempfile::tempdir().unwrap();
        let repository = Repository::new();
        let settings = Arc::new(settings(data.path(), repository.dir.path()));
        let jobs = Arc::new(Jobs::open_migrated(data.path()).unwrap());
        let executor = Arc::new(MemoryExecutor::with_images(&[TOOLCHAIN_IMAGE, BASE_IMAGE]));
        let deployer = Arc::new(Deployer::new(
            HashMap::from([("production".to_owned(), Ok(NeverReady::new("app/web:old")))]),
            Arc::new(Jobs::open(data.path(), "deploy").unwrap()),
        ));
        let wake = Arc::new(tokio::sync::Notify::new());
        let mut worker = Worker::new(
            settings,
            Arc::new(Jobs::open(data.path(), "worker").unwrap()),
            executor.clone(),
            wake.clone(),
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(crate::metrics::Metrics::new().unwrap()),
            deployer,
        );
        // The in-memory engine stands for the registry too: a tag is copied through it.
        worker.registry = None;
        let stop = CancellationToken::new();
        tokio::spawn(worker.run(stop.clone()));
        Harness {
            data,
            repository,
            jobs,
            executor,
            wake,
            stop,
        }
    }

    /// Queues a push of `git_ref` at the repository's commit.
    fn push(&self, git_ref: &str) -> i64 {
        let git_ref = GitRef::parse(git_ref).unwrap();
        let sha = &self.repository.sha;
        let event = PushEvent {
            forge: "github".into(),
            project: "app".into(),
            repository: "team/app".into(),
            git_ref: git_ref.clone(),
            kind: git_ref.kind(),
            name: git_ref.name().into(),
            sha: sha.clone(),
            before: CommitSha::parse(&"0".repeat(40)).unwrap(),
            pusher: "dev".into(),
            clone_url: "https://forge.invalid/team/app.git".into(),
            head_commit_message: None,
            delivery_id: "d".into(),
            received_at: time::OffsetDateTime::now_utc(),
            pull: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        let job = self
            .jobs
            .queue_for_tests("app", &git_ref, sha, &json)
            .unwrap();
        self.wake.notify_one();
        job
    }

    async fn finished(&self, job: i64) -> JobDetail {
        loop {
            let detail = self.jobs.get(job).unwrap().unwrap();
            if !detail.job.state.is_active() {
                return detail;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a step of `service` runs.
    async fn running(&self, service: &str) {
        while !self.executor.running().contains(service) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn settings(data: &Path, repository: &Path) -> Settings {
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:0"
data_dir = "{data}"

[worker]
concurrency = 1
service_concurrency = 2
step_timeout_secs = {A_YEAR}
lease_secs = 60
clone_schemes = ["file"]

[registry]
address = "registry.test"
username = "deploybot"
password = "registry-secret"

[[toolchains]]
name = "go"
image = "{TOOLCHAIN_IMAGE}"
user = "1000:1000"

[[projects]]
name = "app"
forge = "github"
repository = "team/app"
webhook_secret = "s3cret-value"
clone_url = "file://{repository}"
allowed_deployments = ["web"]

[[environments]]
name = "production"
namespace = "default"
in_cluster = true
rollout_timeout_secs = 600
"#,
        data = data.display(),
        repository = repository.display(),
    );
    Settings::from_sources(Sources {
        file: None,
        inline_toml: Some(&toml),
        env: HashMap::new(),
    })
    .unwrap()
}

fn stage(detail: &JobDetail, service: &str, name: StageName) -> StageState {
    detail
        .stages
        .iter()
        .find(|s| s.service == service && s.stage == name)
        .unwrap_or_else(|| panic!("no {service}/{name} in {:?}", detail.stages))
        .state
}

/// The compile step leaves the artifact its step names.
fn compiles(executor: &MemoryExecutor) {
    executor.script(Script {
        matches: "go build".into(),
        writes: vec!["api".into()],
        ..Script::default()
    });
}

#[tokio::test(start_paused = true)]
async fn a_failed_check_skips_the_services_later_stages_and_the_others_go_on() {
    let harness = Harness::start();
    harness.executor.script(Script {
        matches: "go vet".into(),
        exit: 2,
        output: vec!["main.go:3: bad format".into()],
        ..Script::default()
    });

    let job = harness.push("refs/heads/main");
    let detail = harness.finished(job).await;

    assert_eq!(detail.job.state, JobState::Failed);
    assert_eq!(stage(&detail, "api", StageName::Check), StageState::Failed);
    for later in [StageName::Compile, StageName::Image, StageName::Push] {
        assert_eq!(stage(&detail, "api", later), StageState::Skipped, "{later}");
    }
    assert_eq!(stage(&detail, "web", StageName::Image), StageState::Success);
}

#[tokio::test(start_paused = true)]
async fn services_that_share_a_toolchain_build_one_after_the_other() {
    let harness = Harness::start();
    compiles(&harness.executor);
    for matches in ["go vet", "test web"] {
        harness.executor.script(Script {
            matches: matches.into(),
            takes: Duration::from_secs(60),
            ..Script::default()
        });
    }

    let job = harness.push("refs/heads/main");
    assert_eq!(harness.finished(job).await.job.state, JobState::Success);

    let events = harness.executor.events();
    let position = |wanted: &Event| events.iter().position(|e| e == wanted).unwrap();
    let api_done = position(&Event::StepDone {
        service: "api".into(),
        exit: 0,
    });
    let web_started = events
        .iter()
        .position(|e| matches!(e, Event::Step { service, .. } if service == "web"))
        .unwrap();
    assert!(api_done < web_started, "{events:#?}");
}

#[tokio::test(start_paused = true)]
async fn a_newer_push_to_the_branch_supersedes_the_running_job() {
    let harness = Harness::start();
    harness.executor.script(Script {
        matches: "go vet".into(),
        takes: Duration::from_secs(3600),
        ..Script::default()
    });
    let older = harness.push("refs/heads/main");
    harness.running("api").await;

    harness.push("refs/heads/main");
    let detail = harness.finished(older).await;

    assert_eq!(detail.job.state, JobState::Superseded);
    assert!(harness.executor.events().contains(&Event::StepStopped {
        service: "api".into(),
        why: "canceled".into(),
    }));
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_tag_tags_the_image_deploybot_recorded_instead_of_building() {
    let harness = Harness::start();
    compiles(&harness.executor);
    harness.repository.tag("v1.0.0");
    let first = harness.push("refs/tags/v1.0.0");
    assert_eq!(
        harness.finished(first).await.job.state,
        JobState::RolledBack
    );

    harness.repository.tag("v1.0.1");
    let second = harness.push("refs/tags/v1.0.1");
    let detail = harness.finished(second).await;

    let events = harness.executor.events();
    let built_api: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, Event::Built { tag, .. } if tag.contains("/app/api:")))
        .collect();
    assert_eq!(built_api.len(), 1, "{events:#?}");
    assert!(events.iter().any(|e| matches!(e,
        Event::Tagged { reference, .. } if reference == "registry.test/app/api:v1.0.1")));
    assert_eq!(stage(&detail, "api", StageName::Check), StageState::Skipped);
}

#[tokio::test(start_paused = true)]
async fn a_commit_that_touches_only_one_service_rebuilds_only_that_one() {
    let mut harness = Harness::start();
    compiles(&harness.executor);
    harness.repository.tag("v1.0.0");
    let first = harness.push("refs/tags/v1.0.0");
    harness.finished(first).await;

    harness.repository.change(
        "web/Dockerfile",
        &format!("FROM {BASE_IMAGE}\nCOPY . /www\n"),
    );
    harness.repository.tag("v1.1.0");
    let second = harness.push("refs/tags/v1.1.0");
    let detail = harness.finished(second).await;

    let events = harness.executor.events();
    let built = |tag: &str| {
        events
            .iter()
            .any(|e| matches!(e, Event::Built { tag: t, .. } if t == tag))
    };
    assert!(built("registry.test/app/web:v1.1.0"), "{events:#?}");
    assert!(!built("registry.test/app/api:v1.1.0"), "{events:#?}");
    assert_eq!(stage(&detail, "api", StageName::Check), StageState::Skipped);
    assert_eq!(stage(&detail, "web", StageName::Check), StageState::Success);
}

#[tokio::test(start_paused = true)]
async fn a_tag_keeps_its_first_digest_when_a_rerun_builds_a_new_image() {
    let harness = Harness::start();
    compiles(&harness.executor);
    harness.repository.tag("v1.0.0");
    let job = harness.push("refs/tags/v1.0.0");
    harness.finished(job).await;
    let reference = "registry.test/app/api:v1.0.0";
    let (first, _) = harness.jobs.pushed_digest(reference).unwrap().unwrap();

    // The base image changes under the tag; an operator re-runs the job.
    harness.executor.replace_image(BASE_IMAGE, "sha256:rebuilt");
    assert!(harness.jobs.rerun(job).unwrap());
    harness.wake.notify_one();
    let again = harness.finished(job).await;

    let events = harness.executor.events();
    let built = events
        .iter()
        .filter(|e| matches!(e, Event::Built { tag, .. } if tag == reference))
        .count();
    let pushed = events
        .iter()
        .filter(|e| matches!(e, Event::Pushed { reference: r, .. } if r == reference))
        .count();
    assert_eq!(
        (built, pushed),
        (2, 1),
        "built again, pushed once: {events:#?}"
    );
    let image = again.images.iter().find(|i| i.service == "api").unwrap();
    assert_eq!(image.digest.as_deref(), Some(first.as_str()));
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_lease_another_took_writes_nothing_more_for_the_job() {
    let harness = Harness::start();
    harness.executor.script(Script {
        matches: "go vet".into(),
        takes: Duration::from_secs(3600),
        ..Script::default()
    });
    let job = harness.push("refs/heads/main");
    harness.running("api").await;

    // The worker stops renewing in time (a stalled process, a clock step): another takes it.
    assert_eq!(
        harness.jobs.lapse_lease_for_tests(job).unwrap().as_deref(),
        Some("worker")
    );
    let other = Jobs::open(harness.data.path(), "other").unwrap();
    let taken = other.claim_next(Duration::from_secs(60)).unwrap().unwrap();
    while harness.executor.running().contains("api") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let detail = harness.jobs.get(job).unwrap().unwrap();
    assert_eq!((taken.id, taken.attempt), (job, 2));
    assert_eq!(
        detail.job.state,
        JobState::Running,
        "not ended by the first worker"
    );
    assert_eq!(
        stage(&detail, "api", StageName::Check),
        StageState::Running,
        "the first worker's failure was not recorded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollout_that_never_becomes_ready_is_rolled_back_at_deploybots_deadline() {
    let harness = Harness::start();
    compiles(&harness.executor);
    harness.repository.tag("v1.0.0");

    let job = harness.push("refs/tags/v1.0.0");
    let detail = harness.finished(job).await;

    assert_eq!(detail.job.state, JobState::RolledBack);
    assert_eq!(
        stage(&detail, "web", StageName::Deploy),
        StageState::RolledBack
    );
    let rollout = &detail.deploys[0];
    assert_eq!(rollout.state, RolloutState::RolledBack);
    assert!(
        rollout
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("not ready"),
        "{rollout:?}"
    );
}
