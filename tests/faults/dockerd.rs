//! dockerd is restarted in the middle of a build: the job fails (or runs again) with a clear
//! reason, no container of it is left, and nothing it did not push is recorded as pushed.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::build::{hello_steps, Build};
use crate::common::infra::job_containers;

/// Stops dockerd and starts it again the way scripts/real-parts.sh does; waits until it
/// answers.
fn restart_dockerd() {
    let _ = Command::new("pkill").args(["-x", "dockerd"]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Command::new("pgrep")
        .args(["-x", "dockerd"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    Command::new("sh")
        .args(["-c", "setsid dockerd >>/tmp/dockerd.log 2>&1 </dev/null &"])
        .status()
        .unwrap();
    while !Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "dockerd did not come back");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_restarted_mid_build_ends_the_job_clearly_with_no_container_left_and_nothing_pushed(
) {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let steps = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"echo started\", \"sleep 60\"]\n";
    let sha = build
        .git
        .commit("slow", "master", Some("v2.0.0"), hello_steps(steps));
    let job = build.send("refs/tags/v2.0.0", &sha).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !build.log(job).contains("started") {
        assert!(
            Instant::now() < deadline,
            "the step never started: {}",
            build.log(job)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    restart_dockerd();

    let done = build.finished(job).await;
    let stage = done
        .stages
        .iter()
        .find(|s| s.service == "web" && s.stage == "check")
        .unwrap();
    match done.job.state.as_str() {
        "failed" => {
            let reason = stage.detail.clone().unwrap_or_default();
            assert!(
                !reason.is_empty() && (reason.contains("exit") || reason.contains("engine")),
                "the check stage says what happened: {reason:?}\n{done:#?}"
            );
        }
        "success" => assert!(done.job.attempt > 1, "{done:#?}"),
        other => panic!("job ended {other}: {done:#?}"),
    }
    if done.job.state == "failed" {
        assert!(
            done.images.iter().all(|i| i.digest.is_none()),
            "{:?}",
            done.images
        );
        assert!(build
            .registry
            .digest("myevents/web", "v2.0.0")
            .await
            .is_none());
    }
    // The job's end removes its containers, once the engine is back to do it.
    let deadline = Instant::now() + Duration::from_secs(90);
    while job_containers(build.app.data_dir.path(), job) > 0 {
        assert!(Instant::now() < deadline, "a container of the job is left");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
