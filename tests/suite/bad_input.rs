//! Every class of bad input gets its own 4xx and a one-line reason naming what is wrong, and
//! leaves no job behind.

use crate::common::{json, Delivery, TestApp, TEST_SECRET};

async fn reason(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap();
    assert!(
        !text.trim_end().contains('\n'),
        "reason is one line: {text}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    body["error"].as_str().unwrap().to_owned()
}

fn push() -> Delivery {
    Delivery::fixture("github/push.branch").with_unique_id()
}

#[tokio::test]
async fn an_unknown_project_is_answered_with_404() {
    let app = TestApp::spawn().await;

    let response = app.post("nosuchproject", &push()).await;

    assert_eq!(response.status(), 404);
    assert_eq!(reason(response).await, "unknown project \"nosuchproject\"");
}

#[tokio::test]
async fn a_missing_delivery_header_is_named_in_a_400() {
    let app = TestApp::spawn().await;

    let response = app
        .post("baxter", &push().without_header("X-GitHub-Delivery"))
        .await;

    assert_eq!(response.status(), 400);
    assert_eq!(reason(response).await, "missing header X-GitHub-Delivery");
}

#[tokio::test]
async fn a_request_without_any_forge_event_header_is_a_400() {
    let app = TestApp::spawn().await;

    let response = app
        .post("baxter", &push().without_header("X-GitHub-Event"))
        .await;

    assert_eq!(response.status(), 400);
    assert!(reason(response)
        .await
        .contains("X-GitHub-Event or X-Gitlab-Event"));
}

#[tokio::test]
async fn a_wrong_signature_is_rejected_with_401_without_echoing_the_expected_one() {
    let app = TestApp::spawn().await;
    let delivery = push();
    let expected = delivery.header("X-Hub-Signature-256").unwrap().to_owned();
    let wrong = deploybot::forge::github_signature("another-secret", &delivery.body);

    let response = app
        .post(
            "baxter",
            &delivery.with_header("X-Hub-Signature-256", &wrong),
        )
        .await;

    assert_eq!(response.status(), 401);
    let reason = reason(response).await;
    assert_eq!(
        reason,
        "signature in X-Hub-Signature-256 does not match the body"
    );
    assert!(!reason.contains(expected.trim_start_matches("sha256=")));
    assert_eq!(app.jobs(), 0);
}

#[tokio::test]
async fn a_body_changed_after_signing_is_rejected_with_401() {
    let app = TestApp::spawn().await;
    let mut delivery = push();
    delivery.body.push(b' ');

    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn a_missing_signature_is_rejected_with_401() {
    let app = TestApp::spawn().await;

    let response = app
        .post("baxter", &push().without_header("X-Hub-Signature-256"))
        .await;

    assert_eq!(response.status(), 401);
    assert_eq!(
        reason(response).await,
        "missing signature: header X-Hub-Signature-256 is required"
    );
}

#[tokio::test]
async fn a_wrong_content_type_is_rejected_with_415() {
    let app = TestApp::spawn().await;

    let response = app
        .post("baxter", &push().with_header("Content-Type", "text/plain"))
        .await;

    assert_eq!(response.status(), 415);
    assert!(reason(response)
        .await
        .starts_with("unsupported Content-Type \"text/plain\""));
}

#[tokio::test]
async fn a_missing_content_type_is_rejected_with_415() {
    let app = TestApp::spawn().await;

    let response = app
        .post("baxter", &push().without_header("Content-Type"))
        .await;

    assert_eq!(response.status(), 415);
    assert_eq!(reason(response).await, "missing header Content-Type");
}

#[tokio::test]
async fn malformed_json_is_a_400_with_line_and_column() {
    let app = TestApp::spawn().await;
    let delivery = push().with_github_body(
        b"{\n  \"ref\": \"refs/heads/x\",\n  oops\n}".to_vec(),
        TEST_SECRET,
    );

    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 400);
    assert_eq!(
        reason(response).await,
        "malformed JSON at line 3, column 3: key must be a string"
    );
}

#[tokio::test]
async fn a_push_without_a_required_field_is_a_400_naming_it() {
    let app = TestApp::spawn().await;
    let delivery = push().with_github_body(br#"{"ref":"refs/heads/x"}"#.to_vec(), TEST_SECRET);

    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 400);
    assert!(reason(response).await.contains("missing field `before`"));
}

#[tokio::test]
async fn a_push_with_a_malformed_commit_id_is_a_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let mut payload: serde_json::Value = serde_json::from_slice(&push().body).unwrap();
    payload["after"] = "not-a-sha".into();
    let delivery = push().with_github_body(serde_json::to_vec(&payload).unwrap(), TEST_SECRET);

    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 400);
    assert!(reason(response).await.starts_with("field after:"));
}

#[tokio::test]
async fn an_oversized_body_is_rejected_with_413() {
    let app = TestApp::spawn_with(crate::common::FIXTURE_PROJECTS, "max_body_bytes = 4096").await;

    let response = app.post("baxter", &push()).await; // 7603 bytes

    assert_eq!(response.status(), 413);
    assert_eq!(
        reason(response).await,
        "body is larger than the limit of 4096 bytes"
    );
}

#[tokio::test]
async fn an_oversized_chunked_body_is_rejected_with_413() {
    // No Content-Length to trust: the limit holds while reading.
    let app = TestApp::spawn_with(crate::common::FIXTURE_PROJECTS, "max_body_bytes = 4096").await;
    let delivery = push();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        delivery.body.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let mut request = app
        .client
        .post(format!("{}/hooks/baxter", app.address))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )));
    for (name, value) in &delivery.headers {
        request = request.header(name, value);
    }

    let response = request.send().await.unwrap();

    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn a_gitlab_delivery_to_a_github_project_is_a_forge_mismatch_400() {
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("gitlab/push.branch").with_unique_id();

    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 400);
    assert_eq!(
        reason(response).await,
        "this is a gitlab delivery but project \"baxter\" is configured for github"
    );
}

#[tokio::test]
async fn a_payload_for_another_repository_is_forbidden() {
    // Correctly signed (same secret), but about a repository this project is not.
    let app = TestApp::spawn().await;
    let delivery = Delivery::fixture("github/push.tag").with_unique_id();

    let response = app.post("baxter", &delivery).await;

    assert_eq!(response.status(), 403);
    assert_eq!(
        reason(response).await,
        "repository \"bradrydzewski/drone-test-go\" is not this project's repository"
    );
    assert_eq!(app.jobs(), 0);
}

#[tokio::test]
async fn a_delivery_id_that_is_not_plain_text_is_a_400_naming_the_header() {
    let app = TestApp::spawn().await;

    let response = app
        .post("baxter", &push().with_header("X-GitHub-Delivery", "a b c"))
        .await;

    assert_eq!(response.status(), 400);
    assert!(reason(response)
        .await
        .starts_with("header X-GitHub-Delivery:"));
}

#[tokio::test]
async fn rejected_deliveries_are_recorded_with_their_reason_but_no_body() {
    let app = TestApp::spawn().await;
    let delivery = push().with_header("X-Hub-Signature-256", "sha256=00");
    let id = delivery.header("X-GitHub-Delivery").unwrap().to_owned();
    assert_eq!(app.post("baxter", &delivery).await.status(), 401);

    // Rejections are recorded off the answer path; give the writer a moment.
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = app.deliveries();
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let row = rows.first().expect("the rejection was recorded");
    assert_eq!(row.outcome, "rejected");
    assert_eq!(row.delivery_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        row.reason.as_deref(),
        Some("signature in X-Hub-Signature-256 does not match the body")
    );
    assert_eq!(app.reader().body(row.id).unwrap(), None);
}

#[tokio::test]
async fn every_rejection_answers_json_with_an_error_field() {
    let app = TestApp::spawn().await;
    let response = app
        .post("baxter", &push().without_header("X-GitHub-Delivery"))
        .await;
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert!(json(response).await["error"].is_string());
}
