//! GitHub deliveries, from real published payloads signed with the fixtures' secret.

use serde_json::Value;

use crate::common::{json, project_for, Delivery, TestApp, TEST_SECRET};

/// The normalized event stored for the newest delivery.
fn stored_event(app: &TestApp) -> Value {
    let rows = app.deliveries();
    let row = rows.first().expect("a delivery was recorded");
    serde_json::from_str(row.event_json.as_deref().expect("a push event was stored"))
        .expect("event is JSON")
}

#[tokio::test]
async fn every_github_push_fixture_is_queued_with_the_payloads_own_values() {
    for fixture in [
        "github/push.branch",
        "github/push.branch-created",
        "github/push.tag",
    ] {
        // Arrange
        let app = TestApp::spawn().await;
        let payload: Value = serde_json::from_slice(&Delivery::fixture(fixture).body).unwrap();

        // Act
        let (response, delivery) = app.deliver_fixture(fixture).await;

        // Assert
        assert_eq!(response.status(), 202, "{fixture}");
        let answer = json(response).await;
        assert_eq!(answer["status"], "queued", "{fixture}");
        assert!(answer["job"].as_i64().is_some(), "{fixture}");
        let event = stored_event(&app);
        let git_ref = payload["ref"].as_str().unwrap();
        let (kind, name) = match git_ref.strip_prefix("refs/tags/") {
            Some(tag) => ("tag", tag),
            None => ("branch", git_ref.trim_start_matches("refs/heads/")),
        };
        assert_eq!(event["forge"], "github", "{fixture}");
        assert_eq!(event["project"], project_for(fixture), "{fixture}");
        assert_eq!(
            event["repository"], payload["repository"]["full_name"],
            "{fixture}"
        );
        assert_eq!(event["ref"], payload["ref"], "{fixture}");
        assert_eq!(event["kind"], kind, "{fixture}");
        assert_eq!(event["name"], name, "{fixture}");
        assert_eq!(event["sha"], payload["after"], "{fixture}");
        assert_eq!(event["before"], payload["before"], "{fixture}");
        assert_eq!(event["pusher"], payload["pusher"]["name"], "{fixture}");
        assert_eq!(
            event["clone_url"], payload["repository"]["clone_url"],
            "{fixture}"
        );
        assert_eq!(
            event["head_commit_message"], payload["head_commit"]["message"],
            "{fixture}"
        );
        assert_eq!(
            event["delivery_id"],
            delivery.header("X-GitHub-Delivery").unwrap(),
            "{fixture}"
        );
        assert!(event["received_at"].as_str().is_some(), "{fixture}");
    }
}

#[tokio::test]
async fn the_raw_body_is_stored_byte_for_byte() {
    let app = TestApp::spawn().await;
    let (response, delivery) = app.deliver_fixture("github/push.tag").await;
    assert_eq!(response.status(), 202);

    let row = app.deliveries().remove(0);
    let stored = app.reader().body(row.id).unwrap().expect("body stored");
    assert_eq!(stored, delivery.body);
}

#[tokio::test]
async fn a_tag_push_queues_a_job_for_the_tag() {
    let app = TestApp::spawn().await;
    let (response, _) = app.deliver_fixture("github/push.tag").await;
    assert_eq!(response.status(), 202);

    let row = app.deliveries().remove(0);
    assert_eq!(row.outcome, "queued");
    assert_eq!(row.git_ref.as_deref(), Some("refs/tags/v0.0.1"));
    assert_eq!(
        row.sha.as_deref(),
        Some("d2b75aa7797ec26b088fa2dd527e9d2c052fcedd")
    );
    assert_eq!(
        app.reader().job_counts().unwrap(),
        vec![("queued".to_string(), 1)]
    );
}

#[tokio::test]
async fn a_deleted_branch_or_tag_is_recorded_and_ignored_without_a_job() {
    for fixture in ["github/push.branch-deleted", "github/push.tag-deleted"] {
        let app = TestApp::spawn().await;
        let (response, _) = app.deliver_fixture(fixture).await;

        assert_eq!(response.status(), 200, "{fixture}");
        let answer = json(response).await;
        assert_eq!(answer["status"], "ignored", "{fixture}");
        assert!(
            answer["reason"].as_str().unwrap().contains("was deleted"),
            "{fixture}"
        );
        assert_eq!(app.deliveries()[0].outcome, "ignored", "{fixture}");
        assert_eq!(app.jobs(), 0, "{fixture}");
    }
}

#[tokio::test]
async fn a_ping_is_answered_with_pong_and_recorded() {
    let app = TestApp::spawn().await;
    let (response, _) = app.deliver_fixture("github/ping.repository").await;

    assert_eq!(response.status(), 200);
    assert_eq!(json(response).await["status"], "pong");
    assert_eq!(app.deliveries()[0].outcome, "pong");
    assert_eq!(app.jobs(), 0);
}

#[tokio::test]
async fn events_other_than_push_are_recorded_and_ignored() {
    for (fixture, reason) in [
        (
            "github/pull_request.converted_to_draft",
            "pull request #2 (converted_to_draft): not an event this project builds",
        ),
        ("github/create.tag", "not acted on"),
    ] {
        let app = TestApp::spawn().await;
        let (response, _) = app.deliver_fixture(fixture).await;

        assert_eq!(response.status(), 200, "{fixture}");
        let answer = json(response).await;
        assert_eq!(answer["status"], "ignored", "{fixture}");
        assert!(
            answer["reason"].as_str().unwrap().contains(reason),
            "{fixture}: {answer}"
        );
        assert_eq!(app.jobs(), 0, "{fixture}");
    }
}

#[tokio::test]
async fn a_form_encoded_delivery_is_accepted_with_the_signature_over_the_raw_form() {
    let app = TestApp::spawn().await;
    let json_body = Delivery::fixture("github/push.branch").body;
    let form = serde_urlencoded::to_string([("payload", String::from_utf8(json_body).unwrap())])
        .unwrap()
        .into_bytes();
    let delivery = Delivery::fixture("github/push.branch")
        .with_unique_id()
        .with_header("Content-Type", "application/x-www-form-urlencoded")
        .with_github_body(form, TEST_SECRET);

    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 202);
    assert_eq!(
        app.deliveries()[0].sha.as_deref(),
        Some("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c")
    );
}

#[tokio::test]
async fn the_published_signature_of_each_fixture_verifies_unchanged() {
    // The headers files carry X-Hub-Signature-256 computed over the exact fixture bytes;
    // sending them untouched (bar the delivery id) proves we verify the raw body.
    let app = TestApp::spawn().await;
    for fixture in [
        "github/push.branch",
        "github/push.branch-created",
        "github/push.tag",
    ] {
        let delivery = Delivery::fixture(fixture).with_unique_id();
        let expected = delivery.header("X-Hub-Signature-256").unwrap().to_owned();
        assert_eq!(
            deploybot::forge::github_signature(TEST_SECRET, &delivery.body),
            expected,
            "{fixture}"
        );
        assert_eq!(
            app.post(project_for(fixture), &delivery).await.status(),
            202,
            "{fixture}"
        );
    }
}
