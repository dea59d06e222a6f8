//! Shared test helpers: fixtures, signed deliveries, the app in-process on a random port, and
//! the real binary with its logs captured.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod build;
pub mod chat_double;
pub mod cluster;
pub mod cluster_build;
pub mod fixtures;
pub mod forge_double;
pub mod hook_double;
pub mod infra;
pub mod slow_client;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use deploybot::config::{Settings, Sources};
use deploybot::startup::Application;
use tempfile::TempDir;

pub use fixtures::{fixture_body, signed_now, Delivery};

/// The secret every fixture signature was computed with (fixtures/README.md).
pub const TEST_SECRET: &str = "deploybot-test-secret";
/// GitLab's example signing token (fixtures/signatures.json).
pub const TEST_SIGNING_TOKEN: &str = "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q=";

/// One project per repository the fixtures name, so every fixture has a home.
pub const FIXTURE_PROJECTS: &str = r#"
[[projects]]
name = "baxter"
forge = "github"
repository = "baxterthehacker/public-repo"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "codertocat"
forge = "github"
repository = "Codertocat/Hello-World"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "drone"
forge = "github"
repository = "bradrydzewski/drone-test-go"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "octocoders"
forge = "github"
repository = "Octocoders/Hello-World"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "diaspora"
forge = "gitlab"
repository = "mike/diaspora"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "flight"
forge = "gitlab"
repository = "flightjs/Flight"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "example"
forge = "gitlab"
repository = "jsmith/example"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "hello-world"
forge = "gitlab"
repository = "gitlab-org/hello-world"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "gitlab-test"
forge = "gitlab"
repository = "gitlabhq/gitlab-test"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "woodpecker"
forge = "gitlab"
repository = "anbraten/woodpecker"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "meet"
forge = "gitlab"
repository = "rathod.meetsatish/meet"
webhook_secret = "deploybot-test-secret"

[[projects]]
name = "signed"
forge = "gitlab"
repository = "mike/diaspora"
signing_token = "whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdHRlc3Q="
"#;

/// The project each fixture's repository belongs to.
pub fn project_for(fixture: &str) -> &'static str {
    let body: serde_json::Value =
        serde_json::from_slice(&fixture_body(fixture)).expect("fixture is JSON");
    let repo = body["repository"]["full_name"]
        .as_str()
        .or(body["project"]["path_with_namespace"].as_str())
        .expect("fixture names a repository");
    match repo {
        "baxterthehacker/public-repo" => "baxter",
        "Codertocat/Hello-World" => "codertocat",
        "bradrydzewski/drone-test-go" => "drone",
        "Octocoders/Hello-World" => "octocoders",
        "mike/diaspora" => "diaspora",
        "flightjs/Flight" => "flight",
        "jsmith/example" => "example",
        "gitlab-org/hello-world" => "hello-world",
        "gitlabhq/gitlab-test" => "gitlab-test",
        "anbraten/woodpecker" => "woodpecker",
        "rathod.meetsatish/meet" => "meet",
        other => panic!("no test project for {other}"),
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A delivery id no other test uses (fixtures all share one).
pub fn unique_delivery_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-c0de-4000-8000-{:012x}", std::process::id(), n)
}

/// The app, in-process, on a random port, with its own store.
pub struct TestApp {
    pub address: String,
    pub data_dir: DataDir,
    pub client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A store directory: the test's own temporary one, or one a test shares between apps.
pub struct DataDir {
    path: std::path::PathBuf,
    _owned: Option<TempDir>,
}

impl DataDir {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(FIXTURE_PROJECTS, "").await
    }

    /// `projects` is TOML for `[[projects]]`; `server` is extra `[server]` keys. The worker
    /// is off: these apps test intake.
    pub async fn spawn_with(projects: &str, server: &str) -> TestApp {
        TestApp::spawn_config(&format!(
            "[worker]\nenabled = false\n\n[server]\n{server}\n{projects}"
        ))
        .await
    }

    /// Any configuration; `[server]` must come first in it (listen and data_dir are added).
    pub async fn spawn_config(config: &str) -> TestApp {
        let owned = tempfile::tempdir().expect("temp dir");
        let path = owned.path().to_owned();
        TestApp::spawn_in(
            DataDir {
                path,
                _owned: Some(owned),
            },
            config,
        )
        .await
    }

    /// Like [`spawn_config`], on a store directory the test keeps (for restarts).
    pub async fn spawn_config_in(dir: &std::path::Path, config: &str) -> TestApp {
        TestApp::spawn_in(
            DataDir {
                path: dir.to_owned(),
                _owned: None,
            },
            config,
        )
        .await
    }

    async fn spawn_in(data_dir: DataDir, config: &str) -> TestApp {
        let server = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            data_dir.path().display()
        );
        let toml = if config.contains("[server]\n") {
            config.replacen("[server]\n", &server, 1)
        } else {
            format!("{server}\n{config}")
        };
        let settings = Settings::from_sources(Sources {
            file: None,
            inline_toml: Some(&toml),
            env: HashMap::new(),
        })
        .expect("test configuration is valid");
        let app = Application::build(settings).await.expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        let task = tokio::spawn(app.run_until_stopped());
        TestApp {
            address,
            data_dir,
            // Idle connections are dropped before the server's keep-alive (5 s) closes them:
            // reusing one the server is closing fails the request ("IncompleteMessage").
            client: reqwest::Client::builder()
                .pool_idle_timeout(std::time::Duration::from_secs(2))
                .build()
                .expect("an HTTP client"),
            handle,
            task: Some(task),
        }
    }

    /// Stops the app as SIGTERM would and waits until its store is closed.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Sends a delivery to `POST /hooks/{project}`.
    pub async fn post(&self, project: &str, delivery: &Delivery) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/hooks/{project}", self.address))
            .body(delivery.body.clone());
        for (name, value) in &delivery.headers {
            request = request.header(name, value);
        }
        request.send().await.expect("request is sent")
    }

    /// Sends a fixture, with a fresh delivery id, to the project of its repository.
    pub async fn deliver_fixture(&self, fixture: &str) -> (reqwest::Response, Delivery) {
        let delivery = Delivery::fixture(fixture).with_unique_id();
        (self.post(project_for(fixture), &delivery).await, delivery)
    }

    pub fn reader(&self) -> deploybot::store::Reader {
        deploybot::store::Reader::open(self.data_dir.path()).expect("store opens")
    }

    pub fn deliveries(&self) -> Vec<deploybot::store::DeliveryRow> {
        self.reader()
            .deliveries(10_000)
            .expect("deliveries are listed")
    }

    pub fn jobs(&self) -> i64 {
        self.reader()
            .job_counts()
            .expect("jobs are counted")
            .iter()
            .map(|(_, n)| n)
            .sum()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request is sent")
    }

    /// The value of an unlabelled metric (or one series, `name{label="value"}`), if exported.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .get("/metrics")
            .await
            .text()
            .await
            .expect("metrics are text");
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(name, _)| *name == series)
            .and_then(|(_, value)| value.trim().parse().ok())
    }

    /// Waits until `series` reads `value`, polling; fails the test after a generous deadline.
    pub async fn wait_for_metric(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let now = self.metric(series).await;
            if now == Some(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} is {now:?}, never {value}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The rejected deliveries as `/api/v1/deliveries` lists them (newest first), once they
    /// account for `count` rejections (each row itself plus its `repeats`). Rejections are
    /// recorded off the answer path, so this polls; it fails the test after a generous deadline.
    pub async fn wait_for_rejections(&self, count: i64) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let listing = json(self.get("/api/v1/deliveries?limit=500").await).await;
            let rows: Vec<serde_json::Value> = listing["deliveries"]
                .as_array()
                .expect("deliveries are a list")
                .iter()
                .filter(|row| row["outcome"] == "rejected")
                .cloned()
                .collect();
            let seen: i64 = rows
                .iter()
                .map(|row| 1 + row["repeats"].as_i64().unwrap_or(0))
                .sum();
            if seen >= count {
                return rows;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{seen} rejections recorded, never {count}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Takes the action at `path` (POST) with the bearer `token`.
    pub async fn act(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("request is sent")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop the server (and so its store writer) so the temp dir can go.
        let handle = self.handle.clone();
        drop(handle.stop(false));
    }
}

/// The JSON body of a response.
pub async fn json(response: reqwest::Response) -> serde_json::Value {
    response.json().await.expect("response is JSON")
}

/// Seeds a stage as the worker records it, named as the API shows it (`"check"`, `"failed"`).
pub fn seed_stage(
    jobs: &deploybot::store::Jobs,
    job: i64,
    (service, stage, state): (&str, &str, &str),
    exit_code: Option<i64>,
    detail: Option<&str>,
) {
    use deploybot::domain::{StageName, StageState};
    let update = deploybot::store::StageUpdate {
        service,
        stage: StageName::from_text(stage).expect("a stage name"),
        state: StageState::from_text(state).expect("a stage state"),
        exit_code,
        detail,
    };
    jobs.set_stage(job, &update).expect("the stage is recorded");
}
