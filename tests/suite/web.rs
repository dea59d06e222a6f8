//! The read-only web surface: JSON API, pages, live logs over Server-Sent Events.

use std::time::Duration;

use futures_util::StreamExt;

use crate::common::{json, TestApp};

/// An app whose store holds two jobs: job 1 (drone, tag) failed at web's check with a log;
/// job 2 (baxter, branch) still queued.
async fn seeded() -> (TestApp, deploybot::store::Jobs) {
    seeded_with("").await
}

/// Like [`seeded`], with extra configuration.
async fn seeded_with(extra: &str) -> (TestApp, deploybot::store::Jobs) {
    let app = TestApp::spawn_config(&format!(
        "[worker]\nenabled = false\n\n[server]\n\n{extra}\n{}",
        crate::common::FIXTURE_PROJECTS
    ))
    .await;
    assert_eq!(app.deliver_fixture("github/push.tag").await.0.status(), 202);
    assert_eq!(
        app.deliver_fixture("github/push.branch").await.0.status(),
        202
    );
    let jobs = deploybot::store::Jobs::open(app.data_dir.path(), "seed").unwrap();
    let job = jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
    assert_eq!(job.id, 1);
    crate::common::seed_stage(
        &jobs,
        1,
        ("web", "check", "failed"),
        Some(2),
        Some("vet: <bad> format"),
    );
    crate::common::seed_stage(&jobs, 1, ("web", "compile", "skipped"), None, None);
    jobs.append_log(1, "web", "check", "$ go vet ./...\n")
        .unwrap();
    jobs.append_log(1, "web", "check", "main.go:3: bad format\n")
        .unwrap();
    jobs.record_image(1, "web", "registry/team/web:v0.0.1", None)
        .unwrap();
    jobs.finish(
        1,
        deploybot::domain::JobState::Failed,
        Some("web failed at check, exit code 2"),
    )
    .unwrap();
    (app, jobs)
}

#[tokio::test]
async fn the_jobs_api_lists_newest_first_and_filters_by_project_and_state() {
    let (app, _jobs) = seeded().await;

    let all = json(app.get("/api/v1/jobs").await).await;
    let failed = json(app.get("/api/v1/jobs?state=failed").await).await;
    let baxter = json(app.get("/api/v1/jobs?project=baxter").await).await;

    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&all), [2, 1]);
    assert_eq!(ids(&failed), [1]);
    assert_eq!(ids(&baxter), [2]);
}

#[tokio::test]
async fn the_job_api_gives_stages_and_images_or_a_404() {
    let (app, _jobs) = seeded().await;

    let job = json(app.get("/api/v1/jobs/1").await).await;
    let missing = app.get("/api/v1/jobs/99").await;

    assert_eq!(job["job"]["state"], "failed");
    assert_eq!(job["stages"][0]["service"], "web");
    assert_eq!(job["stages"][0]["exit_code"], 2);
    assert_eq!(job["images"][0]["reference"], "registry/team/web:v0.0.1");
    assert_eq!(missing.status(), 404);
    assert_eq!(json(missing).await["error"], "job 99: no such job");
}

#[tokio::test]
async fn the_logs_api_pages_with_offsets() {
    let (app, _jobs) = seeded().await;

    let first = json(app.get("/api/v1/jobs/1/logs").await).await;
    let next = first["next"].as_i64().unwrap();
    let rest = json(app.get(&format!("/api/v1/jobs/1/logs?after={next}")).await).await;

    assert_eq!(first["chunks"].as_array().unwrap().len(), 2);
    assert_eq!(first["chunks"][1]["text"], "main.go:3: bad format\n");
    assert_eq!(rest["chunks"].as_array().unwrap().len(), 0);
    assert_eq!(rest["next"], next);
}

#[tokio::test]
async fn the_deliveries_api_lists_what_was_recorded() {
    let (app, _jobs) = seeded().await;

    let deliveries = json(app.get("/api/v1/deliveries").await).await;

    let rows = deliveries["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["outcome"], "queued");
    assert_eq!(rows[1]["git_ref"], "refs/tags/v0.0.1");
}

#[tokio::test]
async fn the_job_page_marks_the_failed_service_and_links_to_its_log() {
    let (app, _jobs) = seeded().await;

    let page = app.get("/jobs/1").await.text().await.unwrap();
    let log = app
        .get("/jobs/1/log?service=web")
        .await
        .text()
        .await
        .unwrap();
    let index = app.get("/").await.text().await.unwrap();

    assert!(page.contains(r#"<a class="box failed" data-service="web" data-stage="check" href="/jobs/1/log?service=web">"#), "{page}");
    assert!(
        page.contains("vet: &lt;bad&gt; format"),
        "values are escaped: {page}"
    );
    assert!(page.contains("registry/team/web:v0.0.1"));
    assert!(log.contains("web check| main.go:3: bad format"), "{log}");
    assert!(index.contains(r#"<a href="/jobs/1">1</a>"#), "{index}");
}

#[tokio::test]
async fn the_log_stream_follows_a_running_job_until_it_ends() {
    let (app, jobs) = seeded().await;
    let job = jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
    jobs.append_log(job.id, "api", "compile", "first line\n")
        .unwrap();
    let response = app
        .get(&format!("/api/v1/jobs/{}/logs/stream", job.id))
        .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut received = String::new();

    received.push_str(&next_event(&mut stream).await);
    jobs.append_log(job.id, "api", "compile", "second line\n")
        .unwrap();
    received.push_str(&next_event(&mut stream).await);
    jobs.finish(job.id, deploybot::domain::JobState::Success, None)
        .unwrap();
    while !received.contains("event: end") {
        received.push_str(&next_event(&mut stream).await);
    }

    assert!(
        received.contains("data: api compile| first line"),
        "{received}"
    );
    assert!(
        received.contains("data: api compile| second line"),
        "{received}"
    );
    assert!(received.contains("event: end\ndata: success"), "{received}");
}

#[tokio::test]
async fn log_followers_end_as_soon_as_their_clients_disconnect() {
    // Arrange: followers of a queued job, which writes no log for them to send.
    let (app, _jobs) = seeded().await;
    let mut followers = Vec::new();
    for _ in 0..5 {
        let response = app.get("/api/v1/jobs/2/logs/stream").await;
        assert_eq!(response.status(), 200);
        followers.push(response);
    }
    app.wait_for_metric("deploybot_log_followers", 5.0).await;

    // Act
    drop(followers);

    // Assert
    app.wait_for_metric("deploybot_log_followers", 0.0).await;
}

/// The next chunk of an event stream, within 5 s.
async fn next_event(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<actix_web::web::Bytes>> + Unpin),
) -> String {
    let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    String::from_utf8(chunk.unwrap().unwrap().unwrap().to_vec()).unwrap()
}

const ACTION_TOKEN: &str = "action-token-for-tests-9f2c";

async fn post(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.post(format!("{}{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(origin) = origin {
        request = request.header("Origin", origin);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn actions_without_the_token_are_refused_with_401() {
    let (app, _jobs) = seeded_with(&format!("[web]\naction_token = \"{ACTION_TOKEN}\"\n")).await;

    let none = post(&app, "/api/v1/jobs/1/rerun", None, None).await;
    let wrong = post(&app, "/api/v1/jobs/1/rerun", Some("not-the-token"), None).await;

    assert_eq!(none.status(), 401);
    assert_eq!(
        json(none).await["error"],
        "missing header Authorization: Bearer <action token>"
    );
    assert_eq!(wrong.status(), 401);
    let job = json(app.get("/api/v1/jobs/1").await).await;
    assert_eq!(job["job"]["state"], "failed", "nothing was done");
}

#[tokio::test]
async fn with_the_token_a_finished_job_is_rerun_and_a_queued_one_canceled() {
    let (app, _jobs) = seeded_with(&format!("[web]\naction_token = \"{ACTION_TOKEN}\"\n")).await;

    let rerun = post(&app, "/api/v1/jobs/1/rerun", Some(ACTION_TOKEN), None).await;
    let cancel = post(&app, "/api/v1/jobs/2/cancel", Some(ACTION_TOKEN), None).await;
    let again = post(&app, "/api/v1/jobs/1/rerun", Some(ACTION_TOKEN), None).await;
    let missing = post(&app, "/api/v1/jobs/99/cancel", Some(ACTION_TOKEN), None).await;

    assert_eq!(rerun.status(), 202);
    assert_eq!(cancel.status(), 202);
    assert_eq!(again.status(), 409, "a queued job cannot be re-run");
    assert_eq!(missing.status(), 404);
    let one = json(app.get("/api/v1/jobs/1").await).await;
    assert_eq!(one["job"]["state"], "queued");
    assert_eq!(
        one["stages"].as_array().unwrap().len(),
        0,
        "its stages start over"
    );
    let two = json(app.get("/api/v1/jobs/2").await).await;
    assert_eq!(two["job"]["state"], "canceled");
}

#[tokio::test]
async fn a_cross_origin_action_is_refused_even_with_the_token() {
    let (app, _jobs) = seeded_with(&format!("[web]\naction_token = \"{ACTION_TOKEN}\"\n")).await;

    let foreign = post(
        &app,
        "/api/v1/jobs/2/cancel",
        Some(ACTION_TOKEN),
        Some("https://evil.example"),
    )
    .await;
    let own_origin = app.address.clone();
    let same = post(
        &app,
        "/api/v1/jobs/2/cancel",
        Some(ACTION_TOKEN),
        Some(&own_origin),
    )
    .await;

    assert_eq!(foreign.status(), 403);
    assert_eq!(same.status(), 202);
}

#[tokio::test]
async fn without_a_configured_token_actions_are_off() {
    let (app, _jobs) = seeded().await;

    let response = post(&app, "/api/v1/jobs/2/cancel", Some("anything"), None).await;

    assert_eq!(response.status(), 403);
    assert_eq!(
        json(response).await["error"],
        "actions are off: set web.action_token"
    );
}

#[tokio::test]
async fn a_bad_query_or_path_is_a_json_400_and_a_wrong_method_a_405_with_allow() {
    let (app, _jobs) = seeded().await;

    let bad_state = app.get("/api/v1/jobs?state=AAA").await;
    let empty_state = app.get("/api/v1/jobs?state=").await;
    let bad_limit = app.get("/api/v1/jobs?limit=-1").await;
    let bad_id = app.get("/api/v1/jobs/abc").await;
    let wrong_method = app
        .client
        .delete(format!("{}/api/v1/jobs/1", app.address))
        .send()
        .await
        .unwrap();

    assert_eq!(bad_state.status(), 400);
    assert!(json(bad_state).await["error"]
        .as_str()
        .unwrap()
        .starts_with("query state: unknown state \"AAA\""));
    assert_eq!(
        empty_state.status(),
        400,
        "the API has no \"any\" state; only the page's form does"
    );
    assert_eq!(bad_limit.status(), 400);
    assert!(json(bad_limit).await["error"]
        .as_str()
        .unwrap()
        .starts_with("query: "));
    assert_eq!(bad_id.status(), 400);
    assert!(json(bad_id).await["error"]
        .as_str()
        .unwrap()
        .starts_with("path: "));
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "GET");
}

#[tokio::test]
async fn the_deliveries_page_says_what_became_of_each_delivery() {
    let (app, _jobs) = seeded().await;
    let bad = crate::common::Delivery::fixture("github/push.branch")
        .with_unique_id()
        .with_header("X-Hub-Signature-256", "sha256=00");
    assert_eq!(app.post("baxter", &bad).await.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let page = app.get("/deliveries").await.text().await.unwrap();
    let filtered = app
        .get("/?project=&state=failed")
        .await
        .text()
        .await
        .unwrap();

    assert!(
        page.contains(r#"<a href="/jobs/1">queued (job 1)</a>"#),
        "{page}"
    );
    assert!(
        page.contains("rejected: signature in X-Hub-Signature-256 does not match the body"),
        "{page}"
    );
    assert!(
        filtered.contains(r#"<a href="/jobs/1">1</a>"#)
            && !filtered.contains(r#"<a href="/jobs/2">"#),
        "{filtered}"
    );
}
