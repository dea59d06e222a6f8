//! The rollout on a fake cluster: resumed states, 409s, rollbacks and someone else's change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::deploy::cluster::{Changes, ClusterError, ImageChange, Observed};
use crate::store::{DeployRow, RolloutState};

/// A Deployment whose controller finishes every rollout at once, and which someone else
/// changes under deploybot `conflicts` times (each a 409).
struct Fake {
    observed: Mutex<Observed>,
    conflicts: Mutex<u32>,
    patches: Mutex<u32>,
    /// The image the Deployment ran before deploybot came.
    first: String,
    /// The annotations of each change to the Deployment's metadata only.
    annotated: Mutex<Vec<BTreeMap<String, String>>>,
    /// Someone else's image, set right after deploybot's patch.
    then_someone_sets: Option<&'static str>,
    /// `web:2` never becomes ready: the controller has given up on it.
    stalls: bool,
    /// Listing pods is forbidden (a Role without `list` on pods).
    pods_hidden: bool,
    /// After each image change, this many reads find the API server unreachable.
    outage_after_patch: u32,
    outage: Mutex<u32>,
}

impl Cluster for Fake {
    async fn read(&self, target: &DeploymentRef) -> Result<Observed, ClusterError> {
        let mut outage = self.outage.lock().unwrap();
        if *outage > 0 {
            *outage -= 1;
            return Err(ClusterError::Unreachable {
                verb: "get",
                target: target.clone(),
                message: "connection refused".into(),
            });
        }
        drop(outage);
        let mut observed = self.observed.lock().unwrap().clone();
        if self.stalls && observed.images["api"] == "web:2" {
            observed.updated = 0;
            observed.progressing = Some(crate::deploy::cluster::Condition {
                status: "False".into(),
                reason: "ProgressDeadlineExceeded".into(),
                message: "ReplicaSet \"web-2\" has timed out progressing.".into(),
                last_update: "2026-01-01T00:00:09Z".into(),
            });
        }
        Ok(observed)
    }

    async fn set_image(
        &self,
        target: &DeploymentRef,
        change: ImageChange<'_>,
    ) -> Result<Observed, ClusterError> {
        let mut observed = self.observed.lock().unwrap();
        let mut conflicts = self.conflicts.lock().unwrap();
        if *conflicts > 0 {
            *conflicts -= 1;
            observed
                .images
                .insert("api".into(), "someone/else:2".into());
            observed.resource_version = format!("{}x", observed.resource_version);
        }
        if change.resource_version != observed.resource_version {
            return Err(ClusterError::Conflict(target.clone()));
        }
        *self.patches.lock().unwrap() += 1;
        *self.outage.lock().unwrap() = self.outage_after_patch;
        observed
            .images
            .insert(change.container.into(), change.image.into());
        observed.generation += 1;
        observed.observed_generation = observed.generation;
        let answer = observed.clone();
        if let Some(theirs) = self.then_someone_sets {
            observed
                .images
                .insert(change.container.into(), theirs.into());
            observed.generation += 1;
            observed.observed_generation = observed.generation;
        }
        Ok(answer)
    }

    async fn annotate(
        &self,
        target: &DeploymentRef,
        annotations: &BTreeMap<String, String>,
        resource_version: &str,
    ) -> Result<Observed, ClusterError> {
        let mut observed = self.observed.lock().unwrap();
        if resource_version != observed.resource_version {
            return Err(ClusterError::Conflict(target.clone()));
        }
        self.annotated.lock().unwrap().push(annotations.clone());
        // As the API server does: annotations count in a Deployment's generation.
        observed.generation += 1;
        observed.observed_generation = observed.generation;
        Ok(observed.clone())
    }

    async fn follow(&self, _: &DeploymentRef, _: &str) -> Result<Changes, ClusterError> {
        Ok(Box::pin(futures_util::stream::empty()))
    }

    async fn pods_not_ready(
        &self,
        target: &DeploymentRef,
        _: &BTreeMap<String, String>,
        _: &str,
        image: &str,
    ) -> Result<Vec<String>, ClusterError> {
        if self.pods_hidden {
            return Err(ClusterError::Other {
                verb: "list the pods of",
                target: target.clone(),
                message: "forbidden".into(),
            });
        }
        Ok(if self.stalls && image == "web:2" {
            vec!["pod web-2-x: container api is running but not ready".into()]
        } else {
            Vec::new()
        })
    }
}

fn environment() -> Environment {
    Environment {
        name: "production".into(),
        namespace: crate::domain::DnsLabel::parse("default").unwrap(),
        tags: Vec::new(),
        branches: Vec::new(),
        projects: Vec::new(),
        order: crate::config::DeployOrder::Semver,
        rollout_timeout: Duration::from_secs(1),
        cluster: crate::config::ClusterAccess::InCluster,
        tokens: Vec::new(),
    }
}

fn fake(conflicts: u32, then_someone_sets: Option<&'static str>) -> Fake {
    Fake {
        first: "web:1".into(),
        observed: Mutex::new(Observed {
            resource_version: "1".into(),
            generation: 1,
            observed_generation: 1,
            desired: 1,
            total: 1,
            updated: 1,
            available: 1,
            images: BTreeMap::from([("api".into(), "web:1".into())]),
            ..Observed::default()
        }),
        conflicts: Mutex::new(conflicts),
        patches: Mutex::new(0),
        annotated: Mutex::default(),
        then_someone_sets,
        stalls: false,
        pods_hidden: false,
        outage_after_patch: 0,
        outage: Mutex::new(0),
    }
}

/// A Deployment whose container runs `image`, pinned by digest, and that takes any change.
fn running(image: &str) -> Fake {
    let fake = Fake {
        first: image.into(),
        ..fake(0, None)
    };
    fake.observed
        .lock()
        .unwrap()
        .images
        .insert("api".into(), image.into());
    fake
}

/// `registry/web:<tag>@sha256:<digest>`, as a job pushes it.
fn pinned(tag: &str, digest: &str) -> String {
    format!("registry:5000/myevents/web:{tag}@sha256:{digest}")
}

/// Deploys `web:2` (previously `web:1`) on `fake`; answers the outcome, the notes, the
/// patches sent and the record.
async fn deploy_on(fake: Fake) -> (Outcome, Vec<String>, u32, DeployRow) {
    resume_on(fake, None).await
}

/// The same, for a job whose rollout a killed process left recorded as `earlier` (state,
/// generation): the restarted worker runs it again.
async fn resume_on(
    fake: Fake,
    earlier: Option<(RolloutState, i64)>,
) -> (Outcome, Vec<String>, u32, DeployRow) {
    let ran = run_on(fake, earlier, "web:2").await;
    (ran.outcome, ran.notes, ran.patches, ran.record)
}

/// What a rollout did on the fake.
struct Ran {
    outcome: Outcome,
    notes: Vec<String>,
    /// Image changes sent.
    patches: u32,
    /// Changes to the Deployment's annotations only.
    annotated: Vec<BTreeMap<String, String>>,
    /// The container's image in the pod template afterwards.
    image: String,
    record: DeployRow,
}

/// Releases `image` as tag `v2` on `fake`, for a job whose rollout is recorded as `earlier`
/// (state, generation) if a killed process left one.
async fn run_on(fake: Fake, earlier: Option<(RolloutState, i64)>, image: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Arc::new(Jobs::open_migrated(dir.path()).unwrap());
    let job = jobs.insert_running_job_for_tests("myevents").unwrap();
    let cause = RolloutCause::Release { job };
    if let Some((state, generation)) = earlier {
        let reason = (state == RolloutState::RollingBack)
            .then(|| "ProgressDeadlineExceeded: stalled".to_owned());
        jobs.plan_deploy(&crate::store::NewDeploy {
            cause,
            project: "myevents".into(),
            service: "web".into(),
            environment: "production".into(),
            namespace: "default".into(),
            deployment: "web".into(),
            container: "api".into(),
            tag: "v2".into(),
            pushed_at: "2026-01-01T00:00:00.000Z".into(),
            image: image.into(),
            state,
            previous_image: Some(fake.first.clone()),
            generation: Some(generation),
            reason,
        })
        .unwrap();
    }
    let mut environment = environment();
    if fake.outage_after_patch > 0 {
        // Room to wait out the outage (1 s, then 2 s).
        environment.rollout_timeout = Duration::from_secs(30);
    }
    let deployer = Deployer::new(
        HashMap::from([("production".into(), Ok(fake))]),
        jobs.clone(),
    );
    let request = Request {
        cause,
        project: "myevents",
        service: "web",
        environment: &environment,
        deployment: "web",
        container: "api",
        tag: "v2",
        sha: "",
        delivery: "",
        pushed_at: "2026-01-01T00:00:00.000Z",
        image,
    };
    let notes = Mutex::new(Vec::new());
    let note = |text: &str| notes.lock().unwrap().push(text.to_owned());
    let outcome = deployer.run(&request, &note).await;
    let Some(Ok(fake)) = deployer.clusters.get("production") else {
        unreachable!("the deployer holds the fake");
    };
    let record = jobs
        .deploy_history("myevents", "web", 10)
        .unwrap()
        .remove(0);
    let patches = *fake.patches.lock().unwrap();
    let annotated = fake.annotated.lock().unwrap().clone();
    let image = fake.observed.lock().unwrap().images["api"].clone();
    Ran {
        outcome,
        notes: notes.into_inner().unwrap(),
        patches,
        annotated,
        image,
        record,
    }
}

/// `fake` after deploybot's patch to `web:2` went through (generation 2).
fn already_patched(fake: Fake) -> Fake {
    {
        let mut observed = fake.observed.lock().unwrap();
        observed.images.insert("api".into(), "web:2".into());
        observed.generation = 2;
        observed.observed_generation = 2;
    }
    fake
}

#[tokio::test]
async fn a_rollout_recorded_as_patched_is_waited_for_not_patched_again() {
    let (outcome, notes, patches, record) = resume_on(
        already_patched(fake(0, None)),
        Some((RolloutState::Patched, 2)),
    )
    .await;

    assert_eq!(
        outcome,
        Outcome::Deployed {
            image: "web:2".into()
        }
    );
    assert_eq!(patches, 0);
    assert_eq!(record.state, RolloutState::Deployed);
    assert!(notes.iter().any(|n| n.starts_with("resuming")), "{notes:?}");
}

/// Killed between sending the patch and recording it: the image is already the new one.
#[tokio::test]
async fn a_rollout_recorded_as_planned_whose_patch_went_through_is_not_patched_again() {
    let (outcome, notes, patches, record) = resume_on(
        already_patched(fake(0, None)),
        Some((RolloutState::Planned, 1)),
    )
    .await;

    assert_eq!(
        outcome,
        Outcome::Deployed {
            image: "web:2".into()
        }
    );
    assert_eq!(patches, 0);
    assert_eq!(
        record.previous_image.as_deref(),
        Some("web:1"),
        "kept from the record"
    );
    assert!(
        notes.iter().any(|n| n.contains("not patching")),
        "{notes:?}"
    );
}

/// ... and when that rollout then fails, the image put back is the recorded one.
#[tokio::test]
async fn a_resumed_rollout_that_fails_rolls_back_to_the_image_recorded_before_it() {
    let mut stalled = already_patched(fake(0, None));
    stalled.stalls = true;
    let (outcome, _, patches, record) = resume_on(stalled, Some((RolloutState::Planned, 1))).await;

    let Outcome::RolledBack { previous, reason } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(previous, "web:1");
    assert!(reason.starts_with("ProgressDeadlineExceeded"), "{reason}");
    assert!(
        reason.ends_with("; pod web-2-x: container api is running but not ready"),
        "the reason says why its pods were not ready: {reason}"
    );
    assert_eq!(patches, 1);
    assert_eq!(record.state, RolloutState::RolledBack);
}

#[tokio::test]
async fn without_leave_to_list_pods_the_reason_is_the_condition_and_the_log_says_so() {
    let mut stalled = fake(0, None);
    stalled.stalls = true;
    stalled.pods_hidden = true;
    let (outcome, notes, _, _) = deploy_on(stalled).await;

    let Outcome::RolledBack { reason, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        reason,
        "ProgressDeadlineExceeded: ReplicaSet \"web-2\" has timed out progressing."
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("why its pods were not ready is not known")),
        "{notes:?}"
    );
}

#[tokio::test]
async fn a_rollback_recorded_as_started_is_finished_after_a_restart() {
    let (outcome, _, patches, record) = resume_on(
        already_patched(fake(0, None)),
        Some((RolloutState::RollingBack, 2)),
    )
    .await;

    assert_eq!(
        outcome,
        Outcome::RolledBack {
            reason: "ProgressDeadlineExceeded: stalled".into(),
            previous: "web:1".into()
        }
    );
    assert_eq!(patches, 1, "the previous image put back, once");
    assert_eq!(record.state, RolloutState::RolledBack);
}

#[tokio::test]
async fn a_409_conflict_is_read_again_recorded_again_and_retried() {
    let (outcome, notes, patches, record) = deploy_on(fake(1, None)).await;

    assert_eq!(
        outcome,
        Outcome::Deployed {
            image: "web:2".into()
        }
    );
    assert_eq!(patches, 1);
    assert_eq!(record.state, RolloutState::Deployed);
    assert_eq!(
        record.previous_image.as_deref(),
        Some("someone/else:2"),
        "the previous image is the one read after the conflict"
    );
    assert!(notes.iter().any(|n| n.contains("409")));
}

#[tokio::test]
async fn an_image_someone_else_sets_during_the_rollout_is_neither_claimed_nor_rolled_back() {
    let (outcome, _, patches, record) = deploy_on(fake(0, Some("hotfix:9"))).await;

    let Outcome::Failed { reason } = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        reason.contains("was set to hotfix:9 by someone else"),
        "{reason}"
    );
    assert_eq!(patches, 1, "no rollback over their change");
    assert_eq!(record.state, RolloutState::Failed);
}

#[tokio::test]
async fn the_same_digest_under_a_new_tag_changes_only_the_annotations_and_is_recorded_unchanged() {
    // Arrange: v1 runs; v2 is the same image under a new tag.
    let (v1, v2) = (pinned("v1", "aaaa"), pinned("v2", "aaaa"));

    // Act
    let ran = run_on(running(&v1), None, &v2).await;

    // Assert
    assert_eq!(
        ran.outcome,
        Outcome::Unchanged {
            running: v1.clone()
        }
    );
    assert_eq!(ran.patches, 0, "the pod template is not touched");
    assert_eq!(ran.image, v1);
    let [annotations] = ran.annotated.as_slice() else {
        panic!("one change to the annotations: {:?}", ran.annotated);
    };
    assert_eq!(annotations["deploybot.dev/tag"], "v2");
    assert_eq!(annotations["deploybot.dev/previous-image"], v1);
    assert!(
        annotations["kubernetes.io/change-cause"].contains("v2"),
        "{annotations:?}"
    );
    assert_eq!(
        (ran.record.state, ran.record.previous_image.as_deref()),
        (RolloutState::Unchanged, Some(v1.as_str()))
    );
    assert!(
        ran.record.finished_at.is_some(),
        "unchanged ends the rollout"
    );
    assert!(
        ran.notes.iter().any(|n| n.contains("the same digest")),
        "{:?}",
        ran.notes
    );
}

#[tokio::test]
async fn a_different_digest_under_a_new_tag_is_still_rolled_out() {
    let (v1, v2) = (pinned("v1", "aaaa"), pinned("v2", "bbbb"));

    let ran = run_on(running(&v1), None, &v2).await;

    assert_eq!(ran.outcome, Outcome::Deployed { image: v2 });
    assert_eq!(ran.patches, 1);
    assert!(ran.annotated.is_empty(), "{:?}", ran.annotated);
    assert_eq!(ran.record.state, RolloutState::Deployed);
}

#[tokio::test]
async fn a_rollout_recorded_as_unchanged_ends_unchanged_after_a_restart_sending_nothing() {
    let (v1, v2) = (pinned("v1", "aaaa"), pinned("v2", "aaaa"));

    let ran = run_on(running(&v1), Some((RolloutState::Unchanged, 1)), &v2).await;

    assert_eq!(ran.outcome, Outcome::Unchanged { running: v1 });
    assert_eq!((ran.patches, ran.annotated.len()), (0, 0));
    assert_eq!(ran.record.state, RolloutState::Unchanged);
}

/// Killed after the annotations were sent but before the end was recorded: sending them
/// again is harmless, and the rollout still ends unchanged.
#[tokio::test]
async fn an_unchanged_rollout_recorded_as_planned_annotates_again_and_ends_unchanged() {
    let (v1, v2) = (pinned("v1", "aaaa"), pinned("v2", "aaaa"));

    let ran = run_on(running(&v1), Some((RolloutState::Planned, 1)), &v2).await;

    assert_eq!(ran.outcome, Outcome::Unchanged { running: v1 });
    assert_eq!((ran.patches, ran.annotated.len()), (0, 1));
    assert_eq!(ran.record.state, RolloutState::Unchanged);
}

#[tokio::test]
async fn an_api_server_that_stops_answering_mid_rollout_is_waited_for_and_the_change_is_sent_once()
{
    let fake = Fake {
        outage_after_patch: 2,
        ..fake(0, None)
    };
    let (outcome, notes, patches, record) = deploy_on(fake).await;
    assert!(matches!(outcome, Outcome::Deployed { .. }), "{outcome:?}");
    assert_eq!(patches, 1, "following again never patches again");
    assert_eq!(record.state, RolloutState::Deployed);
    let said = notes.join("\n");
    assert_eq!(
        said.matches("waiting for it until the rollout's deadline")
            .count(),
        1,
        "the outage is said once: {said}"
    );
    assert!(said.contains("answers again"), "{said}");
}
