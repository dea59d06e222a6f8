//! The job page as a person sees it: headless Chromium (Debian's) driven by Playwright opens a
//! failed job, finds the failed service's box, clicks it, and reads the log tail; and a running
//! job's log page shows new lines as they come. Screenshots go to `artifacts/` (CI keeps that
//! folder).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::infra::require;
use crate::common::TestApp;

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The path of Chromium, when it and playwright-core are here; `None`: skip (not under CI).
fn chromium() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    require(
        "Chromium",
        std::path::Path::new(&chromium).exists(),
        "apt-get install chromium",
    )?;
    require(
        "playwright-core",
        browser_dir().join("node_modules/playwright-core").exists(),
        "npm ci in tests/browser (scripts/real-parts.sh does)",
    )?;
    Some(chromium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_jobs_page_marks_the_failed_service_and_its_box_opens_the_log() {
    let Some(chromium) = chromium() else {
        return;
    };
    // Arrange: a job that failed at web's check, with a log.
    let app = TestApp::spawn().await;
    assert_eq!(app.deliver_fixture("github/push.tag").await.0.status(), 202);
    let jobs = deploybot::store::Jobs::open(app.data_dir.path(), "seed").unwrap();
    let job = jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
    crate::common::seed_stage(&jobs, job.id, ("-", "checkout", "success"), None, None);
    crate::common::seed_stage(
        &jobs,
        job.id,
        ("web", "check", "failed"),
        Some(2),
        Some("`go vet ./...` exited with 2"),
    );
    crate::common::seed_stage(&jobs, job.id, ("web", "compile", "skipped"), None, None);
    crate::common::seed_stage(&jobs, job.id, ("api", "check", "success"), Some(0), None);
    jobs.append_log(
        job.id,
        "web",
        "check",
        "$ go vet ./...\n./main.go:12:2: fmt.Printf format %d has arg of wrong type\n",
    )
    .unwrap();
    jobs.finish(
        job.id,
        deploybot::domain::JobState::Failed,
        Some("web failed at check, exit code 2"),
    )
    .unwrap();
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("failed-job-page.png");

    // Act
    let address = app.address.clone();
    let job_id = job.id.to_string();
    let screenshot_arg = screenshot.display().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(browser_dir())
            .env("CHROMIUM", chromium)
            .args([
                "job-page.mjs",
                &address,
                &job_id,
                "web",
                "format %d has arg of wrong type",
                &screenshot_arg,
            ])
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");

    // Assert
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(screenshot.exists());
    assert!(artifacts.join("failed-job-page-log.png").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobs_log_page_shows_its_services_new_lines_as_they_come() {
    let Some(chromium) = chromium() else {
        return;
    };
    // Arrange: a running job with a line of web's log so far.
    let app = TestApp::spawn().await;
    assert_eq!(app.deliver_fixture("github/push.tag").await.0.status(), 202);
    let jobs = deploybot::store::Jobs::open(app.data_dir.path(), "seed").unwrap();
    let job = jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
    jobs.append_log(job.id, "web", "check", "$ go vet ./...\n")
        .unwrap();
    let mut node = tokio::process::Command::new("node")
        .current_dir(browser_dir())
        .env("CHROMIUM", chromium)
        .args([
            "log-follow.mjs",
            &app.address,
            &job.id.to_string(),
            "web",
            "web check| ok: vet found nothing",
            "api check| not web's",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut said = BufReader::new(node.stdout.take().unwrap()).lines();

    // Act: once the page is open, the job logs on.
    let opened = tokio::time::timeout(Duration::from_secs(30), said.next_line()).await;
    assert_eq!(opened.unwrap().unwrap().as_deref(), Some("opened"));
    jobs.append_log(job.id, "api", "check", "not web's\n")
        .unwrap();
    jobs.append_log(job.id, "web", "check", "ok: vet found nothing\n")
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), node.wait_with_output()).await;

    // Assert
    let output = ended.unwrap().unwrap();
    let rest = said.next_line().await.unwrap().unwrap_or_default();
    assert!(
        output.status.success(),
        "{rest}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
