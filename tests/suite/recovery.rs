//! Recovery of pushes whose deliveries deploybot missed: by its forge's record of the hook's
//! deliveries (GitHub's redelivery, GitLab's resend; HTTP doubles of the documented API), and
//! by comparing the repository's refs (a real git daemon, a real build).

use std::time::{Duration, Instant};

use crate::common::build::{config, finished, signed_push};
use crate::common::hook_double::{github_attempt, gitlab_event, HookDouble, HOOK_TOKEN};
use crate::common::infra::{docker_with_base_images, GitServer, Registry};
use crate::common::{json, Delivery, TestApp, TEST_SECRET};

/// Waits until `check` holds, polling; fails with `what` after a minute.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether recovery has listed the project's refs at least once.
fn refs_listed(data_dir: &std::path::Path, project: &str) -> bool {
    let Ok(conn) = rusqlite::Connection::open(data_dir.join("deploybot.db")) else {
        return false;
    };
    conn.query_row(
        "SELECT COUNT(*) FROM ref_listings WHERE project = ?1",
        [project],
        |row| row.get::<_, i64>(0),
    )
    .is_ok_and(|n| n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_pushed_while_deploybot_was_down_are_each_built_once_when_it_starts_again() {
    let Some(()) = docker_with_base_images() else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return;
    };
    let Some((git, _)) = GitServer::start_fixture("hello") else {
        return;
    };
    let config = config(&registry, &git, &registry.password);
    let dir = tempfile::tempdir().unwrap();
    let first = TestApp::spawn_config_in(dir.path(), &config).await;
    eventually("the first listing of the refs", || {
        refs_listed(dir.path(), "myevents")
    })
    .await;
    first.stop().await;

    // Down: two tags pushed; their deliveries fail (nobody answers).
    let one = git.commit("one", "master", Some("v1.0.1"), |_| ());
    let two = git.commit("two", "master", Some("v1.0.2"), |dir| {
        std::fs::write(dir.join("VERSION"), "2").unwrap()
    });

    let second = TestApp::spawn_config_in(dir.path(), &config).await;
    eventually("two recovered pushes", || {
        second
            .deliveries()
            .iter()
            .filter(|d| d.origin == "recovered")
            .count()
            == 2
    })
    .await;
    let jobs = deploybot::store::Jobs::open(dir.path(), "test").unwrap();
    let deliveries = second.deliveries();
    for (tag, sha) in [("v1.0.1", &one), ("v1.0.2", &two)] {
        let delivery = deliveries
            .iter()
            .find(|d| d.git_ref.as_deref() == Some(&format!("refs/tags/{tag}")))
            .unwrap_or_else(|| panic!("{tag} recovered: {deliveries:#?}"));
        assert_eq!(delivery.sha.as_deref(), Some(sha.as_str()));
        assert!(
            delivery.outcome_text().contains("recovered"),
            "{delivery:?}"
        );
        let detail = finished(&jobs, delivery.job.unwrap()).await;
        assert_eq!(detail.job.state, "success", "{tag}: {detail:#?}");
        assert!(detail.job.recovered, "the job says its push was recovered");
        assert!(
            registry.digest("myevents/web", tag).await.is_some(),
            "{tag} pushed"
        );
    }

    // The forge's delivery of v1.0.2 arrives after all (redelivered by hand, say).
    let late = second
        .post("myevents", &signed_push(&git.url, "refs/tags/v1.0.2", &two))
        .await;
    assert_eq!(late.status(), 200);
    let answer = json(late).await;
    assert_eq!(answer["status"], "duplicate", "{answer}");
    assert_eq!(second.jobs(), 2, "one job per push, however it arrived");
    second.stop().await;
}

#[tokio::test]
async fn a_project_whose_hook_cannot_be_read_compares_refs_instead() {
    let Some((git, _)) = GitServer::start_fixture("hello") else {
        return;
    };
    let double = HookDouble::github("bradrydzewski/drone-test-go", 1, Vec::new()).await;
    let config = format!(
        "[server]\n\n[worker]\nenabled = false\nclone_schemes = [\"https\", \"git\"]\n\n\
         [[projects]]\nname = \"myevents\"\nforge = \"github\"\n\
         repository = \"bradrydzewski/drone-test-go\"\nwebhook_secret = \"{TEST_SECRET}\"\n\
         clone_url = \"{}\"\napi_url = \"{}\"\nhook_id = 999\nhook_token = \"{HOOK_TOKEN}\"\n",
        git.url,
        double.server.uri()
    );
    let app = TestApp::spawn_config(&config).await;
    eventually("the refs listed after the hook answered 404", || {
        refs_listed(app.data_dir.path(), "myevents")
    })
    .await;
    assert!(double.listings().await >= 1, "the hook was asked first");
}

/// A project on the GitHub double: worker off, recovery every second.
fn github_config(double: &HookDouble, max_asks: u32) -> String {
    format!(
        "[server]\n\n[worker]\nenabled = false\n\n[recovery]\ninterval_secs = 1\nmax_asks = {max_asks}\n\n\
         [[projects]]\nname = \"drone\"\nforge = \"github\"\nrepository = \"bradrydzewski/drone-test-go\"\n\
         webhook_secret = \"{TEST_SECRET}\"\napi_url = \"{}\"\nhook_id = 42\nhook_token = \"{HOOK_TOKEN}\"\n",
        double.server.uri()
    )
}

#[tokio::test]
async fn github_is_asked_to_redeliver_each_failed_push_deploybot_never_recorded_and_only_those() {
    let attempts = vec![
        github_attempt(16, "never-arrives", "push", false),
        github_attempt(15, "issue", "issues", false),
        github_attempt(14, "missed", "push", false),
        github_attempt(13, "already-recorded", "push", false),
        github_attempt(12, "delivered", "push", true),
        github_attempt(11, "missed", "push", false),
    ];
    let double = HookDouble::github("bradrydzewski/drone-test-go", 42, attempts).await;
    let dir = tempfile::tempdir().unwrap();
    let recorded = Delivery::fixture("github/push.tag").with_delivery_id("already-recorded");
    let before = TestApp::spawn_config_in(
        dir.path(),
        &github_config(&double, 2).replace("[recovery]\n", "[recovery]\nenabled = false\n"),
    )
    .await;
    assert_eq!(before.post("drone", &recorded).await.status(), 202);
    before.stop().await;

    let app = TestApp::spawn_config_in(dir.path(), &github_config(&double, 2)).await;
    let missed = "/repos/bradrydzewski/drone-test-go/hooks/42/deliveries/14/attempts";
    let never = "/repos/bradrydzewski/drone-test-go/hooks/42/deliveries/16/attempts";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !double.redeliveries().await.iter().any(|p| p == missed) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            double.redeliveries().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // GitHub sends it again, with its GUID.
    let again = Delivery::fixture("github/push.tag").with_delivery_id("missed");
    assert_eq!(app.post("drone", &again).await.status(), 202);

    // Three more runs: the recorded one is never asked for again, the lost one twice in all.
    let listed = double.listings().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while double.listings().await < listed + 3 {
        assert!(Instant::now() < deadline, "recovery stopped running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let asked = double.redeliveries().await;
    assert_eq!(
        asked.iter().filter(|p| *p == missed).count(),
        1,
        "{asked:?}"
    );
    assert_eq!(asked.iter().filter(|p| *p == never).count(), 2, "{asked:?}");
    assert_eq!(asked.len(), 3, "nothing else was asked for: {asked:?}");
    assert_eq!(
        app.metric("deploybot_recovered_total{how=\"github_redelivery\",project=\"drone\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(app.jobs(), 2);
}

#[tokio::test]
async fn gitlab_is_asked_to_resend_each_failed_push_event_deploybot_never_recorded() {
    let events = vec![
        gitlab_event(33, "merge_request_hooks", "mr-key"),
        gitlab_event(32, "tag_push_hooks", "missed-tag-key"),
        gitlab_event(31, "push_hooks", "recorded-key"),
    ];
    let double = HookDouble::gitlab("jsmith/example", 7, events).await;
    let config = format!(
        "[server]\n\n[worker]\nenabled = false\n\n[recovery]\ninterval_secs = 1\n\n\
         [[projects]]\nname = \"example\"\nforge = \"gitlab\"\nrepository = \"jsmith/example\"\n\
         webhook_secret = \"{TEST_SECRET}\"\napi_url = \"{}/api/v4\"\nhook_id = 7\nhook_token = \"{HOOK_TOKEN}\"\n",
        double.server.uri()
    );
    let dir = tempfile::tempdir().unwrap();
    let before = TestApp::spawn_config_in(
        dir.path(),
        &config.replace("[recovery]\n", "[recovery]\nenabled = false\n"),
    )
    .await;
    let recorded = Delivery::fixture("gitlab/tag_push.created").with_delivery_id("recorded-key");
    assert_eq!(before.post("example", &recorded).await.status(), 202);
    before.stop().await;

    let app = TestApp::spawn_config_in(dir.path(), &config).await;
    let resend = "/api/v4/projects/jsmith%2Fexample/hooks/7/events/32/resend";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !double.redeliveries().await.iter().any(|p| p == resend) {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            double.redeliveries().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // GitLab sends it again with the same Idempotency-Key.
    let again = Delivery::fixture("gitlab/tag_push.created").with_delivery_id("missed-tag-key");
    assert_eq!(app.post("example", &again).await.status(), 202);
    let listed = double.listings().await;
    while double.listings().await < listed + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(double.redeliveries().await, vec![resend.to_owned()]);
    assert_eq!(
        app.metric("deploybot_recovered_total{how=\"gitlab_resend\",project=\"example\"}")
            .await,
        Some(1.0)
    );
}
