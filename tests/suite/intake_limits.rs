//! A stranger on the network cannot make intake work for long, hold memory, or fill the
//! store: signature headers are bounded, slow bodies are dropped, rejections are summarized.

use std::time::Duration;

use crate::common::slow_client::{read_until_closed, trickle_until_closed};
use crate::common::{json, signed_now, unique_delivery_id, Delivery, TestApp, FIXTURE_PROJECTS};

#[tokio::test]
async fn a_signature_header_with_thousands_of_entries_is_refused_with_a_400_naming_it() {
    // Arrange: a 1 MB body and 2,000 well-formed `v1,` entries, none of them right.
    let app = TestApp::spawn().await;
    let entry = format!("v1,{}", "A".repeat(43) + "=");
    let signature = vec![entry; 2000].join(" ");
    let mut delivery = signed_now("gitlab/push.branch", &unique_delivery_id())
        .with_header("webhook-signature", &signature);
    delivery.body = vec![b' '; 1024 * 1024];

    // Act
    let response = app.post("signed", &delivery).await;

    // Assert
    assert_eq!(response.status(), 400);
    let reason = json(response).await["error"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("header webhook-signature: "), "{reason}");
    assert_eq!(app.jobs(), 0);
}

fn genuine_push() -> Delivery {
    Delivery::fixture("github/push.branch").with_unique_id()
}

/// The reason in a raw HTTP answer's one-line JSON body.
fn raw_reason(answer: &str) -> String {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    value["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn idle_clients_declaring_large_bodies_do_not_starve_a_genuine_delivery() {
    // Arrange: two clients declare 1 MiB each, filling the in-flight budget if declared
    // lengths were reserved, and then send nothing.
    let app = TestApp::spawn_with(
        FIXTURE_PROJECTS,
        "max_body_bytes = 1048576\nmax_inflight_body_bytes = 2097152",
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(app.start_body("baxter", &genuine_push(), 1048576, 0).await);
    }
    app.wait_for_metric("deploybot_intake_bodies_reading", 2.0)
        .await;

    // Act
    let response = app.post("baxter", &genuine_push()).await;

    // Assert
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_with_408_and_its_connection_closed() {
    // Arrange
    let app = TestApp::spawn_with(FIXTURE_PROJECTS, "body_idle_timeout_secs = 1").await;
    let mut stream = app.start_body("baxter", &genuine_push(), 100_000, 10).await;

    // Act
    let answer = read_until_closed(&mut stream).await;

    // Assert
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(raw_reason(&answer), "body stalled: no bytes for 1 s");
    assert!(app.deliveries().iter().all(|d| d.outcome == "rejected"));
}

#[tokio::test]
async fn a_body_trickling_in_past_its_deadline_is_answered_with_408() {
    // Arrange: a byte every 100 ms never trips the idle timeout; only the deadline stops it.
    let app = TestApp::spawn_with(
        FIXTURE_PROJECTS,
        "body_idle_timeout_secs = 1\nbody_deadline_secs = 2",
    )
    .await;
    let stream = app.start_body("baxter", &genuine_push(), 100_000, 10).await;

    // Act
    let answer = trickle_until_closed(stream, Duration::from_millis(100)).await;

    // Assert
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(raw_reason(&answer), "body not received within 2 s");
    assert_eq!(app.jobs(), 0);
}

#[tokio::test]
async fn a_dropped_slow_body_gives_its_memory_back() {
    // Arrange: a stalled body holds nearly the whole in-flight budget until it is dropped.
    let app = TestApp::spawn_with(
        FIXTURE_PROJECTS,
        "max_body_bytes = 65536\nmax_inflight_body_bytes = 65536\nbody_idle_timeout_secs = 1",
    )
    .await;
    let mut stalled = app
        .start_body("baxter", &genuine_push(), 65536, 60_000)
        .await;
    let answer = read_until_closed(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Act
    let response = app.post("baxter", &genuine_push()).await;

    // Assert
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn rejections_past_a_sources_budget_are_counted_on_its_last_recorded_one() {
    // Arrange: the default budget is 20 recorded rejections per source per minute.
    let app = TestApp::spawn().await;
    let forged = || genuine_push().with_header("X-Hub-Signature-256", "sha256=00");

    // Act
    for _ in 0..300 {
        assert_eq!(app.post("baxter", &forged()).await.status(), 401);
    }

    // Assert: every rejection is accounted for, in at most 20 rows.
    let rows = app.wait_for_rejections(300).await;
    assert_eq!(rows.len(), 20);
    assert_eq!(rows[0]["repeats"], 280, "the newest row carries the count");
    assert_eq!(
        app.metric("deploybot_rejections_summarized_total").await,
        Some(280.0)
    );
}
