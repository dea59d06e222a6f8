//! GitLab deliveries: classic X-Gitlab-Token hooks and Standard Webhooks signed ones.

use serde_json::Value;

use crate::common::{json, project_for, signed_now, Delivery, TestApp};

#[tokio::test]
async fn every_gitlab_push_fixture_is_queued_with_the_payloads_own_values() {
    for fixture in [
        "gitlab/push.branch",
        "gitlab/push.hook-log",
        "gitlab/tag_push.created",
    ] {
        // Arrange
        let app = TestApp::spawn().await;
        let payload: Value = serde_json::from_slice(&Delivery::fixture(fixture).body).unwrap();

        // Act
        let (response, delivery) = app.deliver_fixture(fixture).await;

        // Assert
        assert_eq!(response.status(), 202, "{fixture}");
        assert_eq!(json(response).await["status"], "queued", "{fixture}");
        let row = app.deliveries().remove(0);
        let event: Value = serde_json::from_str(row.event_json.as_deref().unwrap()).unwrap();
        let git_ref = payload["ref"].as_str().unwrap();
        let kind = if git_ref.starts_with("refs/tags/") {
            "tag"
        } else {
            "branch"
        };
        let head_message = payload["commits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == payload["checkout_sha"])
            .map(|c| c["message"].clone())
            .unwrap_or(Value::Null);
        assert_eq!(event["forge"], "gitlab", "{fixture}");
        assert_eq!(event["project"], project_for(fixture), "{fixture}");
        assert_eq!(
            event["repository"], payload["project"]["path_with_namespace"],
            "{fixture}"
        );
        assert_eq!(event["ref"], payload["ref"], "{fixture}");
        assert_eq!(event["kind"], kind, "{fixture}");
        assert_eq!(event["sha"], payload["checkout_sha"], "{fixture}");
        assert_eq!(event["before"], payload["before"], "{fixture}");
        let pusher = if payload["user_username"].is_null() {
            &payload["user_name"]
        } else {
            &payload["user_username"]
        };
        assert_eq!(&event["pusher"], pusher, "{fixture}");
        assert_eq!(
            event["clone_url"], payload["project"]["git_http_url"],
            "{fixture}"
        );
        assert_eq!(event["head_commit_message"], head_message, "{fixture}");
        assert_eq!(
            event["delivery_id"],
            delivery.header("Idempotency-Key").unwrap(),
            "{fixture}"
        );
    }
}

#[tokio::test]
async fn a_deleted_branch_or_tag_is_recorded_and_ignored_without_a_job() {
    for fixture in ["gitlab/push.branch-deleted", "gitlab/tag_push.deleted"] {
        let app = TestApp::spawn().await;
        let (response, _) = app.deliver_fixture(fixture).await;

        assert_eq!(response.status(), 200, "{fixture}");
        assert_eq!(json(response).await["status"], "ignored", "{fixture}");
        assert_eq!(app.deliveries()[0].outcome, "ignored", "{fixture}");
        assert_eq!(app.jobs(), 0, "{fixture}");
    }
}

#[tokio::test]
async fn the_event_uuid_is_the_delivery_id_when_there_is_no_idempotency_key() {
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("gitlab/push.branch")
        .without_header("Idempotency-Key")
        .with_header("X-Gitlab-Event-UUID", "older-gitlab-event-uuid");

    let response = app.post("diaspora", &delivery).await;

    assert_eq!(response.status(), 202);
    assert_eq!(json(response).await["delivery"], "older-gitlab-event-uuid");
}

#[tokio::test]
async fn a_wrong_gitlab_token_is_rejected_with_401() {
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("gitlab/push.branch")
        .with_unique_id()
        .with_header("X-Gitlab-Token", "not-the-token");

    let response = app.post("diaspora", &delivery).await;

    assert_eq!(response.status(), 401);
    let reason = json(response).await["error"].as_str().unwrap().to_owned();
    assert_eq!(
        reason,
        "signature in X-Gitlab-Token does not match the body"
    );
    assert_eq!(app.jobs(), 0);
}

#[tokio::test]
async fn a_standard_webhooks_signed_delivery_is_accepted() {
    let app = TestApp::spawn().await;
    let id = crate::common::unique_delivery_id();

    let response = app
        .post("signed", &signed_now("gitlab/push.branch", &id))
        .await;

    assert_eq!(response.status(), 202);
    assert_eq!(json(response).await["delivery"], id);
}

#[tokio::test]
async fn the_published_signed_variant_is_refused_as_a_replay_today() {
    // signatures.json's signing_token_variant was signed at 1614265330 (2021): correct
    // signature, but far outside the tolerance, exactly what a replay looks like.
    let app = TestApp::spawn().await;
    let vectors: Value = serde_json::from_slice(
        &std::fs::read(crate::common::fixtures::fixtures_dir().join("signatures.json")).unwrap(),
    )
    .unwrap();
    let variant = &vectors["gitlab_deliveries"]["deliveries"][0]["signing_token_variant"];
    let delivery = Delivery::fixture("gitlab/push.branch")
        .without_header("X-Gitlab-Token")
        .with_header("webhook-id", variant["webhook-id"].as_str().unwrap())
        .with_header(
            "webhook-timestamp",
            variant["webhook-timestamp"].as_str().unwrap(),
        )
        .with_header(
            "webhook-signature",
            variant["webhook-signature"].as_str().unwrap(),
        );

    let response = app.post("signed", &delivery).await;

    assert_eq!(response.status(), 401);
    let reason = json(response).await["error"].as_str().unwrap().to_owned();
    assert!(reason.contains("webhook-timestamp"), "{reason}");
}

#[tokio::test]
async fn a_signed_delivery_with_a_tampered_body_is_rejected() {
    let app = TestApp::spawn().await;
    let mut delivery = signed_now("gitlab/push.branch", &crate::common::unique_delivery_id());
    let at = delivery.body.len() / 2;
    delivery.body[at] ^= 0x20;

    let response = app.post("signed", &delivery).await;

    assert_eq!(response.status(), 401);
    assert_eq!(
        json(response).await["error"],
        "signature in webhook-signature does not match the body"
    );
}

#[tokio::test]
async fn a_signed_project_rejects_an_unsigned_delivery() {
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("gitlab/push.branch").with_unique_id();

    let response = app.post("signed", &delivery).await;

    assert_eq!(response.status(), 401);
    assert_eq!(
        json(response).await["error"],
        "missing signature: header webhook-id is required"
    );
}
