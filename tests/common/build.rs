//! A deploybot that builds for real: the sample repositories (tests/fixtures/myevents,
//! tests/fixtures/hello) served by `git daemon`, built by the worker on the Docker engine,
//! pushed to docker-registry with htpasswd auth. Shared by the pipeline, report and deploy
//! tests.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::infra::{docker_with_base_images, GitServer, Registry};
use super::{json, Delivery, TestApp, TEST_SECRET};

pub const SERVICES: [&str; 3] = ["bookingservice", "eventservice", "frontend"];

pub struct Build {
    pub app: TestApp,
    pub registry: Registry,
    pub git: GitServer,
    pub sha: String,
}

pub fn config(registry: &Registry, git: &GitServer, password: &str) -> String {
    config_with(registry, git, password, "")
}

/// The build configuration plus `extra` TOML: keys for the project (they follow its table),
/// then any further tables. The project fetches from the test's git server (over `git://`,
/// which `clone_schemes` allows here) and may use the network (the frontend's `npm ci`).
pub fn config_with(registry: &Registry, git: &GitServer, password: &str, extra: &str) -> String {
    format!(
        r#"[server]

[worker]
enabled = true
concurrency = 2
service_concurrency = 3
step_timeout_secs = 600
lease_secs = 6
clone_schemes = ["https", "git"]

[registry]
address = "{address}"
username = "{username}"
password = "{password}"

{toolchains}

[[projects]]
name = "myevents"
forge = "github"
repository = "bradrydzewski/drone-test-go"
webhook_secret = "{TEST_SECRET}"
allowed_deployments = ["eventservice", "bookingservice", "frontend", "web"]
clone_url = "{clone_url}"
allow_network = true
{extra}
"#,
        clone_url = git.url,
        address = registry.address,
        username = registry.username,
        toolchains = include_str!("../../config/local-toolchains.toml"),
    )
}

impl Build {
    pub async fn start() -> Option<Build> {
        Build::start_with_password(None).await
    }

    pub async fn start_with_password(password: Option<&str>) -> Option<Build> {
        Build::start_with(password, "").await
    }

    pub async fn start_with(password: Option<&str>, extra: &str) -> Option<Build> {
        let (registry, git, sha) = real_parts()?;
        Build::with_parts(registry, git, sha, password, extra).await
    }

    /// A deploybot on these parts, configured with `extra` (see [`config_with`]).
    pub async fn with_parts(
        registry: Registry,
        git: GitServer,
        sha: String,
        password: Option<&str>,
        extra: &str,
    ) -> Option<Build> {
        let password = password.unwrap_or(&registry.password).to_owned();
        let app = TestApp::spawn_config(&config_with(&registry, &git, &password, extra)).await;
        Some(Build {
            app,
            registry,
            git,
            sha,
        })
    }

    /// A deploybot building `tests/fixtures/hello` (one service, no steps), configured with
    /// the usual configuration as `edit` changes it.
    pub async fn hello(edit: impl FnOnce(String) -> String) -> Option<Build> {
        docker_with_base_images()?;
        let registry = Registry::start()?;
        let (git, sha) = GitServer::start_fixture("hello")?;
        let config = edit(config(&registry, &git, &registry.password));
        let app = TestApp::spawn_config(&config).await;
        Some(Build {
            app,
            registry,
            git,
            sha,
        })
    }

    /// Commits what `change` does to the working copy, pushes it as `git_ref`
    /// (`refs/tags/NAME` or `refs/heads/NAME`) with a signed delivery, and waits for the job.
    pub async fn push_change(
        &self,
        git_ref: &str,
        change: impl FnOnce(&std::path::Path),
    ) -> (i64, deploybot::store::JobDetail) {
        let (branch, tag) = match git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ("master", Some(tag)),
            None => (git_ref.trim_start_matches("refs/heads/"), None),
        };
        let sha = self.git.commit(git_ref, branch, tag, change);
        let job = self.send(git_ref, &sha).await;
        (job, self.finished(job).await)
    }

    pub async fn send(&self, git_ref: &str, sha: &str) -> i64 {
        let response = self
            .app
            .post("myevents", &signed_push(&self.git.url, git_ref, sha))
            .await;
        assert_eq!(response.status(), 202);
        json(response).await["job"].as_i64().unwrap()
    }

    pub fn jobs(&self) -> deploybot::store::Jobs {
        deploybot::store::Jobs::open(self.app.data_dir.path(), "test").unwrap()
    }

    pub async fn finished(&self, job: i64) -> deploybot::store::JobDetail {
        finished(&self.jobs(), job).await
    }

    /// Waits until the job's `stage` runs (up to 300 s: the whole suite shares two cores
    /// with it, and a real build once took over 120 s to get there).
    pub async fn wait_for_running(&self, job: i64, stage: &str) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let jobs = self.jobs();
        while !jobs
            .get(job)
            .unwrap()
            .unwrap()
            .stages
            .iter()
            .any(|s| s.stage == stage && s.state == "running")
        {
            assert!(
                Instant::now() < deadline,
                "job {job}'s {stage} never started"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self, job: i64) -> String {
        self.jobs()
            .logs(job, None, 0)
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect()
    }
}

/// The engine with its base images, a registry, and the sample repository served by git
/// (with its first commit); None where a part is missing outside CI.
pub fn real_parts() -> Option<(Registry, GitServer, String)> {
    docker_with_base_images()?;
    let registry = Registry::start()?;
    let (git, sha) = GitServer::start()?;
    Some((registry, git, sha))
}

/// Waits (up to 15 minutes) until the job is neither queued nor running.
pub async fn finished(jobs: &deploybot::store::Jobs, job: i64) -> deploybot::store::JobDetail {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let detail = jobs.get(job).unwrap().unwrap();
        if !matches!(detail.job.state.as_str(), "queued" | "running") {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "job {job} did not finish: {detail:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The published GitHub tag push (drone/go-scm's capture), rewritten to this ref, commit and
/// git server, and signed.
pub fn signed_push(git_url: &str, git_ref: &str, sha: &str) -> Delivery {
    signed_push_with(git_url, git_ref, sha, |_| ())
}

/// The same, pushed by `pusher` (the name GitHub reports, which whoever pushes chooses).
pub fn signed_push_by(git_url: &str, git_ref: &str, sha: &str, pusher: &str) -> Delivery {
    signed_push_with(git_url, git_ref, sha, |payload| {
        payload["pusher"]["name"] = pusher.into();
    })
}

pub fn signed_push_with(
    git_url: &str,
    git_ref: &str,
    sha: &str,
    edit: impl FnOnce(&mut Value),
) -> Delivery {
    let fixture = Delivery::fixture("github/push.tag").with_unique_id();
    let mut payload: Value = serde_json::from_slice(&fixture.body).unwrap();
    edit(&mut payload);
    payload["ref"] = git_ref.into();
    payload["after"] = sha.into();
    payload["head_commit"]["id"] = sha.into();
    payload["repository"]["clone_url"] = git_url.into();
    fixture.with_github_body(serde_json::to_vec(&payload).unwrap(), TEST_SECRET)
}

/// The published GitHub pull request event for `action` (octokit/webhooks' example), made a
/// request of the test project's repository (#`number`, head at `sha`) and signed.
pub fn signed_pull(action: &str, number: u64, sha: &str) -> Delivery {
    let fixture = Delivery::fixture(&format!("github/pull_request.{action}")).with_unique_id();
    let mut payload: Value = serde_json::from_slice(&fixture.body).unwrap();
    let repository = "bradrydzewski/drone-test-go";
    payload["number"] = number.into();
    payload["pull_request"]["number"] = number.into();
    payload["pull_request"]["head"]["sha"] = sha.into();
    payload["repository"]["full_name"] = repository.into();
    payload["pull_request"]["base"]["repo"]["full_name"] = repository.into();
    payload["pull_request"]["head"]["repo"]["full_name"] = repository.into();
    fixture.with_github_body(serde_json::to_vec(&payload).unwrap(), TEST_SECRET)
}

pub fn stage<'a>(
    detail: &'a deploybot::store::JobDetail,
    service: &str,
    stage: &str,
) -> &'a deploybot::store::StageRow {
    detail
        .stages
        .iter()
        .find(|s| s.service == service && s.stage == stage)
        .unwrap_or_else(|| panic!("no {service}/{stage} in {:?}", detail.stages))
}

/// The hello pipeline with `steps` (TOML `[[services.steps]]` tables) added to its service.
pub fn hello_steps(steps: &str) -> impl FnOnce(&std::path::Path) + '_ {
    move |dir| {
        let path = dir.join(".deploybot.toml");
        let mut definition = std::fs::read_to_string(&path).unwrap();
        definition.push_str(steps);
        std::fs::write(path, definition).unwrap();
    }
}

/// Makes the sample's eventservice fail `go vet` (a Printf of a string with `%d`).
pub fn break_go_vet(work: &std::path::Path) {
    let main = work.join("src/eventservice/main.go");
    let text = std::fs::read_to_string(&main).unwrap();
    let broken = text.replacen(
        "func main() {",
        "func main() {\n\tfmt.Printf(\"%d\\n\", \"not a number\")",
        1,
    );
    let broken = if broken.contains("\"fmt\"") {
        broken
    } else {
        broken.replacen("import (", "import (\n\t\"fmt\"", 1)
    };
    std::fs::write(&main, broken).unwrap();
}

/// The stage's detail, or "" when it has none.
pub fn detail<'a>(detail: &'a deploybot::store::JobDetail, service: &str, name: &str) -> &'a str {
    stage(detail, service, name).detail.as_deref().unwrap_or("")
}
