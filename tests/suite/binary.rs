//! The `deploybot` binary as a user runs it: subcommands, exit codes, signals, and what it
//! prints (never a secret).

use std::process::Command;

use crate::common::binary::{run, write_config, Server};
use crate::common::{Delivery, FIXTURE_PROJECTS, TEST_SECRET, TEST_SIGNING_TOKEN};

#[test]
fn check_config_names_every_bad_field_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        r#"
[[projects]]
name = "myevents"
forge = "bitbucket"
repository = "octocat/Hello-World"
webhook_secret = "x"

[[projects]]
name = "other"
forge = "github"
repository = "octocat"
webhook_secret_env = "MYEVENTS_SECRET"
"#,
    );

    let output = run(
        dir.path(),
        &["check-config", "--config", config.to_str().unwrap()],
        &[],
    );

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "projects[0].forge: unknown forge \"bitbucket\" (expected github or gitlab)",
            "projects[1].repository: \"octocat\" is not a repository path like owner/name",
            "projects[1].webhook_secret_env: variable MYEVENTS_SECRET is not set",
        ]
    );
}

#[test]
fn check_config_accepts_a_valid_file_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FIXTURE_PROJECTS);

    let output = run(
        dir.path(),
        &["check-config", "--config", config.to_str().unwrap()],
        &[],
    );

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .contains("12 project(s)"));
}

#[test]
fn a_config_path_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(dir.path(), &["check-config", "--config", "nope.toml"], &[]);

    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap().trim(),
        "configuration file nope.toml: no such file"
    );
}

#[test]
fn a_bad_value_names_its_key() {
    let dir = tempfile::tempdir().unwrap();

    let output = run(
        dir.path(),
        &["check-config"],
        &[("DEPLOYBOT__SERVER__LISTEN", "not-an-address")],
    );

    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(output.stderr).unwrap().trim(),
        "server.listen: \"not-an-address\" is not an address:port"
    );
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");

    let output = run(
        dir.path(),
        &["check-config", "--config", config.to_str().unwrap()],
        &[("DEPLOYBOT__SERVER__LISTEN", "127.0.0.1:9000")],
    );

    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .contains("listen 127.0.0.1:9000"));
}

#[test]
fn secrets_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "from-a-file\n").unwrap();
    let config = write_config(
        dir.path(),
        r#"
[[projects]]
name = "p"
forge = "github"
repository = "a/b"
webhook_secret_file = "secret"
"#,
    );

    let output = run(
        dir.path(),
        &["check-config", "--config", config.to_str().unwrap()],
        &[],
    );

    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_subcommand_explains_itself_in_help() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["serve", "check-config", "deliveries"] {
        let output = run(dir.path(), &[sub, "--help"], &[]);
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "{sub}");
        assert!(text.contains("--config <PATH>"), "{sub}: {text}");
    }
}

#[tokio::test]
async fn serve_runs_on_the_embedded_defaults_without_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_args(
        dir.path(),
        &["serve"],
        &[("DEPLOYBOT__SERVER__LISTEN", "127.0.0.1:0")],
    );

    let response = reqwest::get(format!("{}/readyz", server.address))
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert!(
        dir.path().join("data/deploybot.db").exists(),
        "the store is in ./data"
    );
}

async fn send(server: &Server, project: &str, delivery: &Delivery) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/hooks/{project}", server.address))
        .body(delivery.body.clone());
    for (k, v) in &delivery.headers {
        request = request.header(k, v);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn deliveries_lists_what_was_recorded_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FIXTURE_PROJECTS);
    let server = Server::start(dir.path(), &config, &[]);
    let tag = Delivery::fixture("github/push.tag").with_delivery_id("first-delivery");
    let deleted = Delivery::fixture("gitlab/tag_push.deleted").with_delivery_id("second-delivery");
    assert_eq!(send(&server, "drone", &tag).await.0, 202);
    assert_eq!(send(&server, "hello-world", &deleted).await.0, 200);

    let output = run(
        dir.path(),
        &["deliveries", "--config", config.to_str().unwrap()],
        &[],
    );

    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("DELIVERY"), "{text}");
    let words = |line: &str| {
        line.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        words(lines[1])[..10],
        [
            "second-delivery",
            "gitlab",
            "Tag",
            "Push",
            "Hook",
            "gitlab-org/hello-world",
            "refs/tags/v1.0.0",
            "-",
            "ignored:",
            "refs/tags/v1.0.0"
        ],
        "{text}"
    );
    assert_eq!(
        words(lines[2])[..9],
        [
            "first-delivery",
            "github",
            "push",
            "bradrydzewski/drone-test-go",
            "refs/tags/v0.0.1",
            "d2b75aa7797e",
            "queued",
            "(job",
            "1)"
        ],
        "{text}"
    );
    drop(server);
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), FIXTURE_PROJECTS);
    let server = Server::start(dir.path(), &config, &[]);
    let url = format!("{}/hooks/baxter", server.address);
    // A slow sender: headers now, the body after the SIGTERM.
    let delivery = Delivery::fixture("github/push.branch").with_unique_id();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let body = delivery.body.clone();
    let stream = futures_util::stream::once(async move {
        let _ = rx.await;
        Ok::<_, std::io::Error>(body)
    });
    let mut request = reqwest::Client::new()
        .post(&url)
        .body(reqwest::Body::wrap_stream(stream));
    for (k, v) in &delivery.headers {
        request = request.header(k, v);
    }
    let in_flight = tokio::spawn(request.send());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let pid = server.pid();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tx.send(()).unwrap();
    let response = in_flight.await.unwrap().unwrap();
    let (status, log) = server.terminate();

    assert_eq!(
        response.status(),
        202,
        "the in-flight delivery was finished"
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("deploybot stopped"), "{log}");
}

#[tokio::test]
async fn no_configured_secret_appears_in_logs_or_answers() {
    // Arrange: secrets given inline, by env and by file; debug logging.
    let dir = tempfile::tempdir().unwrap();
    let file_secret = "secret-from-a-file-5c1d";
    let status_token = "ghp_secretStatusToken77aa";
    let chat_url = "http://127.0.0.1:9/services/T000/B000/secret-chat-path";
    let env_secret = "secret-from-the-env-77ab";
    std::fs::write(dir.path().join("gitlab-secret"), file_secret).unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"{FIXTURE_PROJECTS}
[[projects]]
name = "from-env"
forge = "github"
repository = "baxterthehacker/public-repo"
webhook_secret_env = "FROM_ENV_SECRET"

[[projects]]
name = "from-file"
forge = "gitlab"
repository = "mike/diaspora"
webhook_secret_file = "gitlab-secret"

[[projects]]
name = "reporting"
forge = "github"
repository = "baxterthehacker/public-repo"
webhook_secret = "deploybot-test-secret"
status_token = "{status_token}"
api_url = "http://127.0.0.1:9"

[report]
retry_base_ms = 50

[[chat]]
name = "oncall"
webhook_url = "{chat_url}"
"#
        ),
    );
    let server = Server::start(dir.path(), &config, &[("FROM_ENV_SECRET", env_secret)]);

    // Act: good and bad deliveries of every kind.
    let mut answers = Vec::new();
    let github = Delivery::fixture("github/push.branch");
    let gitlab = Delivery::fixture("gitlab/push.branch");
    let cases = [
        ("baxter", github.clone().with_unique_id()),
        (
            "baxter",
            github
                .clone()
                .with_unique_id()
                .with_header("X-Hub-Signature-256", "sha256=00"),
        ),
        ("from-env", github.clone().with_unique_id()),
        (
            "from-env",
            github
                .clone()
                .with_unique_id()
                .with_github_body(github.body.clone(), env_secret),
        ),
        ("diaspora", gitlab.clone().with_unique_id()),
        (
            "diaspora",
            gitlab
                .clone()
                .with_unique_id()
                .with_header("X-Gitlab-Token", "wrong"),
        ),
        ("from-file", gitlab.clone().with_unique_id()),
        (
            "from-file",
            gitlab
                .clone()
                .with_unique_id()
                .with_header("X-Gitlab-Token", file_secret),
        ),
        ("signed", gitlab.clone().with_unique_id()),
        ("baxter", gitlab.clone().with_unique_id()),
        // Its status cannot be delivered (nothing listens there): retries get logged.
        ("reporting", github.clone().with_unique_id()),
    ];
    for (project, delivery) in &cases {
        answers.push(send(&server, project, delivery).await.1);
    }
    // Let the undeliverable status fail and be retried a few times (each attempt is logged).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let check = run(
        dir.path(),
        &["check-config", "--config", config.to_str().unwrap()],
        &[("FROM_ENV_SECRET", env_secret)],
    );
    let listing = run(
        dir.path(),
        &["deliveries", "--json", "--config", config.to_str().unwrap()],
        &[],
    );
    let (_, log) = server.terminate();

    // Assert: the run did exercise both paths, and no secret is anywhere.
    assert!(
        log.contains("Delivery rejected") && log.contains("Delivery answered"),
        "{log}"
    );
    assert!(log.contains("Report not delivered; will retry"), "{log}");
    let captured = format!(
        "{log}\n{}\n{}\n{}\n{}",
        answers.join("\n"),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr),
        String::from_utf8_lossy(&listing.stdout)
    );
    for secret in [
        TEST_SECRET,
        TEST_SIGNING_TOKEN,
        env_secret,
        file_secret,
        status_token,
        chat_url,
    ] {
        assert!(
            !captured.contains(secret),
            "secret leaked into captured output"
        );
    }
}
