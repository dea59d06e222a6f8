//! /healthz, /readyz and /metrics.

use crate::common::TestApp;

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::spawn().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn readyz_answers_ready_when_the_store_takes_writes() {
    let app = TestApp::spawn().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(crate::common::json(response).await["status"], "ready");
}

#[tokio::test]
async fn metrics_count_deliveries_by_forge_event_and_outcome() {
    let app = TestApp::spawn().await;
    app.deliver_fixture("github/push.tag").await;
    app.deliver_fixture("gitlab/tag_push.deleted").await;

    let text = app.get("/metrics").await.text().await.unwrap();

    assert!(
        text.contains(
            r#"deploybot_deliveries_total{event="push",forge="github",outcome="queued"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"deploybot_deliveries_total{event="Tag Push Hook",forge="gitlab",outcome="ignored"} 1"#), "{text}");
    assert!(text.contains("deploybot_intake_seconds_bucket"), "{text}");
    assert!(
        text.contains("deploybot_store_commit_batch_size_count"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unknown_route_is_a_404_with_a_reason() {
    let app = TestApp::spawn().await;
    let response = app.get("/nope").await;
    assert_eq!(response.status(), 404);
}
