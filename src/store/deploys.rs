//! Rollouts as the deploy code records them, step by step, so that a process killed at any
//! point resumes where it was: `planned` (previous image recorded) → `patched` (the change is
//! on the server, with the generation it produced) → `deployed`, or → `rolling_back` →
//! `rolled_back`; `failed` and `skipped` end it too. Calls block: use [`Jobs::call`].

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::jobs::{now_text, Jobs};
use super::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployRow {
    pub id: i64,
    /// None for a rollback by hand.
    pub job: Option<i64>,
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
    /// `deploy` or `rollback`.
    pub kind: String,
    pub state: String,
    pub reason: Option<String>,
    pub created_at: String,
    pub patched_at: Option<String>,
    pub finished_at: Option<String>,
}

impl DeployRow {
    pub fn is_finished(&self) -> bool {
        FINISHED.contains(&self.state.as_str())
    }
}

/// A rollout as first recorded: what, where, and (once the Deployment was read) what ran
/// before; or, for one that ends before any change, how it ended.
#[derive(Debug, Clone)]
pub struct NewDeploy {
    pub job: Option<i64>,
    pub project: String,
    pub service: String,
    pub environment: String,
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    pub tag: String,
    pub pushed_at: String,
    pub image: String,
    /// `deploy` or `rollback`.
    pub kind: &'static str,
    pub state: &'static str,
    pub previous_image: Option<String>,
    pub generation: Option<i64>,
    pub reason: Option<String>,
}

const FINISHED: [&str; 4] = ["deployed", "rolled_back", "failed", "skipped"];

/// A step forward: the new state, and what became known on the way (None keeps the value).
#[derive(Debug, Clone, Default)]
pub struct DeployUpdate {
    pub state: &'static str,
    pub previous_image: Option<String>,
    pub generation: Option<i64>,
    pub reason: Option<String>,
    pub patched: bool,
}

const COLUMNS: &str = "id, job, project, service, environment, namespace, deployment, container,
    tag, pushed_at, image, previous_image, generation, kind, state, reason, created_at,
    patched_at, finished_at";

fn deploy_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<DeployRow> {
    Ok(DeployRow {
        id: row.get(0)?,
        job: row.get(1)?,
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
        kind: row.get(13)?,
        state: row.get(14)?,
        reason: row.get(15)?,
        created_at: row.get(16)?,
        patched_at: row.get(17)?,
        finished_at: row.get(18)?,
    })
}

impl Jobs {
    /// The live rollout of this job's service to this environment, if one was started.
    pub fn deploy_of(
        &self,
        job: i64,
        service: &str,
        environment: &str,
    ) -> Result<Option<DeployRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM deploys
                     WHERE job = ?1 AND service = ?2 AND environment = ?3 AND retired = 0"
                ),
                params![job, service, environment],
                deploy_row,
            )
            .optional()?)
    }

    pub fn plan_deploy(&self, new: &NewDeploy) -> Result<i64, StoreError> {
        let now = now_text();
        let finished = FINISHED.contains(&new.state).then_some(now.as_str());
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deploys (job, project, service, environment, namespace, deployment,
                container, tag, pushed_at, image, kind, state, previous_image, generation, reason,
                created_at, finished_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                new.job,
                new.project,
                new.service,
                new.environment,
                new.namespace,
                new.deployment,
                new.container,
                new.tag,
                new.pushed_at,
                new.image,
                new.kind,
                new.state,
                new.previous_image,
                new.generation,
                new.reason,
                now,
                finished
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub fn update_deploy(&self, id: i64, update: &DeployUpdate) -> Result<(), StoreError> {
        let now = now_text();
        let finished = FINISHED.contains(&update.state).then_some(now.as_str());
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
                update.state,
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
    /// that left an image running.
    pub fn in_place(
        &self,
        environment: &str,
        namespace: &str,
        deployment: &str,
    ) -> Result<Option<DeployRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM deploys
                     WHERE environment = ?1 AND namespace = ?2 AND deployment = ?3
                       AND state = 'deployed'
                     ORDER BY finished_at DESC, id DESC LIMIT 1"
                ),
                params![environment, namespace, deployment],
                deploy_row,
            )
            .optional()?)
    }

    pub fn deploys_of_job(&self, job: i64) -> Result<Vec<DeployRow>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM deploys WHERE job = ?1 AND retired = 0 ORDER BY service, environment"
        ))?;
        let rows = statement.query_map([job], deploy_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
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
        let rows = statement.query_map(params![project, service, limit], deploy_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
