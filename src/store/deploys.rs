//! Rollouts as the deploy code records them, step by step, so that a process killed at any
//! point resumes where it was: `planned` (previous image recorded) → `patched` (the change is
//! on the server, with the generation it produced) → `deployed`, or → `rolling_back` →
//! `rolled_back`; `failed` and `skipped` end it too, and so does `unchanged` (the Deployment
//! already ran the digest: only its annotations were changed). Calls block: use [`Jobs::call`].
//!
//! The states and causes are types everywhere else; their stored text is mapped here only,
//! and a stored value deploybot does not write is an error naming its column, never a guess.

use rusqlite::{params, Row};
use serde::{Serialize, Serializer};

use super::jobs::{now_text, Jobs};
use super::StoreError;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    /// Recorded with the image that ran before, before the change is sent.
    Planned,
    /// The change is on the server, with the generation it produced.
    Patched,
    Deployed,
    /// The previous image is being put back.
    RollingBack,
    RolledBack,
    Failed,
    /// Not rolled out, by policy (a newer version is in place).
    Skipped,
    /// The Deployment already ran the image's digest: the release was written on its own
    /// annotations, its pod template left alone (no pod restarted).
    Unchanged,
}

impl RolloutState {
    const ALL: [RolloutState; 8] = [
        RolloutState::Planned,
        RolloutState::Patched,
        RolloutState::Deployed,
        RolloutState::RollingBack,
        RolloutState::RolledBack,
        RolloutState::Failed,
        RolloutState::Skipped,
        RolloutState::Unchanged,
    ];

    /// The stored text, which pages, the command line and the API show too.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Planned => "planned",
            RolloutState::Patched => "patched",
            RolloutState::Deployed => "deployed",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Failed => "failed",
            RolloutState::Skipped => "skipped",
            RolloutState::Unchanged => "unchanged",
        }
    }

    /// Whether the rollout has ended (nothing more is done for it).
    fn is_finished(self) -> bool {
        matches!(
            self,
            RolloutState::Deployed
                | RolloutState::RolledBack
                | RolloutState::Failed
                | RolloutState::Skipped
                | RolloutState::Unchanged
        )
    }

    fn from_stored(text: String) -> Result<RolloutState, UnexpectedValue> {
        match Self::ALL.into_iter().find(|state| state.as_str() == text) {
            Some(state) => Ok(state),
            None => Err(UnexpectedValue::new(text, &Self::ALL.map(Self::as_str))),
        }
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RolloutState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Why a rollout ran; stored as the `job` and `kind` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCause {
    /// A job releasing what it built (`kind` `deploy`).
    Release { job: i64 },
    /// A person's rollback, `deploybot rollback` or `POST /api/v1/rollback` (`kind`
    /// `rollback`, no job).
    ByHand,
}

impl RolloutCause {
    /// The job that rolled out, if a job did.
    pub fn job(self) -> Option<i64> {
        match self {
            RolloutCause::Release { job } => Some(job),
            RolloutCause::ByHand => None,
        }
    }

    /// The stored `kind`: `deploy` or `rollback`.
    pub fn kind(self) -> &'static str {
        match self {
            RolloutCause::Release { .. } => "deploy",
            RolloutCause::ByHand => "rollback",
        }
    }

    /// A release always has its job and a rollback by hand never has one; any other pair is
    /// an error on the column that breaks it.
    fn from_stored(job: Option<i64>, kind: String) -> Result<RolloutCause, StoreError> {
        let unknown = |value: String| StoreError::Column {
            column: "deploys.kind",
            source: UnexpectedValue::new(value, &["deploy", "rollback"]),
        };
        let job_column = |value: String, expected: &str| StoreError::Column {
            column: "deploys.job",
            source: UnexpectedValue::new(value, &[expected]),
        };
        match (kind.as_str(), job) {
            ("deploy", Some(job)) => Ok(RolloutCause::Release { job }),
            ("rollback", None) => Ok(RolloutCause::ByHand),
            ("deploy", None) => Err(job_column("NULL".into(), "a job's id for kind deploy")),
            ("rollback", Some(job)) => Err(job_column(job.to_string(), "NULL for kind rollback")),
            _ => Err(unknown(kind)),
        }
    }
}

/// A stored value deploybot does not write (a newer version's, or an edit by hand): the cause
/// of [`StoreError::Column`].
#[derive(Debug, thiserror::Error)]
#[error("unexpected value \"{value}\" (deploybot writes {expected})")]
pub struct UnexpectedValue {
    value: String,
    expected: String,
}

impl UnexpectedValue {
    pub(super) fn new(value: String, expected: &[&str]) -> UnexpectedValue {
        UnexpectedValue {
            value,
            expected: expected.join(", "),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRow {
    pub id: i64,
    pub cause: RolloutCause,
    pub project: String,
    pub service: String,
    pub environment: String,
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    pub tag: String,
    pub pushed_at: String,
    /// The image this rollout puts in place (pinned by digest).
    pub image: String,
    /// What ran before, recorded before the change was sent.
    pub previous_image: Option<String>,
    pub generation: Option<i64>,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub created_at: String,
    pub patched_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A rollout as the API shows it (`Deploy` in `openapi.yaml`): the cause as its two columns,
/// `job` and `kind`, the fields in the order they always had.
#[derive(Serialize)]
struct DeployJson<'a> {
    id: i64,
    job: Option<i64>,
    project: &'a str,
    service: &'a str,
    environment: &'a str,
    namespace: &'a str,
    deployment: &'a str,
    container: &'a str,
    tag: &'a str,
    pushed_at: &'a str,
    image: &'a str,
    previous_image: Option<&'a str>,
    generation: Option<i64>,
    kind: &'static str,
    state: &'static str,
    reason: Option<&'a str>,
    created_at: &'a str,
    patched_at: Option<&'a str>,
    finished_at: Option<&'a str>,
}

impl Serialize for DeployRow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DeployJson {
            id: self.id,
            job: self.cause.job(),
            project: &self.project,
            service: &self.service,
            environment: &self.environment,
            namespace: &self.namespace,
            deployment: &self.deployment,
            container: &self.container,
            tag: &self.tag,
            pushed_at: &self.pushed_at,
            image: &self.image,
            previous_image: self.previous_image.as_deref(),
            generation: self.generation,
            kind: self.cause.kind(),
            state: self.state.as_str(),
            reason: self.reason.as_deref(),
            created_at: &self.created_at,
            patched_at: self.patched_at.as_deref(),
            finished_at: self.finished_at.as_deref(),
        }
        .serialize(serializer)
    }
}

/// A rollout as first recorded: what, where, and (once the Deployment was read) what ran
/// before; or, for one that ends before any change, how it ended.
#[derive(Debug, Clone)]
pub(crate) struct NewDeploy {
    pub cause: RolloutCause,
    pub project: String,
    pub service: String,
    pub environment: String,
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    pub tag: String,
    pub pushed_at: String,
    pub image: String,
    pub state: RolloutState,
    pub previous_image: Option<String>,
    pub generation: Option<i64>,
    pub reason: Option<String>,
}

/// A step forward: the new state, and what became known on the way (None keeps the value).
#[derive(Debug, Clone)]
pub(crate) struct DeployUpdate {
    pub state: RolloutState,
    pub previous_image: Option<String>,
    pub generation: Option<i64>,
    pub reason: Option<String>,
    pub patched: bool,
}

impl DeployUpdate {
    /// A step to `state` and nothing else learnt.
    pub(crate) fn to(state: RolloutState) -> DeployUpdate {
        DeployUpdate {
            state,
            previous_image: None,
            generation: None,
            reason: None,
            patched: false,
        }
    }
}

const COLUMNS: &str = "id, job, project, service, environment, namespace, deployment, container,
    tag, pushed_at, image, previous_image, generation, kind, state, reason, created_at,
    patched_at, finished_at";

fn deploy_row(row: &Row<'_>) -> Result<DeployRow, StoreError> {
    let cause = RolloutCause::from_stored(row.get(1)?, row.get(13)?)?;
    let state = RolloutState::from_stored(row.get(14)?).map_err(|source| StoreError::Column {
        column: "deploys.state",
        source,
    })?;
    Ok(DeployRow {
        id: row.get(0)?,
        cause,
        project: row.get(2)?,
        service: row.get(3)?,
        environment: row.get(4)?,
        namespace: row.get(5)?,
        deployment: row.get(6)?,
        container: row.get(7)?,
        tag: row.get(8)?,
        pushed_at: row.get(9)?,
        image: row.get(10)?,
        previous_image: row.get(11)?,
        generation: row.get(12)?,
        state,
        reason: row.get(15)?,
        created_at: row.get(16)?,
        patched_at: row.get(17)?,
        finished_at: row.get(18)?,
    })
}

/// The first of `rows`, if any.
fn first(
    conn: &rusqlite::Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<DeployRow>, StoreError> {
    let mut statement = conn.prepare(sql)?;
    let mut rows = statement.query_and_then(params, deploy_row)?;
    rows.next().transpose()
}

impl Jobs {
    /// The live rollout of this job's service to this environment, if one was started.
    pub(crate) fn deploy_of(
        &self,
        job: i64,
        service: &str,
        environment: &str,
    ) -> Result<Option<DeployRow>, StoreError> {
        first(
            &self.conn(),
            &format!(
                "SELECT {COLUMNS} FROM deploys
                 WHERE job = ?1 AND service = ?2 AND environment = ?3 AND retired = 0"
            ),
            params![job, service, environment],
        )
    }

    pub(crate) fn plan_deploy(&self, new: &NewDeploy) -> Result<i64, StoreError> {
        let now = now_text();
        let finished = new.state.is_finished().then_some(now.as_str());
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deploys (job, project, service, environment, namespace, deployment,
                container, tag, pushed_at, image, kind, state, previous_image, generation, reason,
                created_at, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                new.cause.job(),
                new.project,
                new.service,
                new.environment,
                new.namespace,
                new.deployment,
                new.container,
                new.tag,
                new.pushed_at,
                new.image,
                new.cause.kind(),
                new.state.as_str(),
                new.previous_image,
                new.generation,
                new.reason,
                now,
                finished
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub(crate) fn update_deploy(&self, id: i64, update: &DeployUpdate) -> Result<(), StoreError> {
        let now = now_text();
        let finished = update.state.is_finished().then_some(now.as_str());
        let patched = update.patched.then_some(now.as_str());
        self.conn().execute(
            "UPDATE deploys SET state = ?2,
                previous_image = COALESCE(?3, previous_image),
                generation = COALESCE(?4, generation),
                reason = COALESCE(?5, reason),
                patched_at = COALESCE(?6, patched_at),
                finished_at = ?7
             WHERE id = ?1",
            params![
                id,
                update.state.as_str(),
                update.previous_image,
                update.generation,
                update.reason,
                patched,
                finished
            ],
        )?;
        Ok(())
    }

    /// What is in place on a Deployment by deploybot's record: its newest finished rollout
    /// that left an image running (`deployed`, or `unchanged`: the release that now names an
    /// image already running).
    pub(crate) fn in_place(
        &self,
        environment: &str,
        namespace: &str,
        deployment: &str,
    ) -> Result<Option<DeployRow>, StoreError> {
        first(
            &self.conn(),
            &format!(
                "SELECT {COLUMNS} FROM deploys
                 WHERE environment = ?1 AND namespace = ?2 AND deployment = ?3
                   AND state IN (?4, ?5)
                 ORDER BY finished_at DESC, id DESC LIMIT 1"
            ),
            params![
                environment,
                namespace,
                deployment,
                RolloutState::Deployed.as_str(),
                RolloutState::Unchanged.as_str()
            ],
        )
    }

    pub fn deploys_of_job(&self, job: i64) -> Result<Vec<DeployRow>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM deploys WHERE job = ?1 AND retired = 0 ORDER BY service, environment"
        ))?;
        let rows = statement.query_and_then([job], deploy_row)?;
        rows.collect()
    }

    /// A service's rollouts, newest first (for rollbacks by hand).
    pub fn deploy_history(
        &self,
        project: &str,
        service: &str,
        limit: u32,
    ) -> Result<Vec<DeployRow>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM deploys WHERE project = ?1 AND service = ?2
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = statement.query_and_then(params![project, service, limit], deploy_row)?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(jobs: &Jobs, state: RolloutState) -> NewDeploy {
        let job = jobs.insert_running_job_for_tests("myevents").unwrap();
        NewDeploy {
            cause: RolloutCause::Release { job },
            project: "myevents".into(),
            service: "web".into(),
            environment: "production".into(),
            namespace: "default".into(),
            deployment: "web".into(),
            container: "api".into(),
            tag: "v2".into(),
            pushed_at: "2026-01-01T00:00:00.000Z".into(),
            image: "web:2".into(),
            state,
            previous_image: Some("web:1".into()),
            generation: None,
            reason: None,
        }
    }

    /// Writes `value` into `column` of every rollout, past the schema's checks, as a newer
    /// deploybot or a person with `sqlite3` could.
    fn overwrite(jobs: &Jobs, column: &str, value: rusqlite::types::Value) {
        let conn = jobs.conn();
        conn.pragma_update(None, "ignore_check_constraints", true)
            .unwrap();
        conn.execute(&format!("UPDATE deploys SET {column} = ?1"), [value])
            .unwrap();
    }

    #[test]
    fn a_rollout_reads_back_with_the_state_and_cause_it_was_recorded_with() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open_migrated(dir.path()).unwrap();
        let new = release(&jobs, RolloutState::Planned);
        let id = jobs.plan_deploy(&new).unwrap();
        jobs.update_deploy(id, &DeployUpdate::to(RolloutState::RollingBack))
            .unwrap();

        let history = jobs.deploy_history("myevents", "web", 10).unwrap();

        assert_eq!(
            (history[0].cause, history[0].state),
            (new.cause, RolloutState::RollingBack)
        );
        assert!(!history[0].state.is_finished());
    }

    #[test]
    fn an_unknown_stored_rollout_state_is_an_error_naming_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open_migrated(dir.path()).unwrap();
        let new = release(&jobs, RolloutState::Deployed);
        jobs.plan_deploy(&new).unwrap();
        overwrite(&jobs, "state", "paused".to_owned().into());

        let error = jobs.deploy_history("myevents", "web", 10).unwrap_err();

        assert!(
            matches!(
                error,
                StoreError::Column {
                    column: "deploys.state",
                    ..
                }
            ),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("deploys.state") && text.contains("\"paused\""),
            "{text}"
        );
    }

    #[test]
    fn a_release_stored_without_its_job_is_an_error_naming_the_job_column() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open_migrated(dir.path()).unwrap();
        let new = release(&jobs, RolloutState::Deployed);
        jobs.plan_deploy(&new).unwrap();
        overwrite(&jobs, "job", rusqlite::types::Value::Null);

        let error = jobs.deploy_history("myevents", "web", 10).unwrap_err();

        assert!(error.to_string().contains("deploys.job"), "{error}");
    }

    #[test]
    fn the_json_of_a_rollout_keeps_its_cause_as_job_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open_migrated(dir.path()).unwrap();
        let new = NewDeploy {
            cause: RolloutCause::ByHand,
            ..release(&jobs, RolloutState::RolledBack)
        };
        jobs.plan_deploy(&new).unwrap();
        let row = jobs
            .deploy_history("myevents", "web", 10)
            .unwrap()
            .remove(0);

        let json = serde_json::to_value(&row).unwrap();

        assert_eq!(
            (&json["job"], &json["kind"], &json["state"]),
            (
                &serde_json::Value::Null,
                &serde_json::json!("rollback"),
                &serde_json::json!("rolled_back")
            )
        );
        assert_eq!(json.as_object().unwrap().len(), 19, "{json}");
        let text = serde_json::to_string(&row).unwrap();
        assert!(
            text.contains(r#""job":null,"project":"myevents""#)
                && text.contains(r#""kind":"rollback","state":"rolled_back""#),
            "in the order they always had: {text}"
        );
    }
}
