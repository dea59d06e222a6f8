//! Chaos: signed pushes (tags and branches, two projects) stream at the real binary while
//! `kill -9` hits it at random moments and it is started again each time. At the end every
//! acknowledged delivery is recorded once, every recorded push ended in one terminal job
//! state, no tag was pushed with two digests, no Deployment is left on an image whose rollout
//! failed, and every commit status reached its final state without going back.
//!
//! `CHAOS_KILLS` (default 20) and `CHAOS_PUSHES` (default 30) make it longer:
//! `bench/chaos.sh` runs it with more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::binary::Server;
use crate::common::build::{config_with, signed_push_with};
use crate::common::cluster::{TestCluster, INITIAL_IMAGE};
use crate::common::forge_double::{ForgeDouble, Seen, STATUS_TOKEN};
use crate::common::infra::{docker_with_base_images, GitServer, Registry};
use crate::common::TEST_SECRET;

fn from_env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift: random enough for moments to kill at, and no dependency.
struct Dice(u64);

impl Dice {
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(from + self.0 % (to - from))
    }
}

/// One project of the drill: its name, repository, git server and Deployment.
struct Project {
    name: &'static str,
    repository: &'static str,
    git: GitServer,
    deployment: &'static str,
}

/// The second project builds `other/web` into Deployment `web-b`.
fn second_project(git: &GitServer) {
    git.commit("other project", "master", None, |dir| {
        let path = dir.join(".deploybot.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replace("image = \"myevents/web\"", "image = \"other/web\"")
            .replace("deployment = \"web\"", "deployment = \"web-b\"");
        std::fs::write(path, text).unwrap();
    });
}

/// Sends `delivery` until deploybot acknowledges it (as a forge retrying would, at whatever
/// address the running process has); returns its id.
async fn deliver(
    address: &Mutex<String>,
    project: &str,
    delivery: crate::common::Delivery,
) -> String {
    let id = delivery.header("X-GitHub-Delivery").unwrap().to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    loop {
        let url = format!("{}/hooks/{project}", address.lock().unwrap());
        let mut request = client.post(url).body(delivery.body.clone());
        for (k, v) in &delivery.headers {
            request = request.header(k, v);
        }
        if let Ok(response) = request.send().await {
            if response.status().is_success() {
                return id;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_streamed_through_repeated_kill_9_are_each_built_once_and_end_consistently() {
    let kills = from_env("CHAOS_KILLS", 20);
    let pushes = from_env("CHAOS_PUSHES", 30);
    let Some(()) = docker_with_base_images() else {
        return;
    };
    let Some(registry) = Registry::start() else {
        return;
    };
    let (Some((git_a, _)), Some((git_b, _))) = (
        GitServer::start_fixture("hello"),
        GitServer::start_fixture("hello"),
    ) else {
        return;
    };
    let Some(cluster) = TestCluster::start(&registry).await else {
        return;
    };
    second_project(&git_b);
    for deployment in ["web", "web-b"] {
        cluster.create_deployment(deployment, 30).await;
    }
    let forge = ForgeDouble::github(vec![(201, None)]).await;
    let api = forge.server.uri();
    let extra = format!(
        "status_token = \"{STATUS_TOKEN}\"\napi_url = \"{api}\"\n\n[report]\nretry_base_ms = 50\n\n\
         [[projects]]\nname = \"other\"\nforge = \"github\"\nrepository = \"team/other\"\n\
         webhook_secret = \"{TEST_SECRET}\"\nclone_url = \"{}\"\nallowed_deployments = [\"web-b\"]\n\
         status_token = \"{STATUS_TOKEN}\"\napi_url = \"{api}\"\n\n{}",
        git_b.url,
        cluster.environment(&cluster.token_file)
    );
    let config = config_with(&registry, &git_a, &registry.password, &extra)
        .replacen(
            "[server]\n",
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"data\"\n",
            1,
        )
        .replacen(
            "lease_secs = 6\n",
            "lease_secs = 6\nmax_attempts = 1000\n",
            1,
        );
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("deploybot.toml");
    std::fs::write(&config_path, config).unwrap();
    let projects = Arc::new([
        Project {
            name: "myevents",
            repository: "bradrydzewski/drone-test-go",
            git: git_a,
            deployment: "web",
        },
        Project {
            name: "other",
            repository: "team/other",
            git: git_b,
            deployment: "web-b",
        },
    ]);

    let mut server = Server::start(dir.path(), &config_path, &[]);
    let address = Arc::new(Mutex::new(server.address.clone()));
    let sender = tokio::spawn({
        let (address, projects) = (address.clone(), projects.clone());
        async move {
            let mut acked = Vec::new();
            for i in 0..pushes {
                let project = &projects[i % 2];
                let (git_ref, tag) = if i % 3 == 0 {
                    let tag = format!("v1.0.{i}");
                    (format!("refs/tags/{tag}"), Some(tag))
                } else {
                    ("refs/heads/master".to_owned(), None)
                };
                let sha = tokio::task::block_in_place(|| {
                    project
                        .git
                        .commit(&format!("push {i}"), "master", tag.as_deref(), |d| {
                            std::fs::write(d.join("VERSION"), i.to_string()).unwrap()
                        })
                });
                let delivery = signed_push_with(&project.git.url, &git_ref, &sha, |payload| {
                    payload["repository"]["full_name"] = project.repository.into();
                });
                acked.push(deliver(&address, project.name, delivery).await);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            acked
        }
    });

    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    for _ in 0..kills {
        tokio::time::sleep(dice.millis(300, 2500)).await;
        tokio::task::block_in_place(|| {
            server.kill_hard_in_place();
            server = Server::start(dir.path(), &config_path, &[]);
        });
        *address.lock().unwrap() = server.address.clone();
    }
    let acked = sender.await.unwrap();

    // Every acknowledged delivery is recorded, once.
    let data = dir.path().join("data");
    let reader = deploybot::store::Reader::open(&data).unwrap();
    let rows = reader.deliveries(100_000).unwrap();
    let mut recorded: HashMap<&str, usize> = HashMap::new();
    for row in &rows {
        *recorded
            .entry(row.delivery_id.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    for id in &acked {
        assert_eq!(recorded.get(id.as_str()), Some(&1), "{id} recorded once");
    }

    // Every recorded push ends in one terminal state.
    let jobs = deploybot::store::Jobs::open(&data, "chaos").unwrap();
    let job_ids: Vec<i64> = rows.iter().filter_map(|r| r.job).collect();
    assert_eq!(job_ids.len(), acked.len(), "one job per push");
    let deadline = Instant::now() + Duration::from_secs(900);
    let details = loop {
        let details: Vec<_> = job_ids
            .iter()
            .map(|id| jobs.get(*id).unwrap().unwrap())
            .collect();
        if details
            .iter()
            .all(|d| !matches!(d.job.state.as_str(), "queued" | "running"))
        {
            break details;
        }
        assert!(Instant::now() < deadline, "jobs never ended: {details:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // No tag pushed with two digests, and the registry holds the recorded one.
    let mut digests: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for image in details.iter().flat_map(|d| &d.images) {
        if let Some(digest) = &image.digest {
            digests.entry(&image.reference).or_default().insert(digest);
        }
    }
    for (reference, found) in &digests {
        assert_eq!(found.len(), 1, "{reference} pushed as {found:?}");
        let (repository, tag) = reference.rsplit_once(':').unwrap();
        let repository = repository.split_once('/').unwrap().1;
        let held = registry.digest(repository, tag).await;
        assert_eq!(held.as_deref(), found.iter().next().copied(), "{reference}");
    }

    // No Deployment left on an image whose rollout failed.
    let deploys: Vec<_> = details.iter().flat_map(|d| &d.deploys).collect();
    for project in projects.iter() {
        let running = cluster.image(project.deployment).await;
        let rolled_out: Vec<_> = deploys
            .iter()
            .filter(|d| d.deployment == project.deployment && d.image == running)
            .map(|d| d.state.as_str())
            .collect();
        assert!(
            running == INITIAL_IMAGE
                || rolled_out
                    .iter()
                    .any(|s| *s == "deployed" || *s == "unchanged"),
            "{} runs {running}, whose rollouts ended {rolled_out:?}",
            project.deployment
        );
    }

    // Every commit status (the job's and each service's) reached its final state, never
    // going back to an older one.
    let seen = forge
        .wait_until(120, |seen| final_states(seen).is_empty())
        .await;
    let broken = final_states(&seen);
    assert!(broken.is_empty(), "{broken:#?}");

    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for detail in &details {
        *by_state.entry(detail.job.state.as_str()).or_default() += 1;
    }
    // A kill is no reason for a build to fail: each push is one that builds.
    let failed: Vec<_> = details
        .iter()
        .filter(|d| !matches!(d.job.state.as_str(), "deployed" | "success" | "superseded"))
        .map(|d| (d.job.id, d.job.state.as_str(), d.job.error.as_deref()))
        .collect();
    assert!(failed.is_empty(), "jobs a kill made fail: {failed:?}");
    let retried = details.iter().filter(|d| d.job.attempt > 1).count();
    println!(
        "chaos: {kills} kills, {pushes} pushes acknowledged and recorded once, jobs {by_state:?} ({retried} taken back after a kill), {} tags pushed with one digest each, {} rollouts, {} statuses, each context final",
        digests.len(),
        deploys.len(),
        seen.len(),
    );
}

/// Every (sha, context) that does not end in a state other than pending, or goes back to
/// pending after one: what broke the rule, one line each.
fn final_states(seen: &[Seen]) -> Vec<String> {
    let mut by_context: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for status in seen {
        let context = status.body["context"].as_str().unwrap_or("").to_owned();
        let state = status.body["state"].as_str().unwrap_or("").to_owned();
        by_context
            .entry((status.path.clone(), context))
            .or_default()
            .push(state);
    }
    by_context
        .into_iter()
        .filter_map(
            |((path, context), states)| match states.iter().position(|s| s != "pending") {
                None => Some(format!("{path} {context}: only {states:?}")),
                Some(first) if states[first..].iter().any(|s| s == "pending") => {
                    Some(format!("{path} {context}: went back: {states:?}"))
                }
                Some(_) => None,
            },
        )
        .collect()
}
