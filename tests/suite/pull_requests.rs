//! Pull requests (GitHub) and merge requests (GitLab): which events build the request's head,
//! which cancel its jobs, and what a build of one does (checks, never a push or a deploy).

use serde_json::Value;

use crate::common::{json, project_for, Delivery, TestApp, FIXTURE_PROJECTS};

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

#[tokio::test]
async fn a_pull_request_from_a_fork_builds_nothing_yet_and_says_why() {
    let delivery = Delivery::fixture("github/pull_request.opened").with_unique_id();
    let mut payload: Value = serde_json::from_slice(&delivery.body).unwrap();
    // No fork example is published; the opened one, its head moved to another repository.
    payload["pull_request"]["head"]["repo"]["full_name"] = "stranger/Hello-World".into();
    let fork = delivery.with_github_body(
        serde_json::to_vec(&payload).unwrap(),
        crate::common::TEST_SECRET,
    );
    let app = TestApp::spawn().await;

    let response = app.post("codertocat", &fork).await;

    assert_eq!(response.status(), 200);
    let answer = json(response).await;
    assert_eq!(answer["status"], "ignored");
    assert_eq!(
        answer["reason"],
        "pull request #2 (opened) from a fork's branch changes: pull requests from forks are not built yet"
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
