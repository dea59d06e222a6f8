//! Builds for real: the sample MyEvents repository (tests/fixtures/myevents) served by
//! `git daemon`, built by the worker on the Docker engine, pushed to docker-registry with
//! htpasswd auth. Each test starts from a real signed push fixture rewritten to point at the
//! local git server.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::build::{
    break_go_vet, config, finished, hello_steps, real_parts, signed_push, signed_push_by, stage,
    Build, SERVICES,
};
use crate::common::chat_double::ChatDouble;
use crate::common::infra::job_containers;
use crate::common::{json, Delivery, TestApp};

fn image_label(reference: &str, label: &str) -> String {
    let output = Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            &format!("{{{{index .Config.Labels \"{label}\"}}}}"),
            reference,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_tag_push_builds_and_pushes_every_service_image() {
    let Some(build) = Build::start().await else {
        return;
    };
    build.git.tag("v1.0.0", &build.sha);

    let job = build.send("refs/tags/v1.0.0", &build.sha).await;
    let detail = build.finished(job).await;

    assert_eq!(
        detail.job.state,
        "success",
        "{detail:#?}\n{}",
        build.log(job)
    );
    assert_eq!(detail.images.len(), 3);
    let metrics = build.app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"deploybot_stage_seconds_count{result="success",stage="compile"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("deploybot_queue_wait_seconds_count 1"),
        "{metrics}"
    );
    for service in SERVICES {
        for name in ["check", "image", "push"] {
            let expected = if service == "frontend" && name == "check" {
                "skipped"
            } else {
                "success"
            };
            assert_eq!(
                stage(&detail, service, name).state,
                expected,
                "{service}/{name}"
            );
        }
        assert_eq!(
            stage(&detail, service, "compile").state,
            "success",
            "{service}/compile"
        );
        let image = detail.images.iter().find(|i| i.service == service).unwrap();
        let reference = format!("{}/myevents/{service}:v1.0.0", build.registry.address);
        assert_eq!(image.reference, reference);
        let pushed = build
            .registry
            .digest(&format!("myevents/{service}"), "v1.0.0")
            .await;
        assert_eq!(
            pushed.as_deref(),
            image.digest.as_deref(),
            "{service} is in the registry at the recorded digest"
        );
        assert_eq!(
            image_label(&reference, "org.opencontainers.image.revision"),
            build.sha
        );
        assert_eq!(
            image_label(&reference, "org.opencontainers.image.source"),
            build.git.url
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_push_builds_every_image_and_pushes_none() {
    let Some(build) = Build::start().await else {
        return;
    };

    let job = build.send("refs/heads/master", &build.sha).await;
    let detail = build.finished(job).await;

    assert_eq!(
        detail.job.state,
        "success",
        "{detail:#?}\n{}",
        build.log(job)
    );
    for service in SERVICES {
        assert_eq!(stage(&detail, service, "image").state, "success");
        assert_eq!(stage(&detail, service, "push").state, "skipped");
        let image = detail.images.iter().find(|i| i.service == service).unwrap();
        assert_eq!(image.digest, None, "{service} was not pushed");
        let tag = format!("sha-{}", &build.sha[..12]);
        assert_eq!(
            build
                .registry
                .digest(&format!("myevents/{service}"), &tag)
                .await,
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_go_vet_fails_only_that_service_with_its_stage_exit_code_and_log_tail() {
    use crate::common::forge_double::{ForgeDouble, STATUS_TOKEN};
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let extra = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"\n",
        github.server.uri()
    );
    let Some(build) = Build::start_with(None, &extra).await else {
        return;
    };
    let sha = build
        .git
        .commit("vet error", "master", Some("v1.0.1"), break_go_vet);

    let job = build.send("refs/tags/v1.0.1", &sha).await;
    let detail = build.finished(job).await;

    assert_eq!(detail.job.state, "failed");
    let error = detail.job.error.clone().unwrap();
    // go vet exits 2 when it reports problems (Go 1.19); the reason names the command.
    assert!(
        error
            .starts_with("eventservice failed at check, exit code 2: `go vet ./...` exited with 2"),
        "{error}"
    );
    let check = stage(&detail, "eventservice", "check");
    assert_eq!((check.state.as_str(), check.exit_code), ("failed", Some(2)));
    let tail = check.detail.clone().unwrap();
    assert!(
        tail.contains("--- last lines ---") && tail.contains("Printf"),
        "{tail}"
    );
    for later in ["compile", "image", "push"] {
        assert_eq!(
            stage(&detail, "eventservice", later).state,
            "skipped",
            "{later}"
        );
    }
    for service in ["bookingservice", "frontend"] {
        assert_eq!(
            stage(&detail, service, "push").state,
            "success",
            "{service} went on"
        );
    }
    // The forge shows it too: failure on the service's context, saying what and where.
    let contexts = [
        "deploybot",
        "deploybot/eventservice",
        "deploybot/frontend",
        "deploybot/bookingservice",
    ];
    let seen = github.wait_for_results("context", &contexts, 30).await;
    let last = |context: &str| {
        seen.iter()
            .rev()
            .find(|s| s.body["context"] == context)
            .map(|s| {
                (
                    s.body["state"].as_str().unwrap().to_owned(),
                    s.body["description"].as_str().unwrap().to_owned(),
                )
            })
            .unwrap()
    };
    let (state, description) = last("deploybot/eventservice");
    assert_eq!(state, "failure");
    assert!(
        description.starts_with("check failed (exit 2): `go vet ./...` exited with 2"),
        "{description}"
    );
    assert_eq!(last("deploybot/frontend").0, "success");
    assert_eq!(last("deploybot").0, "failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_registry_password_fails_the_push_clearly_and_shows_the_password_nowhere() {
    let wrong = "wrong-registry-password-7d1f";
    let Some(build) = Build::start_with_password(Some(wrong)).await else {
        return;
    };
    build.git.tag("v2.0.0", &build.sha);

    let job = build.send("refs/tags/v2.0.0", &build.sha).await;
    let detail = build.finished(job).await;

    assert_eq!(detail.job.state, "failed");
    let push = stage(&detail, "eventservice", "push");
    assert_eq!(push.state, "failed");
    let reason = push.detail.clone().unwrap();
    assert!(
        reason.contains("push of") && reason.to_lowercase().contains("auth"),
        "{reason}"
    );
    let everything = format!("{detail:?}{}", build.log(job));
    assert!(!everything.contains(wrong), "the password leaked");
    assert!(
        !everything.contains(&build.registry.password),
        "the real password leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_to_the_same_branch_supersedes_the_older_job() {
    let Some(build) = Build::start().await else {
        return;
    };
    let older = build.send("refs/heads/master", &build.sha).await;
    let newer_sha = build.git.commit("newer", "master", None, |_| {});
    let newer = build.send("refs/heads/master", &newer_sha).await;

    let older = build.finished(older).await;
    let newer = build.finished(newer).await;

    assert_eq!(older.job.state, "superseded", "{older:#?}");
    assert_eq!(
        newer.job.state,
        "success",
        "{newer:#?}\n{}",
        build.log(newer.job.id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_killed_mid_way_completes_once_after_a_restart() {
    use crate::common::binary::Server;
    let Some((registry, git, sha)) = real_parts() else {
        return;
    };
    git.tag("v3.0.0", &sha);
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("deploybot.toml");
    let config = config(&registry, &git, &registry.password).replacen(
        "[server]\n",
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n",
        1,
    );
    std::fs::write(&config_path, config).unwrap();
    let server = Server::start(dir.path(), &config_path, &[]);
    let delivery = signed_push(&git.url, "refs/tags/v3.0.0", &sha);
    let job = server.post_delivery("myevents", &delivery).await;
    let jobs = deploybot::store::Jobs::open(&dir.path().join("data"), "test").unwrap();

    // Kill -9 as soon as a step is running.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let detail = jobs.get(job).unwrap().unwrap();
        if detail
            .stages
            .iter()
            .any(|s| s.state == "running" && s.service != "-")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no step started: {detail:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill_hard();
    let restarted = Server::start(dir.path(), &config_path, &[]);

    let detail = finished(&jobs, job).await;
    assert_eq!(
        detail.job.state,
        "success",
        "{detail:#?}\n{}",
        restarted.log()
    );
    assert_eq!(detail.job.attempt, 2, "taken back once after the crash");
    assert!(restarted
        .log()
        .contains("Taking back jobs a previous process left running"));
    for service in SERVICES {
        let image = detail.images.iter().find(|i| i.service == service).unwrap();
        let pushed = registry
            .digest(&format!("myevents/{service}"), "v3.0.0")
            .await;
        assert_eq!(
            pushed.as_deref(),
            image.digest.as_deref(),
            "{service}: one push, one digest"
        );
    }
    assert_eq!(
        job_containers(&dir.path().join("data"), job),
        0,
        "no step container is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_printed_by_a_step_is_masked_in_the_stored_log() {
    let Some(build) = Build::start().await else {
        return;
    };
    let password = build.registry.password.clone();
    // A careless step prints a configured secret (here the registry password) to its output.
    let sha = build.git.commit("leaky step", "leaky", None, |work| {
        let path = work.join(".deploybot.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let leaky = text.replacen(
            "commands = [\"go vet ./...\", \"go test ./...\"]",
            &format!(
                "commands = [\"echo token is {password}\", \"go vet ./...\", \"go test ./...\"]"
            ),
            1,
        );
        std::fs::write(&path, leaky).unwrap();
    });

    let job = build.send("refs/heads/leaky", &sha).await;
    let detail = build.finished(job).await;

    assert_eq!(detail.job.state, "success", "{detail:#?}");
    let log = build.log(job);
    assert!(
        log.contains("token is ***"),
        "the line is kept, the value masked:\n{log}"
    );
    assert!(
        !log.contains(&password),
        "the secret reached the stored log"
    );
    assert!(!format!("{detail:?}").contains(&password));
}

#[tokio::test]
async fn the_cli_shows_jobs_stages_and_logs_of_a_store() {
    use crate::common::binary::run;
    // Arrange: a store with one job that failed at web's check, made through the library.
    let app = TestApp::spawn().await;
    let (response, _) = app.deliver_fixture("github/push.tag").await;
    assert_eq!(response.status(), 202);
    let jobs = deploybot::store::Jobs::open(app.data_dir.path(), "seed").unwrap();
    let job = jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
    crate::common::seed_stage(
        &jobs,
        job.id,
        ("web", "check", "failed"),
        Some(2),
        Some("boom"),
    );
    jobs.append_log(job.id, "web", "check", "$ make\nboom\n")
        .unwrap();
    jobs.finish(
        job.id,
        deploybot::domain::JobState::Failed,
        Some("web failed at check, exit code 2"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = app.data_dir.path().display().to_string();
    let env = [("DEPLOYBOT__SERVER__DATA_DIR", data_dir.as_str())];

    // Act
    let list = run(dir.path(), &["jobs"], &env);
    let one = run(dir.path(), &["job", "1"], &env);
    let logs = run(dir.path(), &["logs", "1", "--service", "web"], &env);
    let missing = run(dir.path(), &["job", "99"], &env);

    // Assert
    let list = String::from_utf8(list.stdout).unwrap();
    let words: Vec<&str> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        words[..5],
        ["1", "drone", "refs/tags/v0.0.1", "d2b75aa7797e", "failed"],
        "{list}"
    );
    let one = String::from_utf8(one.stdout).unwrap();
    assert!(one.contains("state: failed (attempt 1)"), "{one}");
    assert!(
        one.contains("error: web failed at check, exit code 2"),
        "{one}"
    );
    assert!(one.contains("web failed at check:\nboom"), "{one}");
    assert_eq!(
        String::from_utf8(logs.stdout).unwrap(),
        "web check| $ make\nweb check| boom\n"
    );
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(missing.stderr).unwrap().trim(),
        "job 99: no such job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_to_another_commit_is_never_pushed_over() {
    let Some(build) = Build::start().await else {
        return;
    };
    build.git.tag("v4.0.0", &build.sha);
    let first = build
        .finished(build.send("refs/tags/v4.0.0", &build.sha).await)
        .await;
    assert_eq!(first.job.state, "success", "{first:#?}");
    let before = build
        .registry
        .digest("myevents/eventservice", "v4.0.0")
        .await;
    let moved = build
        .git
        .commit("moved tag", "master", Some("v4.0.0"), |_| {});

    let second = build
        .finished(build.send("refs/tags/v4.0.0", &moved).await)
        .await;

    assert_eq!(second.job.state, "failed");
    let push = stage(&second, "eventservice", "push");
    assert!(
        push.detail
            .as_deref()
            .unwrap()
            .contains("pushed tags are immutable"),
        "{push:?}"
    );
    assert_eq!(
        build
            .registry
            .digest("myevents/eventservice", "v4.0.0")
            .await,
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_touches_only_the_frontend_rebuilds_only_the_frontend() {
    let Some(build) = Build::start().await else {
        return;
    };
    build.git.tag("v6.0.0", &build.sha);
    let first = build
        .finished(build.send("refs/tags/v6.0.0", &build.sha).await)
        .await;
    assert_eq!(first.job.state, "success", "{first:#?}");

    let sha = build
        .git
        .commit("frontend only", "master", Some("v6.1.0"), |dir| {
            let page = dir.join("src/frontend/index.html");
            let text = std::fs::read_to_string(&page).unwrap();
            std::fs::write(page, text.replace("</body>", "<!-- v6.1 --></body>")).unwrap();
        });
    let second = build
        .finished(build.send("refs/tags/v6.1.0", &sha).await)
        .await;

    assert_eq!(second.job.state, "success", "{second:#?}");
    assert_eq!(stage(&second, "frontend", "compile").state, "success");
    for service in ["eventservice", "bookingservice"] {
        assert_eq!(
            stage(&second, service, "compile").state,
            "skipped",
            "{service}"
        );
        let old = build
            .registry
            .digest(&format!("myevents/{service}"), "v6.0.0")
            .await;
        let new = build
            .registry
            .digest(&format!("myevents/{service}"), "v6.1.0")
            .await;
        assert!(new.is_some());
        assert_eq!(
            new, old,
            "{service}: unchanged, so the same image under the new tag"
        );
    }
    let old = build.registry.digest("myevents/frontend", "v6.0.0").await;
    let new = build.registry.digest("myevents/frontend", "v6.1.0").await;
    assert_ne!(new, old, "the frontend changed");
    let log = build.log(second.job.id);
    assert!(log.contains("tagged in the registry"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_tag_reuses_every_image_instead_of_rebuilding() {
    let Some(build) = Build::start().await else {
        return;
    };
    build.git.tag("v5.0.0", &build.sha);
    build.git.tag("v5.0.1", &build.sha);
    let first = build
        .finished(build.send("refs/tags/v5.0.0", &build.sha).await)
        .await;
    assert_eq!(first.job.state, "success", "{first:#?}");

    let second = build
        .finished(build.send("refs/tags/v5.0.1", &build.sha).await)
        .await;

    assert_eq!(second.job.state, "success", "{second:#?}");
    for service in SERVICES {
        let compile = stage(&second, service, "compile");
        assert_eq!(compile.state, "skipped", "{service}");
        assert!(
            compile
                .detail
                .as_deref()
                .unwrap()
                .starts_with("unchanged inputs"),
            "{compile:?}"
        );
        let old = build
            .registry
            .digest(&format!("myevents/{service}"), "v5.0.0")
            .await;
        let new = build
            .registry
            .digest(&format!("myevents/{service}"), "v5.0.1")
            .await;
        assert!(new.is_some());
        assert_eq!(new, old, "{service}: the very same image under the new tag");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_push_reports_pending_then_success_per_service_and_one_chat_message_with_digests() {
    use crate::common::forge_double::{states, ForgeDouble, STATUS_TOKEN};
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let chat = ChatDouble::start().await;
    let extra = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"\n\n[report]\nbase_url = \"https://deploybot.example\"\nretry_base_ms = 20\n{}",
        github.server.uri(),
        chat.config()
    );
    let Some(build) = Build::start_with(None, &extra).await else {
        return;
    };
    build.git.tag("v6.0.0", &build.sha);

    let job = build.send("refs/tags/v6.0.0", &build.sha).await;
    let detail = build.finished(job).await;
    assert_eq!(detail.job.state, "success", "{detail:#?}");

    // Each context goes pending (once per stage that ends) and then to its result; older
    // pendings still waiting are superseded, never sent after the result.
    let contexts = [
        "deploybot",
        "deploybot/eventservice",
        "deploybot/bookingservice",
        "deploybot/frontend",
    ];
    let seen = github.wait_for_results("context", &contexts, 30).await;
    assert!(
        seen.iter().all(|s| s.path.ends_with(&build.sha)),
        "every status is on the pushed sha"
    );
    for context in contexts {
        let states = states(&seen, "context", context);
        let (last, before) = states.split_last().unwrap();
        assert_eq!(last, "success", "{context}: {states:?}");
        assert!(
            !before.is_empty() && before.iter().all(|s| s == "pending"),
            "{context}: {states:?}"
        );
    }
    for service in SERVICES {
        let last = seen
            .iter()
            .rev()
            .find(|s| s.body["context"] == format!("deploybot/{service}"))
            .unwrap();
        let description = last.body["description"].as_str().unwrap();
        assert!(
            description.starts_with("Pushed ") && description.contains("@sha256:"),
            "{description}"
        );
        assert!(description.chars().count() <= 140);
    }
    let messages = chat.messages().await;
    assert_eq!(messages.len(), 1, "one message per deploy");
    let text = messages[0]["text"].as_str().unwrap();
    for image in &detail.images {
        assert!(text.contains(image.digest.as_deref().unwrap()), "{text}");
    }
    assert!(
        text.contains("v6.0.0") && text.contains(&build.sha[..7]),
        "{text}"
    );
    let captured = format!(
        "{detail:?}{}{}",
        build.log(job),
        github.everything_received().await
    );
    assert!(
        !captured.contains("oncall-secret-path"),
        "the chat webhook URL is a secret"
    );
    assert!(!captured.contains(STATUS_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_branch_name_and_pusher_arrive_escaped_in_the_chat_message() {
    // Arrange: the git server has no such branch, so the job fails at checkout and the
    // failure's tail (git's error, naming the ref) goes into the message as well.
    let chat = ChatDouble::start().await;
    let Some(build) = Build::start_with(None, &chat.config()).await else {
        return;
    };
    let push = signed_push_by(
        &build.git.url,
        "refs/heads/<!channel>",
        &build.sha,
        "<https://evil.example|deploybot>",
    );

    // Act
    let response = build.app.post("myevents", &push).await;
    assert_eq!(response.status(), 202);
    let job = json(response).await["job"].as_i64().unwrap();
    let detail = build.finished(job).await;

    // Assert
    let messages = chat.messages().await;
    assert_eq!(detail.job.state, "failed", "{detail:#?}");
    assert_eq!(messages.len(), 1, "{detail:#?}");
    let text = messages[0]["text"].as_str().unwrap();
    assert_eq!(text.matches("```").count(), 2, "{text}");
    assert!(!text.contains('<') && !text.contains('>'), "{text}");
    assert!(
        text.contains("&lt;!channel&gt;")
            && text.contains("&lt;https://evil.example|deploybot&gt;"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gitlab_tag_push_reports_pending_then_success_per_service_on_gitlab() {
    use crate::common::forge_double::{states, ForgeDouble, STATUS_TOKEN};
    let Some((registry, git, sha)) = real_parts() else {
        return;
    };
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    git.tag("v7.0.0", &sha);
    let config = config(&registry, &git, &registry.password).replacen(
        "[[projects]]\nname = \"myevents\"\nforge = \"github\"\nrepository = \"bradrydzewski/drone-test-go\"",
        &format!(
            "[[projects]]\nname = \"myevents\"\nforge = \"gitlab\"\nrepository = \"jsmith/example\"\nstatus_token = \"{STATUS_TOKEN}\"\napi_url = \"{}/api/v4\"",
            gitlab.server.uri()
        ),
        1,
    );
    let app = TestApp::spawn_config(&config).await;
    // GitLab's published Tag Push Hook, rewritten to this commit and git server.
    let fixture = Delivery::fixture("gitlab/tag_push.created").with_unique_id();
    let mut payload: Value = serde_json::from_slice(&fixture.body).unwrap();
    payload["ref"] = "refs/tags/v7.0.0".into();
    payload["after"] = sha.clone().into();
    payload["checkout_sha"] = sha.clone().into();
    payload["project"]["git_http_url"] = git.url.clone().into();
    let delivery = Delivery {
        headers: fixture.headers,
        body: serde_json::to_vec(&payload).unwrap(),
    };

    let response = app.post("myevents", &delivery).await;
    assert_eq!(response.status(), 202);
    let job = json(response).await["job"].as_i64().unwrap();
    let jobs = deploybot::store::Jobs::open(app.data_dir.path(), "test").unwrap();
    let detail = finished(&jobs, job).await;
    assert_eq!(detail.job.state, "success", "{detail:#?}");

    let names = [
        "deploybot",
        "deploybot/eventservice",
        "deploybot/bookingservice",
        "deploybot/frontend",
    ];
    let seen = gitlab.wait_for_results("name", &names, 30).await;
    for name in names {
        let states = states(&seen, "name", name);
        assert_eq!(
            states.first().map(String::as_str),
            Some("pending"),
            "{name}: {states:?}"
        );
        assert_eq!(
            states.last().map(String::as_str),
            Some("success"),
            "{name}: {states:?}"
        );
    }
    assert!(seen
        .iter()
        .all(|s| s.path == format!("/api/v4/projects/jsmith%2Fexample/statuses/{sha}")));
    assert!(seen.iter().all(|s| s.body["ref"] == "v7.0.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_running_job_ends_its_commit_status_as_canceled() {
    use crate::common::forge_double::{states, ForgeDouble, STATUS_TOKEN};
    use crate::common::infra::{docker_with_base_images, GitServer, Registry};
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let extra = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"\n\n[report]\nretry_base_ms = 20\n\n[web]\naction_token = \"cancel-token\"\n",
        github.server.uri()
    );
    if docker_with_base_images().is_none() {
        return;
    }
    let (Some(registry), Some((git, _))) = (Registry::start(), GitServer::start_fixture("hello"))
    else {
        return;
    };
    // A check step that takes long enough to be canceled while it runs.
    let sha = git.commit("slow check", "master", Some("v1.0.0"), |dir| {
        let path = dir.join(".deploybot.toml");
        let mut definition = std::fs::read_to_string(&path).unwrap();
        definition.push_str(
            "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"sleep 120\"]\n",
        );
        std::fs::write(path, definition).unwrap();
    });
    let build = Build::with_parts(registry, git, sha.clone(), None, &extra)
        .await
        .unwrap();
    let job = build.send("refs/tags/v1.0.0", &sha).await;
    build.wait_for_running(job, "check").await;
    let jobs = build.jobs();

    let canceled = build
        .app
        .act(&format!("/api/v1/jobs/{job}/cancel"), "cancel-token")
        .await;
    assert_eq!(canceled.status(), 202);

    let seen = github
        .wait_until(60, |seen| {
            states(seen, "context", "deploybot")
                .last()
                .map(String::as_str)
                == Some("error")
        })
        .await;
    let last = seen
        .iter()
        .rev()
        .find(|s| s.body["context"] == "deploybot")
        .unwrap();
    assert_eq!(last.body["state"], "error");
    assert_eq!(last.body["description"], "Canceled by an operator");
    assert_eq!(
        jobs.state(job)
            .unwrap()
            .map(deploybot::domain::JobState::as_str),
        Some("canceled")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_a_step_prints_encoded_or_line_by_line_is_masked_in_the_log_statuses_and_chat() {
    use crate::common::forge_double::{ForgeDouble, STATUS_TOKEN};
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use base64::Engine;
    // A multi-line secret, as a key file holds one.
    let key_lines = [
        "-----BEGIN PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
        "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu",
        "-----END PRIVATE KEY-----",
    ];
    let key = key_lines.join("\n");
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let chat = ChatDouble::start().await;
    let extra = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"\n\n[report]\nretry_base_ms = 20\n{}\n\n\
         [[projects]]\nname = \"vault\"\nforge = \"github\"\nrepository = \"team/vault\"\n\
         webhook_secret = \"\"\"{key}\"\"\"\n",
        github.server.uri(),
        chat.config()
    );
    let Some(build) = Build::hello(|c| format!("{c}{extra}")).await else {
        return;
    };
    let password = build.registry.password.clone();
    // What a careless step prints, and from which character on it is the secret's alone (a
    // base64 value's first characters encode the prefix before the secret).
    let printed = [
        (STANDARD.encode(format!("deploybot:{password}")), 14),
        (URL_SAFE.encode(format!("ab{password}")), 3),
        (STANDARD.encode(&key), 0),
        (
            percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
            0,
        ),
        (key_lines[1].to_owned(), 0),
        (key_lines[2].to_owned(), 0),
    ];
    let commands: Vec<String> = printed
        .iter()
        .map(|(p, _)| format!("\"echo {p}\""))
        .collect();
    let steps = format!(
        "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [{}, \"exit 3\"]\n",
        commands.join(", ")
    );
    let (job, detail) = build
        .push_change("refs/tags/v0.0.9", hello_steps(&steps))
        .await;
    assert_eq!(detail.job.state, "failed", "{detail:#?}");
    github
        .wait_for_results("context", &["deploybot/web"], 30)
        .await;

    let log = build.log(job);
    assert!(log.matches("***").count() >= printed.len(), "{log}");
    let captured = format!(
        "{log}{detail:?}{}{:?}",
        github.everything_received().await,
        chat.messages().await
    );
    for (form, (value, secret_from)) in printed.iter().enumerate() {
        // Of a base64 value only the one or two characters the secret shares with what
        // surrounds it may be left: no 12 characters of the secret's part in a row survive.
        let secret_part = &value.as_bytes()[*secret_from..value.len() - 2];
        let survives = secret_part
            .windows(12)
            .any(|w| captured.contains(std::str::from_utf8(w).unwrap()));
        assert!(
            !survives,
            "form {form} ({value}) reached the log, a status or chat:\n{captured}"
        );
    }
}
