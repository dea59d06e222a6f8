//! Trust boundaries: what a repository, a branch or a step cannot reach. Each test builds the
//! one-service `tests/fixtures/hello` repository for real (Docker engine, registry, git daemon)
//! after committing what an untrusting reviewer would try.

use std::net::TcpListener;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::build::{detail, hello_steps, signed_push, stage, Build};
use crate::common::infra::job_containers;

/// A folder outside every checkout holding what an operator would not hand out: a secret,
/// and a Dockerfile and pipeline that would copy it into an image.
fn operators_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "operator-only\n").unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM deploybot-local/static:latest\nCOPY secret /secret\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[[services]]\nname = \"web\"\ncontext = \".\"\nimage = \"myevents/web\"\n",
    )
    .unwrap();
    dir
}

/// Sets the hello service's context (in `.deploybot.toml`) to `context`.
fn set_context(dir: &Path, context: &str) {
    let path = dir.join(".deploybot.toml");
    let definition = std::fs::read_to_string(&path)
        .unwrap()
        .replace("context = \".\"", &format!("context = \"{context}\""));
    std::fs::write(path, definition).unwrap();
}

/// The job's whole stored log.
fn log_of(build: &Build, job: i64) -> String {
    build.log(job)
}

async fn nothing_pushed(build: &Build, tag: &str) {
    assert_eq!(build.registry.digest("myevents/web", tag).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_context_linked_out_of_the_checkout_fails_the_image_stage_naming_the_link() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let outside = operators_files();

    let (job, detail_) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            symlink(outside.path(), dir.join("ctx")).unwrap();
            set_context(dir, "ctx");
        })
        .await;

    assert_eq!(detail_.job.state, "failed", "{}", log_of(&build, job));
    assert_eq!(stage(&detail_, "web", "image").state, "failed");
    let expected = format!(
        "ctx: leads outside the checkout (ctx is a symlink to {})",
        outside.path().display()
    );
    assert!(
        detail(&detail_, "web", "image").contains(&expected),
        "{detail_:#?}"
    );
    nothing_pushed(&build, "v1.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_file_linked_out_of_the_checkout_fails_the_pipeline_check() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let outside = operators_files();

    let (_, detail_) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            std::fs::remove_file(dir.join(".deploybot.toml")).unwrap();
            symlink(
                outside.path().join("pipeline.toml"),
                dir.join(".deploybot.toml"),
            )
            .unwrap();
        })
        .await;

    assert_eq!(detail_.job.state, "failed");
    let reason = detail(&detail_, "-", "pipeline");
    assert!(
        reason.starts_with(
            ".deploybot.toml: leads outside the checkout (.deploybot.toml is a symlink to /"
        ),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_linked_out_of_the_checkout_fails_the_image_stage() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let outside = operators_files();

    let (_, detail_) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            std::fs::remove_file(dir.join("Dockerfile")).unwrap();
            symlink(outside.path().join("Dockerfile"), dir.join("Dockerfile")).unwrap();
        })
        .await;

    assert_eq!(stage(&detail_, "web", "image").state, "failed");
    assert!(
        detail(&detail_, "web", "image").contains("Dockerfile: leads outside the checkout"),
        "{detail_:#?}"
    );
    nothing_pushed(&build, "v1.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_a_step_makes_cannot_carry_the_build_context_out_of_the_checkout() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let outside = operators_files();
    let steps = format!(
        "\n[[services.steps]]\nstage = \"compile\"\nimage = \"busybox\"\nworkdir = \".\"\ncommands = [\"ln -s {} made\"]\n",
        outside.path().display()
    );

    let (job, detail_) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            hello_steps(&steps)(dir);
            set_context(dir, "made");
        })
        .await;

    assert_eq!(stage(&detail_, "web", "compile").state, "success");
    assert_eq!(
        stage(&detail_, "web", "image").state,
        "failed",
        "{}",
        log_of(&build, job)
    );
    assert!(
        detail(&detail_, "web", "image")
            .contains("made: leads outside the checkout (made is a symlink to /"),
        "{detail_:#?}"
    );
    nothing_pushed(&build, "v1.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_file_a_step_marks_set_user_id_keeps_the_bit_and_workspaces_are_private() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let steps = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"cp /bin/busybox suid\", \"chmod 6755 suid\"]\n\n[[services.steps]]\nstage = \"compile\"\nimage = \"busybox\"\ncommands = [\"ls -ln suid\"]\n";

    let (job, detail_) = build
        .push_change("refs/heads/master", hello_steps(steps))
        .await;

    assert_eq!(detail_.job.state, "success", "{}", log_of(&build, job));
    let log = log_of(&build, job);
    assert!(log.contains("-rwxr-xr-x"), "{log}");
    assert!(!log.contains("-rws"), "{log}");
    let workspaces = build.app.data_dir.path().join("workspaces");
    let mode = std::fs::metadata(workspaces).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "not world-traversable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_build_never_reuses_an_image_a_branch_built() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let branch = build.send("refs/heads/master", &build.sha).await;
    assert_eq!(build.finished(branch).await.job.state, "success");

    build.git.tag("v1.0.0", &build.sha);
    let tag = build.send("refs/tags/v1.0.0", &build.sha).await;
    let first = build.finished(tag).await;
    build.git.tag("v1.0.1", &build.sha);
    let again = build.send("refs/tags/v1.0.1", &build.sha).await;
    let second = build.finished(again).await;

    assert_eq!(first.job.state, "success");
    assert!(
        !detail(&first, "web", "image").contains("reusing"),
        "the tag built its own image: {first:#?}"
    );
    assert!(
        detail(&second, "web", "image").contains("reusing"),
        "a second tag of the commit reuses the tag's image: {second:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_projects_image_is_never_reused() {
    let other = "\n[[projects]]\nname = \"other\"\nforge = \"github\"\nrepository = \"bradrydzewski/drone-test-go\"\nwebhook_secret = \"deploybot-test-secret\"\nallowed_images = [\"myevents/*\"]\nallowed_deployments = [\"web\"]\n";
    let Some(build) = Build::hello(|c| {
        let url = c
            .lines()
            .find(|l| l.starts_with("clone_url"))
            .unwrap()
            .to_owned();
        format!("{c}{other}{url}\n")
    })
    .await
    else {
        return;
    };
    build.git.tag("v1.0.0", &build.sha);
    let response = build
        .app
        .post(
            "other",
            &signed_push(&build.git.url, "refs/tags/v1.0.0", &build.sha),
        )
        .await;
    assert_eq!(response.status(), 202);
    let theirs = crate::common::json(response).await["job"].as_i64().unwrap();
    let their_job = build.finished(theirs).await;
    assert_eq!(
        their_job.job.state,
        "success",
        "{their_job:#?}\n{}",
        build.log(theirs)
    );

    build.git.tag("v2.0.0", &build.sha);
    let ours = build.send("refs/tags/v2.0.0", &build.sha).await;
    let detail_ = build.finished(ours).await;

    assert_eq!(
        detail_.job.state,
        "success",
        "{detail_:#?}\n{}",
        build.log(ours)
    );
    assert!(
        !detail(&detail_, "web", "image").contains("reusing"),
        "{detail_:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_cannot_poison_the_dependency_cache_a_tag_build_uses() {
    let toolchain = "\n[[toolchains]]\nname = \"cached\"\nimage = \"deploybot-local/static:latest\"\nuser = \"65534:65534\"\ncaches = [\"/tmp\"]\n";
    let Some(build) = Build::hello(|c| format!("{c}{toolchain}")).await else {
        return;
    };
    let poison = "\n[[services.steps]]\nstage = \"check\"\nimage = \"cached\"\ncommands = [\"echo poisoned > /tmp/poison\"]\n";
    let (_, branch) = build
        .push_change("refs/heads/feature", hello_steps(poison))
        .await;
    assert_eq!(branch.job.state, "success");

    let check = "\n[[services.steps]]\nstage = \"check\"\nimage = \"cached\"\ncommands = [\"test ! -e /tmp/poison\"]\n";
    let (job, release) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            // The branch's pipeline change is undone; the release only checks its cache.
            let path = dir.join(".deploybot.toml");
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace(poison, check);
            std::fs::write(path, text).unwrap();
        })
        .await;

    assert_eq!(
        stage(&release, "web", "check").state,
        "success",
        "{}",
        log_of(&build, job)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_in_an_image_that_is_not_a_toolchain_fails_the_pipeline_check_naming_it() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let steps = "\n[[services.steps]]\nstage = \"check\"\nimage = \"deploybot-local/debian:bookworm\"\ncommands = [\"id\"]\n";

    let (_, detail_) = build
        .push_change("refs/heads/master", hello_steps(steps))
        .await;

    assert_eq!(detail_.job.state, "failed");
    let reason = detail(&detail_, "-", "pipeline");
    assert!(
        reason.contains("step 1 (check) runs in \"deploybot-local/debian:bookworm\", which is not a toolchain of this deploybot"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_run_without_capabilities_or_new_privileges_within_their_toolchains_limits() {
    let toolchain = "\n[[toolchains]]\nname = \"tight\"\nimage = \"deploybot-local/static:latest\"\nuser = \"65534:65534\"\npids = 64\nmemory_mb = 256\ncpus = 0.5\n";
    let Some(build) = Build::hello(|c| format!("{c}{toolchain}")).await else {
        return;
    };
    let steps = "\n[[services.steps]]\nstage = \"check\"\nimage = \"tight\"\ncommands = [\"grep -E 'CapBnd|CapEff|NoNewPrivs' /proc/self/status\", \"cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null || true\", \"cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null || true\", \"id -u\"]\n";

    let (job, detail_) = build
        .push_change("refs/heads/master", hello_steps(steps))
        .await;

    let log = log_of(&build, job);
    assert_eq!(detail_.job.state, "success", "{log}");
    for expected in [
        "CapBnd:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "NoNewPrivs:\t1",
        "\n64\n",
        "\n268435456\n",
        "\n65534\n",
    ] {
        assert!(log.contains(expected), "{expected:?} in {log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_asking_for_the_network_fails_the_pipeline_check_where_the_project_may_not_use_one()
{
    let Some(build) = Build::hello(|c| c.replace("allow_network = true\n", "")).await else {
        return;
    };
    let steps = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\nnetwork = true\ncommands = [\"true\"]\n";

    let (_, detail_) = build
        .push_change("refs/heads/master", hello_steps(steps))
        .await;

    assert_eq!(detail_.job.state, "failed");
    assert!(
        detail(&detail_, "-", "pipeline").contains(
            "step 1 (check) asks for network = true, which project myevents may not use (allow_network)"
        ),
        "{detail_:#?}"
    );
}

/// Hello's Dockerfile with `line` inserted before its `USER` line.
fn dockerfile_with(dir: &Path, line: &str) {
    let path = dir.join("Dockerfile");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("USER 65534", &format!("{line}\nUSER 65534"));
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_that_runs_commands_fails_the_image_stage_unless_the_project_allows_it() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };

    let (_, detail_) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            dockerfile_with(dir, "RUN echo hi")
        })
        .await;

    assert_eq!(stage(&detail_, "web", "image").state, "failed");
    assert!(
        detail(&detail_, "web", "image").contains(
            "Dockerfile:5: RUN runs commands in the image build, which project myevents may not do (allow_dockerfile_run)"
        ),
        "{detail_:#?}"
    );
    nothing_pushed(&build, "v1.0.0").await;
}

/// The host's address on Docker's default bridge, where containers with a network reach it.
fn bridge_gateway() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .expect("docker0 has an IPv4 address");
    cidr.split('/').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_commands_get_no_network_unless_the_project_may_use_one() {
    let Some(build) =
        Build::hello(|c| c.replace("allow_network = true\n", "allow_dockerfile_run = true\n"))
            .await
    else {
        return;
    };
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "http://{}:{}/",
        bridge_gateway(),
        listener.local_addr().unwrap().port()
    );
    let run = format!("RUN wget -q -T 3 -O /dev/null {url} && echo REACHED || echo UNREACHABLE");

    let (job, detail_) = build
        .push_change("refs/heads/master", |dir| dockerfile_with(dir, &run))
        .await;

    let log = log_of(&build, job);
    assert_eq!(detail_.job.state, "success", "{log}");
    assert!(log.contains("UNREACHABLE"), "{log}");
    assert!(listener.accept().is_err(), "the build connected out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_writing_one_endless_line_is_cut_and_its_failure_detail_stays_small() {
    let Some(build) = Build::hello(|c| c).await else {
        return;
    };
    let steps = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"head -c 10000000 /dev/zero | tr '\\\\0' x\", \"exit 3\"]\n";

    let (job, detail_) = build
        .push_change("refs/heads/master", hello_steps(steps))
        .await;

    let check = stage(&detail_, "web", "check");
    assert_eq!((check.state.as_str(), check.exit_code), ("failed", Some(3)));
    let log = log_of(&build, job);
    assert!(log.contains("[deploybot: line cut at 16384 bytes]"), "cut");
    assert!(log.len() < 100_000, "the stored log is {} bytes", log.len());
    let reason = check.detail.as_deref().unwrap_or("");
    assert!(
        reason.len() < 10_000,
        "the detail is {} bytes",
        reason.len()
    );
    assert!(
        detail_.job.error.as_deref().unwrap_or("").len() < 2_000,
        "{:?}",
        detail_.job.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_step_is_stopped_at_once_not_when_its_job_ends() {
    let Some(build) =
        Build::hello(|c| c.replace("step_timeout_secs = 600", "step_timeout_secs = 4")).await
    else {
        return;
    };
    // "slow" times out in the first phase; "later" (same toolchain, so the second phase)
    // keeps the job running while its step sleeps within the timeout.
    let services = "\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"sleep 300\"]\n\n[[services]]\nname = \"later\"\ncontext = \".\"\nimage = \"myevents/later\"\n\n[[services.steps]]\nstage = \"check\"\nimage = \"busybox\"\ncommands = [\"sleep 3\"]\n";
    let sha = build
        .git
        .commit("slow", "master", None, hello_steps(services));
    let job = build.send("refs/heads/master", &sha).await;
    let jobs = build.jobs();

    let deadline = Instant::now() + Duration::from_secs(120);
    let running_later = loop {
        let detail_ = jobs.get(job).unwrap().unwrap();
        let later = detail_
            .stages
            .iter()
            .any(|s| s.service == "later" && s.stage == "check" && s.state == "running");
        if later {
            break detail_;
        }
        assert!(Instant::now() < deadline, "later never ran: {detail_:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let containers = job_containers(build.app.data_dir.path(), job);

    assert_eq!(stage(&running_later, "web", "check").state, "failed");
    assert!(
        detail(&running_later, "web", "check").contains("timed out after 4 s"),
        "{running_later:#?}"
    );
    assert_eq!(containers, 1, "only later's step container is left");
    build.finished(job).await;
}

/// A TCP server that accepts connections and never answers; counts them.
fn silent_server() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_from_a_server_that_never_answers_times_out() {
    let (_silent, port) = silent_server();
    let Some(build) = Build::hello(|c| {
        c.replace("step_timeout_secs = 600", "step_timeout_secs = 3")
            .replace(
                "clone_url = \"git://",
                &format!("clone_url = \"git://127.0.0.1:{port}/never.git\"\n# was: \"git://"),
            )
    })
    .await
    else {
        return;
    };

    let job = build.send("refs/heads/master", &build.sha).await;
    let detail_ = build.finished(job).await;

    assert_eq!(detail_.job.state, "failed");
    assert_eq!(
        detail(&detail_, "-", "checkout"),
        "timed out after 3 s",
        "{detail_:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_that_hangs_is_stopped_by_cancel() {
    let (_silent, port) = silent_server();
    let Some(build) = Build::hello(|c| {
        let c = c.replace(
            "clone_url = \"git://",
            &format!("clone_url = \"git://127.0.0.1:{port}/never.git\"\n# was: \"git://"),
        );
        format!("{c}\n[web]\naction_token = \"cancel-token\"\n")
    })
    .await
    else {
        return;
    };
    let job = build.send("refs/heads/master", &build.sha).await;
    let jobs = build.jobs();
    let deadline = Instant::now() + Duration::from_secs(60);
    while jobs
        .state(job)
        .unwrap()
        .map(deploybot::domain::JobState::as_str)
        != Some("running")
    {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let canceled = build
        .app
        .act(&format!("/api/v1/jobs/{job}/cancel"), "cancel-token")
        .await;
    assert_eq!(canceled.status(), 202);

    // The worker lets the job go (its slot is free) once the checkout stops.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let checkout = jobs
            .get(job)
            .unwrap()
            .unwrap()
            .stages
            .into_iter()
            .find(|s| s.stage == "checkout");
        if checkout.as_ref().is_some_and(|s| s.state == "failed") {
            assert_eq!(checkout.unwrap().detail.as_deref(), Some("canceled"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the checkout went on: {checkout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        jobs.state(job)
            .unwrap()
            .map(deploybot::domain::JobState::as_str),
        Some("canceled")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fetches_from_the_projects_repository_never_the_url_a_payload_names() {
    let (payloads_server, payloads_port) = silent_server();
    payloads_server.set_nonblocking(true).unwrap();
    let (_closed, forge_port) = silent_server();
    drop(_closed);
    // No clone_url: the project's repository on its (GitHub Enterprise) forge.
    let Some(build) = Build::hello(|c| {
        let c = c
            .lines()
            .filter(|l| !l.starts_with("clone_url"))
            .collect::<Vec<_>>()
            .join("\n");
        c.replace(
            "allow_network = true",
            &format!("allow_network = true\napi_url = \"https://127.0.0.1:{forge_port}/api/v3\""),
        )
    })
    .await
    else {
        return;
    };
    let delivery = signed_push(
        &format!("git://127.0.0.1:{payloads_port}/elsewhere.git"),
        "refs/heads/master",
        &build.sha,
    );

    let response = build.app.post("myevents", &delivery).await;
    assert_eq!(response.status(), 202);
    let job = crate::common::json(response).await["job"].as_i64().unwrap();
    let detail_ = build.finished(job).await;

    assert_eq!(detail_.job.state, "failed");
    let expected = format!("https://127.0.0.1:{forge_port}/bradrydzewski/drone-test-go.git");
    assert!(
        build.log(job).contains(&format!("from {expected}")),
        "{}",
        build.log(job)
    );
    assert!(
        payloads_server.accept().is_err(),
        "nothing connected to the payload's URL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_the_base_image_changed_keeps_the_tags_first_digest() {
    let base = format!("deploybot-test/base-{}", std::process::id());
    let Some(build) =
        Build::hello(|c| format!("{c}\n[web]\naction_token = \"rerun-token\"\n")).await
    else {
        return;
    };
    let docker = |args: &[&str]| {
        let status = Command::new("docker").args(args).status().unwrap();
        assert!(status.success(), "docker {args:?}");
    };
    docker(&["tag", "deploybot-local/static:latest", &base]);
    let (job, first) = build
        .push_change("refs/tags/v1.0.0", |dir| {
            let path = dir.join("Dockerfile");
            let text = std::fs::read_to_string(&path).unwrap().replace(
                "ARG BASE=deploybot-local/static:latest",
                &format!("ARG BASE={base}"),
            );
            std::fs::write(path, text).unwrap();
        })
        .await;
    assert_eq!(first.job.state, "success", "{}", build.log(job));
    let pushed = build
        .registry
        .digest("myevents/web", "v1.0.0")
        .await
        .unwrap();

    // The base changes under the tag; then an operator re-runs the job.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM deploybot-local/static:latest\nLABEL changed=yes\n",
    )
    .unwrap();
    docker(&[
        "build",
        "-q",
        "-t",
        &base,
        &dir.path().display().to_string(),
    ]);
    let rerun = build
        .app
        .act(&format!("/api/v1/jobs/{job}/rerun"), "rerun-token")
        .await;
    assert_eq!(rerun.status(), 202);
    let again = build.finished(job).await;
    docker(&["rmi", "-f", &base]);

    assert_eq!(again.job.state, "success", "{}", build.log(job));
    assert_eq!(
        build
            .registry
            .digest("myevents/web", "v1.0.0")
            .await
            .as_deref(),
        Some(pushed.as_str())
    );
    assert_eq!(again.images[0].digest.as_deref(), Some(pushed.as_str()));
    assert!(build.log(job).contains("was already pushed as"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_died_in_every_attempt_fails_instead_of_running_again() {
    use crate::common::TestApp;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn_config_in(
        dir.path(),
        &format!(
            "[worker]\nenabled = false\n\n[server]\n{}",
            crate::common::FIXTURE_PROJECTS
        ),
    )
    .await;
    assert_eq!(app.deliver_fixture("github/push.tag").await.0.status(), 202);
    app.stop().await;
    // Three claims, each by a worker that died with the job.
    rusqlite::Connection::open(dir.path().join("deploybot.db"))
        .unwrap()
        .execute(
            "UPDATE jobs SET state = 'running', attempt = 3, lease_owner = 'gone', lease_until = 0",
            [],
        )
        .unwrap();

    let Some(()) = crate::common::infra::docker_with_base_images() else {
        return;
    };
    let app = TestApp::spawn_config_in(
        dir.path(),
        &format!("[server]\n{}", crate::common::FIXTURE_PROJECTS),
    )
    .await;
    let jobs = deploybot::store::Jobs::open(dir.path(), "test").unwrap();
    let detail_ = crate::common::build::finished(&jobs, 1).await;
    app.stop().await;

    assert_eq!(detail_.job.state, "failed");
    assert_eq!(detail_.job.attempt, 4);
    assert!(
        detail_
            .job
            .error
            .as_deref()
            .unwrap_or("")
            .starts_with("deploybot stopped during each of this job's 3 attempts"),
        "{detail_:#?}"
    );
}
