//! Pull requests (GitHub) and merge requests (GitLab): which events build the request's head,
//! which cancel its jobs, and what a build of one does (checks, never a push or a deploy).

use std::time::Duration;

use serde_json::Value;

use crate::common::build::{break_go_vet, hello_steps, signed_pull, stage, Build, SERVICES};
use crate::common::forge_double::{states, ForgeDouble, Seen, STATUS_TOKEN};
use crate::common::{json, project_for, Delivery, TestApp, FIXTURE_PROJECTS};

const ACTION_TOKEN: &str = "approve-token";

/// The published fixture's head commit and the job it queued, after delivering it.
async fn queued_job(app: &TestApp, fixture: &str) -> (Value, Value) {
    let (response, _) = app.deliver_fixture(fixture).await;
    assert_eq!(response.status(), 202, "{fixture}");
    let answer = json(response).await;
    assert_eq!(answer["status"], "queued", "{fixture}: {answer}");
    let job = app.get(&format!("/api/v1/jobs/{}", answer["job"])).await;
    (answer, json(job).await["job"].clone())
}

#[tokio::test]
async fn every_pull_request_event_that_builds_queues_a_job_of_the_requests_head() {
    for (fixture, git_ref, sha) in [
        (
            "github/pull_request.opened",
            "refs/pull/2/head",
            "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        ),
        (
            "github/pull_request.synchronize",
            "refs/pull/2/head",
            "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        ),
        (
            "github/pull_request.reopened",
            "refs/pull/2/head",
            "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        ),
        (
            "github/pull_request.ready_for_review",
            "refs/pull/2/head",
            "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
        ),
        (
            "gitlab/merge_request.opened",
            "refs/merge-requests/1/head",
            "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        ),
        (
            "gitlab/merge_request.reopen",
            "refs/merge-requests/1/head",
            "c4c79227ed610f1151f05bbc5be33b4f340d39c8",
        ),
        (
            "gitlab/merge_request.update",
            "refs/merge-requests/3/head",
            "c136499ec574e1034b24c5d306de9acda3005367",
        ),
    ] {
        // Arrange
        let app = TestApp::spawn().await;

        // Act
        let (_, job) = queued_job(&app, fixture).await;

        // Assert
        assert_eq!(job["git_ref"], git_ref, "{fixture}");
        assert_eq!(job["sha"], sha, "{fixture}");
        assert_eq!(job["project"], project_for(fixture), "{fixture}");
        let row = app.deliveries().remove(0);
        let event: Value = serde_json::from_str(row.event_json.as_deref().unwrap()).unwrap();
        assert_eq!(event["kind"], "pull", "{fixture}");
        assert!(
            event["pull"]["number"].as_u64().is_some(),
            "{fixture}: {event}"
        );
        assert_eq!(event["pull"]["from_fork"], false, "{fixture}");
    }
}

#[tokio::test]
async fn closing_or_merging_a_pull_request_cancels_its_queued_job() {
    for (opened, closed) in [
        ("github/pull_request.opened", "github/pull_request.closed"),
        ("gitlab/merge_request.reopen", "gitlab/merge_request.close"),
        ("gitlab/merge_request.reopen", "gitlab/merge_request.merge"),
    ] {
        // Arrange
        let app = TestApp::spawn().await;
        let (answer, _) = queued_job(&app, opened).await;
        let pull_job = answer["job"].as_i64().unwrap();

        // Act
        let (response, _) = app.deliver_fixture(closed).await;

        // Assert
        assert_eq!(response.status(), 200, "{closed}");
        let answer = json(response).await;
        assert_eq!(answer["status"], "canceled", "{closed}: {answer}");
        assert_eq!(answer["job"], pull_job, "{closed}");
        assert!(
            answer["reason"]
                .as_str()
                .unwrap()
                .contains("its queued and running jobs are canceled"),
            "{answer}"
        );
        let job = json(app.get(&format!("/api/v1/jobs/{pull_job}")).await).await;
        assert_eq!(job["job"]["state"], "canceled", "{closed}: {job}");
    }
}

#[tokio::test]
async fn a_draft_builds_only_when_the_project_says_so() {
    let draft = |fixture: &str| {
        let delivery = Delivery::fixture(fixture).with_unique_id();
        let mut payload: Value = serde_json::from_slice(&delivery.body).unwrap();
        payload["pull_request"]["draft"] = true.into();
        delivery.with_github_body(
            serde_json::to_vec(&payload).unwrap(),
            crate::common::TEST_SECRET,
        )
    };
    let app = TestApp::spawn().await;
    let response = app
        .post("codertocat", &draft("github/pull_request.opened"))
        .await;
    assert_eq!(response.status(), 200);
    let answer = json(response).await;
    assert_eq!(answer["status"], "ignored");
    assert_eq!(
        answer["reason"],
        "pull request #2 (opened): a draft; this project builds drafts only with pull_request_drafts = true"
    );

    let projects = FIXTURE_PROJECTS.replace(
        "repository = \"Codertocat/Hello-World\"\n",
        "repository = \"Codertocat/Hello-World\"\npull_request_drafts = true\n",
    );
    let app = TestApp::spawn_with(&projects, "").await;
    let response = app
        .post("codertocat", &draft("github/pull_request.opened"))
        .await;
    assert_eq!(response.status(), 202);
}

/// The published `opened` event, its head moved to another repository (no fork example is
/// published), signed.
fn fork_opened() -> Delivery {
    let delivery = Delivery::fixture("github/pull_request.opened").with_unique_id();
    let mut payload: Value = serde_json::from_slice(&delivery.body).unwrap();
    payload["pull_request"]["head"]["repo"]["full_name"] = "stranger/Hello-World".into();
    delivery.with_github_body(
        serde_json::to_vec(&payload).unwrap(),
        crate::common::TEST_SECRET,
    )
}

#[tokio::test]
async fn a_pull_request_from_a_fork_waits_for_approval_by_default() {
    let app = TestApp::spawn().await;

    let response = app.post("codertocat", &fork_opened()).await;

    assert_eq!(response.status(), 202);
    let answer = json(response).await;
    assert_eq!(answer["status"], "waiting", "{answer}");
    let job = json(app.get(&format!("/api/v1/jobs/{}", answer["job"])).await).await;
    assert_eq!(job["job"]["state"], "waiting", "{job}");
}

#[tokio::test]
async fn a_project_that_ignores_forks_records_their_pull_requests_and_runs_nothing() {
    let projects = FIXTURE_PROJECTS.replace(
        "repository = \"Codertocat/Hello-World\"\n",
        "repository = \"Codertocat/Hello-World\"\nfork_pull_requests = \"ignore\"\n",
    );
    let app = TestApp::spawn_with(&projects, "").await;

    let response = app.post("codertocat", &fork_opened()).await;

    assert_eq!(response.status(), 200);
    let answer = json(response).await;
    assert_eq!(answer["status"], "ignored");
    assert_eq!(
        answer["reason"],
        "pull request #2 (opened) from a fork's branch changes: fork_pull_requests = \"ignore\""
    );
    assert_eq!(app.jobs(), 0);
}

#[tokio::test]
async fn pull_request_events_name_only_the_forges_words_in_check_config() {
    let projects = FIXTURE_PROJECTS.replace(
        "repository = \"mike/diaspora\"\nwebhook_secret",
        "repository = \"mike/diaspora\"\npull_request_events = [\"synchronize\"]\nfork_pull_requests = \"trust\"\nwebhook_secret",
    );
    let problems = deploybot::config::Settings::from_sources(deploybot::config::Sources {
        file: None,
        inline_toml: Some(&format!("[worker]\nenabled = false\n{projects}")),
        env: Default::default(),
    })
    .unwrap_err()
    .to_string();

    assert!(
        problems.contains("projects[4].pull_request_events: \"synchronize\" is not a gitlab pull request event that builds (one of open, reopen, update)"),
        "{problems}"
    );
}

/// A deploybot building the sample MyEvents repository, reporting statuses to a GitHub
/// double; None where a real part is missing outside CI.
async fn myevents_reporting() -> Option<(Build, ForgeDouble)> {
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let extra = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{}\"\n\n[report]\nretry_base_ms = 20\n",
        github.server.uri()
    );
    let build = Build::start_with(None, &extra).await?;
    Some((build, github))
}

#[tokio::test]
async fn a_pull_request_builds_every_service_pushes_nothing_and_reports_on_its_head() {
    // Arrange: a branch with a commit, kept by the forge as pull request #7's head.
    let Some((build, github)) = myevents_reporting().await else {
        return;
    };
    let sha = build
        .git
        .commit("a change to review", "feature", None, |dir| {
            std::fs::write(dir.join("REVIEW.md"), "please look\n").unwrap();
        });
    build.git.set_ref("refs/pull/7/head", &sha);

    // Act
    let response = build
        .app
        .post("myevents", &signed_pull("opened", 7, &sha))
        .await;

    // Assert
    assert_eq!(response.status(), 202);
    let job = json(response).await["job"].as_i64().unwrap();
    let detail = build.finished(job).await;
    assert_eq!(detail.job.state, "success", "{detail:#?}");
    assert_eq!(detail.job.git_ref, "refs/pull/7/head");
    for service in SERVICES {
        assert_eq!(
            stage(&detail, service, "compile").state,
            "success",
            "{service}"
        );
        assert_eq!(
            stage(&detail, service, "push").state,
            "skipped",
            "{service}"
        );
        assert_eq!(
            stage(&detail, service, "deploy").state,
            "skipped",
            "{service}"
        );
        let reference = format!("myevents/{service}");
        let tag = format!("pr-7-{}", &sha[..12]);
        assert_eq!(
            build.registry.digest(&reference, &tag).await,
            None,
            "{service}"
        );
    }
    assert!(
        detail.images.iter().all(|i| i.digest.is_none()),
        "{detail:#?}"
    );
    let contexts: Vec<String> = std::iter::once("deploybot".to_owned())
        .chain(SERVICES.iter().map(|s| format!("deploybot/{s}")))
        .collect();
    let names: Vec<&str> = contexts.iter().map(String::as_str).collect();
    let seen = github.wait_for_results("context", &names, 60).await;
    for context in &names {
        assert_eq!(
            states(&seen, "context", context).last().map(String::as_str),
            Some("success"),
            "{context}"
        );
    }
    assert!(seen
        .iter()
        .all(|s| s.path.ends_with(&format!("/statuses/{sha}"))));
    let said = |context: &str, state: &str| {
        seen.iter()
            .find(|s| s.body["context"] == context && s.body["state"] == state)
            .map(|s| s.body["description"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert!(said("deploybot", "pending").starts_with("Queued: pull request #7 accepted"));
    assert!(said("deploybot/frontend", "pending").contains("pull request #7"));
    assert!(said("deploybot/frontend", "success").ends_with("for pull request #7; never pushed"));
    assert_eq!(
        said("deploybot", "success"),
        "Built and checked every service; nothing pushed"
    );
}

/// A check step that runs long enough for something to happen while it runs.
const SLOW_CHECK: &str =
    "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"sleep 120\"]\n";

/// A deploybot building `tests/fixtures/hello` (statuses to a GitHub double), with pull
/// request #3's head at a commit whose check is slow, and that request opened: the build,
/// the double, the head and its job, once the slow check runs.
async fn slow_pull_request_running() -> Option<(Build, ForgeDouble, String, i64)> {
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let uri = github.server.uri();
    let build = Build::hello(|config| {
        config.replacen(
            "allow_network = true\n",
            &format!(
                "allow_network = true\nstatus_token = \"{STATUS_TOKEN}\"\napi_url = \"{uri}\"\n"
            ),
            1,
        )
    })
    .await?;
    let sha = build
        .git
        .commit("slow check", "feature", None, hello_steps(SLOW_CHECK));
    build.git.set_ref("refs/pull/3/head", &sha);
    let response = build
        .app
        .post("myevents", &signed_pull("opened", 3, &sha))
        .await;
    assert_eq!(response.status(), 202);
    let job = json(response).await["job"].as_i64().unwrap();
    build.wait_for_running(job, "check").await;
    Some((build, github, sha, job))
}

/// The last state and description of the overall status of `sha`.
fn overall(seen: &[Seen], sha: &str) -> Option<(String, String)> {
    seen.iter()
        .rev()
        .find(|s| s.body["context"] == "deploybot" && s.path.ends_with(sha))
        .map(|s| {
            (
                s.body["state"].as_str().unwrap_or("").to_owned(),
                s.body["description"].as_str().unwrap_or("").to_owned(),
            )
        })
}

#[tokio::test]
async fn a_new_commit_to_a_pull_request_supersedes_its_running_job() {
    // Arrange
    let Some((build, github, first, old_job)) = slow_pull_request_running().await else {
        return;
    };
    // The new head drops the slow step again.
    let second = build.git.commit("faster", "feature", None, |dir| {
        let path = dir.join(".deploybot.toml");
        let definition = std::fs::read_to_string(&path).unwrap();
        std::fs::write(path, definition.replace(SLOW_CHECK, "")).unwrap();
    });
    build.git.set_ref("refs/pull/3/head", &second);

    // Act
    let response = build
        .app
        .post("myevents", &signed_pull("synchronize", 3, &second))
        .await;

    // Assert
    assert_eq!(response.status(), 202);
    let new_job = json(response).await["job"].as_i64().unwrap();
    assert_eq!(build.finished(old_job).await.job.state, "superseded");
    assert_eq!(build.finished(new_job).await.job.state, "success");
    let seen = github
        .wait_until(60, |seen| {
            overall(seen, &first).is_some_and(|(state, _)| state == "error")
                && overall(seen, &second).is_some_and(|(state, _)| state == "success")
        })
        .await;
    assert_eq!(
        overall(&seen, &first),
        Some((
            "error".into(),
            "Superseded by a newer commit to pull request #3".into()
        ))
    );
}

#[tokio::test]
async fn closing_a_pull_request_cancels_its_running_job_and_ends_its_status() {
    // Arrange
    let Some((build, github, sha, job)) = slow_pull_request_running().await else {
        return;
    };

    // Act
    let response = build
        .app
        .post("myevents", &signed_pull("closed", 3, &sha))
        .await;

    // Assert
    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["status"], "canceled");
    let detail = build.finished(job).await;
    assert_eq!(detail.job.state, "canceled");
    assert_eq!(
        detail.job.error.as_deref(),
        Some("canceled: pull request #3 was closed")
    );
    let seen = github
        .wait_until(60, |seen| {
            overall(seen, &sha).is_some_and(|(state, _)| state == "error")
                && states(seen, "context", "deploybot/web")
                    .last()
                    .map(String::as_str)
                    == Some("error")
        })
        .await;
    assert_eq!(
        overall(&seen, &sha),
        Some((
            "error".into(),
            "Canceled: pull request #3 was closed".into()
        ))
    );
    assert_eq!(
        states(&seen, "context", "deploybot/web")
            .last()
            .map(String::as_str),
        Some("error"),
        "the service's check ends too"
    );
}

#[tokio::test]
async fn a_fork_waits_for_approval_then_runs_its_base_branchs_pipeline_with_no_secret() {
    // Arrange: the base branch's pipeline prints its step's environment; the fork's own
    // pipeline would announce itself (and it asks for the network).
    let github = ForgeDouble::github(vec![(201, None)]).await;
    let uri = github.server.uri();
    let Some(build) = Build::hello(|config| {
        config.replacen(
            "allow_network = true\n",
            &format!(
                "allow_network = true\nstatus_token = \"{STATUS_TOKEN}\"\napi_url = \"{uri}\"\n\n\
                 [web]\naction_token = \"{ACTION_TOKEN}\"\n"
            ),
            1,
        )
    })
    .await
    else {
        return;
    };
    let print_env =
        "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"env\", \"echo base-pipeline-ran\"]\n";
    build.git.commit(
        "print the environment",
        "master",
        None,
        hello_steps(print_env),
    );
    let fork_steps = "\n[[services.steps]]\nstage = \"compile\"\nimage = \"busybox\"\nnetwork = true\ncommands = [\"echo fork-pipeline-ran\"]\n";
    let sha = build.git.commit(
        "a stranger's change",
        "fork-work",
        None,
        hello_steps(fork_steps),
    );
    build.git.set_ref("refs/pull/5/head", &sha);
    let delivery = {
        let fixture = signed_pull("opened", 5, &sha);
        let mut payload: Value = serde_json::from_slice(&fixture.body).unwrap();
        payload["pull_request"]["head"]["repo"]["full_name"] = "stranger/drone-test-go".into();
        payload["pull_request"]["base"]["ref"] = "master".into();
        fixture.with_github_body(
            serde_json::to_vec(&payload).unwrap(),
            crate::common::TEST_SECRET,
        )
    };

    // Act 1: the request arrives.
    let response = build.app.post("myevents", &delivery).await;

    // Assert 1: it waits, and nothing runs.
    assert_eq!(response.status(), 202);
    let answer = json(response).await;
    assert_eq!(answer["status"], "waiting", "{answer}");
    let job = answer["job"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = build.jobs().get(job).unwrap().unwrap();
    assert_eq!(waiting.job.state, "waiting");
    assert!(waiting.stages.is_empty(), "{waiting:#?}");
    let seen = github.wait_for(1, 30).await;
    assert_eq!(
        seen[0].body["description"],
        "Waiting for approval: pull request #5 comes from a fork"
    );

    // Act 2: an operator approves it.
    let approved = build
        .app
        .act(&format!("/api/v1/jobs/{job}/approve"), ACTION_TOKEN)
        .await;

    // Assert 2: it runs the base branch's pipeline, and no secret reaches its step.
    assert_eq!(approved.status(), 202);
    let detail = build.finished(job).await;
    assert_eq!(detail.job.state, "success", "{detail:#?}");
    let log = build.log(job);
    assert!(log.contains("base-pipeline-ran"), "{log}");
    assert!(!log.contains("fork-pipeline-ran"), "{log}");
    assert!(log.contains("approved by an operator"), "{log}");
    assert!(log.contains("network off"), "a fork's image build: {log}");
    for secret in [
        crate::common::TEST_SECRET,
        STATUS_TOKEN,
        ACTION_TOKEN,
        build.registry.password.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret} reached the fork's step");
    }
    assert!(
        log.contains("PATH="),
        "the step printed its environment: {log}"
    );
    let seen = github
        .wait_until(60, |seen| {
            states(seen, "context", "deploybot")
                .last()
                .map(String::as_str)
                == Some("success")
        })
        .await;
    let overall: Vec<&str> = seen
        .iter()
        .filter(|s| s.body["context"] == "deploybot")
        .map(|s| s.body["description"].as_str().unwrap_or(""))
        .collect();
    assert!(
        overall.contains(&"Approved: pull request #5 queued, waiting for a worker"),
        "{overall:?}"
    );
}

#[tokio::test]
async fn the_jobs_list_filters_to_pull_requests_and_shows_each_ones_number_title_and_author() {
    // Arrange: a push's job and a pull request's.
    let app = TestApp::spawn().await;
    let (pushed, _) = app.deliver_fixture("github/push.branch").await;
    assert_eq!(pushed.status(), 202);
    let (answer, _) = queued_job(&app, "github/pull_request.opened").await;

    // Act
    let listed = json(app.get("/api/v1/jobs?kind=pull").await).await;
    let page = app.get("/?kind=pull").await.text().await.unwrap();
    let refused = app.get("/api/v1/jobs?kind=note").await;

    // Assert
    let jobs = listed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{listed}");
    assert_eq!(jobs[0]["id"], answer["job"]);
    assert_eq!(jobs[0]["pull"]["number"], 2);
    assert_eq!(
        jobs[0]["pull"]["title"],
        "Update the README with new information."
    );
    assert_eq!(jobs[0]["pull"]["author"], "Codertocat");
    assert_eq!(jobs[0]["pull"]["source_branch"], "changes");
    assert!(
        page.contains(
            "#2 Update the README with new information. by Codertocat: changes into master"
        ),
        "{page}"
    );
    let deliveries = app.deliveries();
    assert_eq!(
        deliveries[0].outcome_text(),
        format!(
            "queued (job {}): pull request #2 Update the README with new information. by Codertocat from changes",
            answer["job"]
        )
    );
    assert_eq!(refused.status(), 400);
    assert_eq!(
        json(refused).await["error"],
        "query kind: unknown kind \"note\" (expected one of branch, tag, pull)"
    );
}

#[tokio::test]
async fn a_gitlab_merge_request_builds_and_reports_through_gitlabs_status_api() {
    // Arrange: the hello repository as a GitLab project, merge request !4's head kept by the
    // forge under refs/merge-requests/4/head.
    let gitlab = ForgeDouble::gitlab(vec![(201, None)]).await;
    let uri = gitlab.server.uri();
    let Some(build) = Build::hello(|config| {
        config
            .replacen(
                "forge = \"github\"\nrepository = \"bradrydzewski/drone-test-go\"\n",
                "forge = \"gitlab\"\nrepository = \"gitlabhq/gitlab-test\"\n",
                1,
            )
            .replacen(
                "allow_network = true\n",
                &format!(
                    "allow_network = true\nstatus_token = \"{STATUS_TOKEN}\"\napi_url = \"{uri}/api/v4\"\n"
                ),
                1,
            )
    })
    .await
    else {
        return;
    };
    let sha = build
        .git
        .commit("a change to merge", "feature", None, |dir| {
            std::fs::write(dir.join("CHANGE"), "1\n").unwrap();
        });
    build.git.set_ref("refs/merge-requests/4/head", &sha);
    // GitLab's token is a header, not a signature over the body: the body may change.
    let mut delivery = Delivery::fixture("gitlab/merge_request.opened").with_unique_id();
    let mut payload: Value = serde_json::from_slice(&delivery.body).unwrap();
    payload["object_attributes"]["iid"] = 4.into();
    payload["object_attributes"]["last_commit"]["id"] = sha.as_str().into();
    delivery.body = serde_json::to_vec(&payload).unwrap();

    // Act
    let response = build.app.post("myevents", &delivery).await;

    // Assert
    assert_eq!(response.status(), 202);
    let job = json(response).await["job"].as_i64().unwrap();
    let detail = build.finished(job).await;
    assert_eq!(detail.job.state, "success", "{detail:#?}");
    assert_eq!(detail.job.git_ref, "refs/merge-requests/4/head");
    let seen = gitlab
        .wait_for_results("name", &["deploybot", "deploybot/web"], 60)
        .await;
    assert_eq!(
        states(&seen, "name", "deploybot")
            .last()
            .map(String::as_str),
        Some("success")
    );
    assert!(seen.iter().all(|s| {
        s.path == format!("/api/v4/projects/gitlabhq%2Fgitlab-test/statuses/{sha}")
            && s.body["ref"] == "refs/merge-requests/4/head"
    }));
    assert!(seen.iter().any(|s| s.body["description"]
        .as_str()
        .is_some_and(|d| d.contains("merge request !4"))));
}

#[tokio::test]
async fn a_pull_request_whose_go_vet_fails_fails_that_services_check_naming_the_command() {
    // Arrange
    let Some((build, github)) = myevents_reporting().await else {
        return;
    };
    let sha = build.git.commit("vet error", "feature", None, break_go_vet);
    build.git.set_ref("refs/pull/8/head", &sha);

    // Act
    let response = build
        .app
        .post("myevents", &signed_pull("opened", 8, &sha))
        .await;

    // Assert
    assert_eq!(response.status(), 202);
    let job = json(response).await["job"].as_i64().unwrap();
    let detail = build.finished(job).await;
    assert_eq!(detail.job.state, "failed");
    assert_eq!(stage(&detail, "eventservice", "check").state, "failed");
    assert_eq!(stage(&detail, "eventservice", "check").exit_code, Some(2));
    let seen = github
        .wait_for_results("context", &["deploybot", "deploybot/eventservice"], 60)
        .await;
    let last = seen
        .iter()
        .rev()
        .find(|s| s.body["context"] == "deploybot/eventservice")
        .unwrap();
    assert_eq!(last.body["state"], "failure");
    assert!(
        last.body["description"]
            .as_str()
            .unwrap()
            .starts_with("check failed (exit 2): `go vet ./...` exited with 2"),
        "{}",
        last.body
    );
    assert_eq!(
        states(&seen, "context", "deploybot")
            .last()
            .map(String::as_str),
        Some("failure")
    );
}

#[tokio::test]
async fn an_operator_approves_a_forks_waiting_job_from_its_page_with_the_action_token() {
    // Arrange
    let app = TestApp::spawn_config(&format!(
        "[server]\n\n[worker]\nenabled = false\n\n[web]\naction_token = \"{ACTION_TOKEN}\"\n{FIXTURE_PROJECTS}"
    ))
    .await;
    let response = app.post("codertocat", &fork_opened()).await;
    let job = json(response).await["job"].as_i64().unwrap();
    let page = app.get(&format!("/jobs/{job}")).await.text().await.unwrap();
    assert!(
        page.contains(&format!(r#"action="/jobs/{job}/approve""#)),
        "{page}"
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let approve = |token: &'static str| {
        client
            .post(format!("{}/jobs/{job}/approve", app.address))
            .form(&[("token", token)])
            .send()
    };

    // Act
    let wrong = approve("not-the-token").await.unwrap();
    let right = approve(ACTION_TOKEN).await.unwrap();

    // Assert
    assert_eq!(wrong.status(), 401);
    assert_eq!(right.status(), 303);
    assert_eq!(right.headers()["location"], format!("/jobs/{job}").as_str());
    let now = json(app.get(&format!("/api/v1/jobs/{job}")).await).await;
    assert_eq!(now["job"]["state"], "queued", "{now}");
}
