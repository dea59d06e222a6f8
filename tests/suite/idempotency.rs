//! A redelivery (GitHub's "Redeliver", GitLab's retries) carries the same delivery id and must
//! not queue a second job.

use crate::common::{json, Delivery, TestApp};

#[tokio::test]
async fn a_redelivered_push_is_answered_as_duplicate_and_queues_one_job() {
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("github/push.tag").with_unique_id();

    let first = app.post("drone", &delivery).await;
    let second = app.post("drone", &delivery).await;

    assert_eq!(first.status(), 202);
    let job = json(first).await["job"].clone();
    assert_eq!(second.status(), 200);
    let again = json(second).await;
    assert_eq!(again["status"], "duplicate");
    assert_eq!(
        again["job"], job,
        "the duplicate names the job the first one queued"
    );
    assert_eq!(app.jobs(), 1);
    assert_eq!(app.deliveries().len(), 1);
}

#[tokio::test]
async fn concurrent_copies_of_one_delivery_queue_exactly_one_job() {
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("gitlab/tag_push.created").with_unique_id();

    let answers =
        futures_util::future::join_all((0..20).map(|_| app.post("example", &delivery))).await;

    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(app.jobs(), 1);
}

#[tokio::test]
async fn a_rejected_attempt_does_not_hold_the_delivery_id() {
    // The secret was wrong, the user fixed it and pressed "Redeliver": same id, now valid.
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("github/push.branch").with_unique_id();
    let bad = delivery
        .clone()
        .with_header("X-Hub-Signature-256", "sha256=00");

    assert_eq!(app.post("baxter", &bad).await.status(), 401);
    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 202);
    assert_eq!(app.jobs(), 1);
}

#[tokio::test]
async fn a_redelivered_ping_is_a_duplicate_too() {
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("github/ping.repository").with_unique_id();

    assert_eq!(app.post("octocoders", &delivery).await.status(), 200);
    let again = json(app.post("octocoders", &delivery).await).await;

    assert_eq!(again["status"], "duplicate");
    assert_eq!(app.deliveries().len(), 1);
}
