//! Commit statuses and chat messages, against HTTP doubles of the documented APIs.

use std::time::Duration;

use crate::common::forge_double::{ForgeDouble, STATUS_TOKEN};
use crate::common::{json, TestApp};

fn config(github: &str, gitlab: &str, extra: &str) -> String {
    format!(
        r#"[server]

[worker]
enabled = false

[report]
base_url = "https://deploybot.example"
retry_base_ms = 20
max_attempts = 5

[[projects]]
name = "drone"
forge = "github"
repository = "bradrydzewski/drone-test-go"
webhook_secret = "deploybot-test-secret"
status_token = "{STATUS_TOKEN}"
api_url = "{github}"

[[projects]]
name = "example"
forge = "gitlab"
repository = "jsmith/example"
webhook_secret = "deploybot-test-secret"
status_token = "{STATUS_TOKEN}"
api_url = "{gitlab}/api/v4"
{extra}"#
    )
}

async fn app(github: &ForgeDouble, gitlab: &ForgeDouble) -> TestApp {
    TestApp::spawn_config(&config(&github.server.uri(), &gitlab.server.uri(), "")).await
}

#[tokio::test]
async fn an_accepted_tag_push_sends_a_pending_status_on_its_sha_at_once() {
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let app = app(&github, &gitlab).await;

    let (response, _) = app.deliver_fixture("github/push.tag").await;
    let job = json(response).await["job"].as_i64().unwrap();

    let seen = github.wait_for(1, 10).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].path,
        "/repos/bradrydzewski/drone-test-go/statuses/d2b75aa7797ec26b088fa2dd527e9d2c052fcedd"
    );
    assert_eq!(seen[0].body["state"], "pending");
    assert_eq!(seen[0].body["context"], "deploybot");
    assert_eq!(
        seen[0].body["target_url"],
        format!("https://deploybot.example/jobs/{job}")
    );
    assert!(seen[0].body["description"]
        .as_str()
        .unwrap()
        .starts_with("Queued: v0.0.1"));
}

#[tokio::test]
async fn a_gitlab_push_sends_its_status_with_private_token_name_and_ref() {
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let app = app(&github, &gitlab).await;

    let (response, _) = app.deliver_fixture("gitlab/tag_push.created").await;
    assert_eq!(response.status(), 202);

    let seen = gitlab.wait_for(1, 10).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].path,
        "/api/v4/projects/jsmith%2Fexample/statuses/82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"
    );
    assert_eq!(seen[0].body["state"], "pending");
    assert_eq!(seen[0].body["name"], "deploybot");
    assert_eq!(seen[0].body["ref"], "v1.0.0");
}

#[tokio::test]
async fn a_status_answered_500_twice_then_201_arrives_exactly_once_more() {
    let github = ForgeDouble::github(vec![(500, None), (500, None), (201, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let app = app(&github, &gitlab).await;

    app.deliver_fixture("github/push.tag").await;

    let seen = github.wait_for(3, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        github.seen().len(),
        3,
        "two failures, one success, and nothing after"
    );
    assert!(
        seen.iter().all(|s| s.body == seen[0].body),
        "the same status each time"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"deploybot_reports_total{kind="status",outcome="retried"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"deploybot_reports_total{kind="status",outcome="sent"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured() {
    let github = ForgeDouble::github(vec![(429, Some(1)), (201, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let app = app(&github, &gitlab).await;

    app.deliver_fixture("github/push.tag").await;

    let seen = github.wait_for(2, 10).await;
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}, not after Retry-After: 1"
    );
}

#[tokio::test]
async fn a_status_refused_as_invalid_is_given_up_at_once_and_visibly() {
    let github = ForgeDouble::github(vec![(422, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let app = app(&github, &gitlab).await;

    app.deliver_fixture("github/push.tag").await;
    github.wait_for(1, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(github.seen().len(), 1, "a 422 is not retried");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"deploybot_reports_total{kind="status",outcome="failed"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_status_waits_out_a_forge_outage_across_a_restart() {
    // Arrange: the forge is down while the first deploybot runs.
    let down = ForgeDouble::github(vec![(503, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let data_dir = tempfile::tempdir().unwrap();
    let first = TestApp::spawn_config_in(
        data_dir.path(),
        &config(&down.server.uri(), &gitlab.server.uri(), ""),
    )
    .await;
    first.deliver_fixture("github/push.tag").await;
    down.wait_for(1, 10).await;
    first.stop().await;

    // Act: the forge is back; a new deploybot on the same store.
    let up = ForgeDouble::github(vec![(201, None)]).await;
    let _second = TestApp::spawn_config_in(
        data_dir.path(),
        &config(&up.server.uri(), &gitlab.server.uri(), ""),
    )
    .await;

    // Assert
    let seen = up.wait_for(1, 10).await;
    assert_eq!(
        seen.len(),
        1,
        "the status queued before the restart arrives after it"
    );
    assert_eq!(seen[0].body["state"], "pending");
}

#[tokio::test]
async fn no_token_or_secret_reaches_a_status_body_or_path() {
    let github = ForgeDouble::github(vec![(500, None), (201, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let app = app(&github, &gitlab).await;
    app.deliver_fixture("github/push.tag").await;
    app.deliver_fixture("gitlab/tag_push.created").await;
    github.wait_for(2, 10).await;
    gitlab.wait_for(1, 10).await;

    let everything = format!(
        "{}\n{}",
        github.everything_received().await,
        gitlab.everything_received().await
    );
    for secret in [STATUS_TOKEN, "deploybot-test-secret"] {
        assert!(
            !everything.contains(secret),
            "a secret reached a request outside its header"
        );
    }
}

#[tokio::test]
async fn a_github_app_trades_its_key_for_an_installation_token_and_reports_with_it() {
    // A throwaway RSA key, made for this test.
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("app.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genrsa",
            "-traditional",
            "-out",
            &key_path.display().to_string(),
            "2048",
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let github = ForgeDouble::github_app(42, "ghs_installationToken42").await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let config = config(&github.server.uri(), &gitlab.server.uri(), "").replacen(
        &format!("status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"", github.server.uri()),
        &format!(
            "github_app_id = 7\ngithub_installation_id = 42\ngithub_app_key_file = \"{}\"\napi_url = \"{}\"",
            key_path.display(),
            github.server.uri()
        ),
        1,
    );
    assert!(config.contains("github_app_id"), "{config}");
    let app = TestApp::spawn_config(&config).await;

    app.deliver_fixture("github/push.tag").await;

    let seen = github.wait_for(1, 10).await;
    assert_eq!(
        seen.len(),
        1,
        "the status went out with the installation token"
    );
    assert_eq!(seen[0].body["state"], "pending");
}

#[tokio::test]
async fn a_late_pending_never_overwrites_a_final_state() {
    // The forge refuses the first (pending) status; before its retry is due, the job ends
    // and its final status is queued for the same sha and context.
    let github = ForgeDouble::github(vec![(503, None), (201, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let config = config(&github.server.uri(), &gitlab.server.uri(), "")
        .replace("retry_base_ms = 20", "retry_base_ms = 1500");
    let app = TestApp::spawn_config(&config).await;
    app.deliver_fixture("github/push.tag").await;
    github.wait_for(1, 10).await;

    let jobs = deploybot::store::Jobs::open(app.data_dir.path(), "test").unwrap();
    let job = jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
    let status = deploybot::report::text::StatusFor {
        repository: "bradrydzewski/drone-test-go",
        sha: job.sha.as_ref(),
        git_ref: job.git_ref.as_ref(),
        base_url: None,
        job: job.id,
    };
    let success = status.status(
        "deploybot".into(),
        deploybot::report::StatusState::Success,
        "Built and pushed every service",
    );
    let reports = [success.queued("drone", "forge".into(), Some(job.id))];
    jobs.finish_reporting(job.id, deploybot::domain::JobState::Success, None, &reports)
        .unwrap();

    // Well past the pending's retry time.
    let seen = github.wait_for(3, 4).await;
    let states: Vec<&str> = seen
        .iter()
        .map(|s| s.body["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["pending", "success"],
        "the stale pending is never sent again"
    );
}

#[tokio::test]
async fn a_queued_job_canceled_by_an_operator_ends_its_status_as_canceled() {
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let extra = "\n[web]\naction_token = \"cancel-token\"\n";
    let app =
        TestApp::spawn_config(&config(&github.server.uri(), &gitlab.server.uri(), extra)).await;
    let (response, _) = app.deliver_fixture("github/push.tag").await;
    let job = json(response).await["job"].as_i64().unwrap();

    let canceled = app
        .act(&format!("/api/v1/jobs/{job}/cancel"), "cancel-token")
        .await;
    assert_eq!(canceled.status(), 202);

    let seen = github
        .wait_until(10, |seen| seen.iter().any(|s| s.body["state"] == "error"))
        .await;
    let last = seen.last().unwrap();
    assert_eq!(last.body["context"], "deploybot");
    assert_eq!(last.body["state"], "error");
    assert_eq!(last.body["description"], "Canceled by an operator");
}
