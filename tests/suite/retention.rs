//! Retention in the running app: the sweep runs in the background and stops with the app.
//! What each sweep removes is specified next to it (`store::retention`).

use std::time::Duration;

use crate::common::{Delivery, TestApp, FIXTURE_PROJECTS};

fn app_config(retention: &str) -> String {
    format!(
        "[worker]\nenabled = false\n\n[server]\nrejections_per_source = 100\n\n[retention]\n{retention}\n{FIXTURE_PROJECTS}"
    )
}

#[tokio::test]
async fn the_background_sweep_keeps_only_the_newest_rejections() {
    // Arrange
    let app =
        TestApp::spawn_config(&app_config("interval_secs = 1\nrejections_max_count = 5")).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let forged = Delivery::fixture("github/push.branch")
            .with_unique_id()
            .with_header("X-Hub-Signature-256", "sha256=00");
        ids.push(forged.header("X-GitHub-Delivery").unwrap().to_owned());
        assert_eq!(app.post("baxter", &forged).await.status(), 401);
    }

    // Act: the sweeps that follow.
    app.wait_for_metric(
        r#"deploybot_retention_removed_total{kind="rejections"}"#,
        25.0,
    )
    .await;

    // Assert
    let kept: Vec<String> = app
        .deliveries()
        .into_iter()
        .filter_map(|row| row.delivery_id)
        .collect();
    let newest: Vec<String> = ids.iter().rev().take(5).cloned().collect();
    assert_eq!(kept, newest);
}

#[tokio::test]
async fn stopping_the_app_stops_its_retention_task_and_closes_the_store() {
    let app = TestApp::spawn_config(&app_config("interval_secs = 1")).await;

    // The store writer ends only once every handle, the retention task's too, is dropped.
    let stopped = tokio::time::timeout(Duration::from_secs(60), app.stop()).await;

    assert!(stopped.is_ok(), "the app did not stop");
}
