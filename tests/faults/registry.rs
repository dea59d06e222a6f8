//! The registry is down at push time: the push is tried again with backoff; if the registry
//! comes back in time the job succeeds, else the service fails naming the registry, nothing is
//! recorded as pushed, and a re-run once the registry is back pushes it.

use std::time::{Duration, Instant};

use crate::common::build::{detail, Build};

const TOKEN: &str = "drill-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_down_at_push_time_is_waited_for_then_named_and_a_rerun_pushes_once_it_is_back()
{
    let Some(mut build) =
        Build::hello(|c| format!("{c}\n[web]\naction_token = \"{TOKEN}\"\n")).await
    else {
        return;
    };

    // Down when the push starts, back while it is being tried again.
    build.registry.stop();
    let sha = build.git.commit("one", "master", Some("v1.0.0"), |_| ());
    let job = build.send("refs/tags/v1.0.0", &sha).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !build.log(job).contains("trying again") {
        assert!(Instant::now() < deadline, "no retry: {}", build.log(job));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    build.registry.restart();
    let done = build.finished(job).await;
    assert_eq!(done.job.state, "success", "{done:#?}\n{}", build.log(job));
    let image = &done.images[0];
    assert_eq!(
        build
            .registry
            .digest("myevents/web", "v1.0.0")
            .await
            .as_deref(),
        image.digest.as_deref()
    );

    // Down for good: every try fails, and the failure names the registry.
    build.registry.stop();
    let sha = build.git.commit("two", "master", Some("v1.0.1"), |dir| {
        std::fs::write(dir.join("VERSION"), "2").unwrap()
    });
    let job = build.send("refs/tags/v1.0.1", &sha).await;
    let failed = build.finished(job).await;
    assert_eq!(failed.job.state, "failed", "{failed:#?}");
    let reason = detail(&failed, "web", "push");
    assert!(
        reason.contains(&build.registry.address) && reason.contains("after 4 attempts"),
        "{reason}"
    );
    assert!(
        failed.images.iter().all(|i| i.digest.is_none()),
        "nothing half-pushed is recorded as pushed: {:?}",
        failed.images
    );

    build.registry.restart();
    let rerun = build
        .app
        .act(&format!("/api/v1/jobs/{job}/rerun"), TOKEN)
        .await;
    assert_eq!(rerun.status(), 202);
    let again = build.finished(job).await;
    assert_eq!(again.job.state, "success", "{}", build.log(job));
    let image = &again.images[0];
    assert_eq!(
        build
            .registry
            .digest("myevents/web", "v1.0.1")
            .await
            .as_deref(),
        image.digest.as_deref()
    );
}
