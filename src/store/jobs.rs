//! Jobs as the worker sees them: claiming with a lease, recording stages, images and logs, and
//! finishing. The worker writes through this connection of its own (SQLite serialises it with
//! intake's writer; both keep their transactions short). Calls block: use [`Jobs::call`].

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use time::OffsetDateTime;

use super::states::{self, column_error};
use super::{connection::open_connection, db_path, timestamp, StoreError};
use crate::domain::{CommitSha, GitRef, JobState, RefKind, StageName, StageState};

/// A job this worker holds the lease on.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub project: String,
    pub git_ref: GitRef,
    pub sha: CommitSha,
    pub attempt: i64,
    /// Which claim of the job this is: every later write for it checks the job still carries
    /// this epoch, so a worker whose job was claimed again (a lapsed lease) writes nothing.
    pub epoch: i64,
    /// The stored `PushEvent` JSON of the delivery that queued the job.
    pub event_json: String,
    /// When the job was queued (RFC 3339).
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub project: String,
    pub git_ref: String,
    pub sha: String,
    pub state: JobState,
    pub attempt: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// Its push was recovered: no delivery of it ever arrived (see `recovery/`).
    pub recovered: bool,
    /// The pull request it builds, for a job of a pull request's head.
    pub pull: Option<super::PullInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageRow {
    pub service: String,
    pub stage: StageName,
    pub state: StageState,
    pub exit_code: Option<i64>,
    pub detail: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRow {
    pub service: String,
    pub reference: String,
    pub digest: Option<String>,
}

/// A job with what it did, per service and stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobDetail {
    pub job: JobRow,
    pub stages: Vec<StageRow>,
    pub images: Vec<ImageRow>,
    pub deploys: Vec<super::DeployRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogChunk {
    pub id: i64,
    pub service: String,
    pub stage: String,
    pub text: String,
}

/// An image deploybot built, as its record says: the engine's id for it, and where it was
/// pushed (`repository@digest`), if it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub image_id: String,
    pub pushed: Option<String>,
}

/// A stage's new state, and what goes with it.
#[derive(Debug, Clone, Copy)]
pub struct StageUpdate<'a> {
    /// The service, or `-` for the job's own stages (checkout, pipeline).
    pub service: &'a str,
    pub stage: StageName,
    pub state: StageState,
    pub exit_code: Option<i64>,
    pub detail: Option<&'a str>,
}

impl<'a> StageUpdate<'a> {
    /// `stage` of `service` is now `state` (no exit code, no detail).
    pub fn new(service: &'a str, stage: StageName, state: StageState) -> StageUpdate<'a> {
        StageUpdate {
            service,
            stage,
            state,
            exit_code: None,
            detail: None,
        }
    }
}

pub struct Jobs {
    conn: Mutex<Connection>,
    owner: String,
    /// The lease epoch of every job this instance claimed and has not finished.
    held: Mutex<std::collections::HashMap<i64, i64>>,
}

pub(super) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(super) fn now_text() -> String {
    timestamp(OffsetDateTime::now_utc())
}

impl Jobs {
    /// `owner` names this process in leases (a restart is a new owner).
    pub fn open(data_dir: &Path, owner: &str) -> Result<Jobs, StoreError> {
        Ok(Jobs {
            conn: Mutex::new(open_connection(&db_path(data_dir))?),
            owner: owner.to_owned(),
            held: Mutex::default(),
        })
    }

    /// Runs `f` on a blocking thread: every call here waits on SQLite, which async code must
    /// not do on its own threads.
    pub async fn call<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        f: impl FnOnce(&Jobs) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let jobs = self.clone();
        tokio::task::spawn_blocking(move || f(&jobs)).await?
    }

    /// A store of its own in `data_dir`, schema included (unit tests of code that records).
    #[cfg(test)]
    pub(crate) fn open_migrated(data_dir: &Path) -> Result<Jobs, StoreError> {
        let mut conn = open_connection(&db_path(data_dir))?;
        super::schema::migrate(&mut conn)?;
        Ok(Jobs {
            conn: Mutex::new(conn),
            owner: "test".into(),
            held: Mutex::default(),
        })
    }

    /// A running job of `project` with its delivery (unit tests of code that records per job).
    #[cfg(test)]
    pub(crate) fn insert_running_job_for_tests(&self, project: &str) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deliveries (project, outcome, received_at) VALUES (?1, 'queued', ?2)",
            params![project, now_text()],
        )?;
        let delivery = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO jobs (delivery, project, git_ref, ref_kind, ref_name, sha, state,
                created_at, updated_at)
             VALUES (?1, ?2, 'refs/tags/v2', 'tag', 'v2', '0000000000000000000000000000000000000000',
                'running', ?3, ?3)",
            params![delivery, project, now_text()],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a write for a job this instance claimed whose lease epoch has moved on (it
    /// was claimed again: this worker lost it). Jobs this instance never claimed (tools,
    /// tests) are not checked.
    fn check_lease(&self, conn: &Connection, job: i64) -> Result<(), StoreError> {
        let Some(epoch) = self.held().get(&job).copied() else {
            return Ok(());
        };
        let current: Option<i64> = conn
            .query_row("SELECT lease_epoch FROM jobs WHERE id = ?1", [job], |row| {
                row.get(0)
            })
            .optional()?;
        if current == Some(epoch) {
            Ok(())
        } else {
            Err(StoreError::LeaseLost { job })
        }
    }

    /// Queues a job of `project` for `git_ref` at `sha`, its delivery carrying `event_json`
    /// (unit tests of the worker).
    #[cfg(test)]
    pub(crate) fn queue_for_tests(
        &self,
        project: &str,
        git_ref: &GitRef,
        sha: &CommitSha,
        event_json: &str,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO deliveries (project, outcome, received_at, event_json)
             VALUES (?1, 'queued', ?2, ?3)",
            params![project, now_text(), event_json],
        )?;
        let delivery = conn.last_insert_rowid();
        conn.execute(
            "INSERT INTO jobs (delivery, project, git_ref, ref_kind, ref_name, sha, state,
                created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7)",
            params![
                delivery,
                project,
                git_ref.as_ref(),
                git_ref.kind().as_str(),
                git_ref.name(),
                sha.as_ref(),
                now_text()
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Makes a running job's lease look long lapsed (a worker that stopped renewing it, or a
    /// forward step of the wall clock), and says who holds it (unit tests of the worker).
    #[cfg(test)]
    pub(crate) fn lapse_lease_for_tests(&self, job: i64) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        conn.execute("UPDATE jobs SET lease_until = 0 WHERE id = ?1", [job])?;
        Ok(
            conn.query_row("SELECT lease_owner FROM jobs WHERE id = ?1", [job], |row| {
                row.get(0)
            })?,
        )
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding this lock would be a bug in a short SQL call; the data
        // itself is in SQLite, so carrying on with the inner value is safe.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the oldest job that is queued, or running under another owner's lease that has
    /// expired or belongs to a process that is gone (`reclaim_all_running` at startup), and
    /// leases it under a new epoch. A job this process runs is never taken again by it, however
    /// the wall clock moves: its own keeper renews it or learns it is lost.
    pub fn claim_next(&self, lease: Duration) -> Result<Option<ClaimedJob>, StoreError> {
        let conn = self.conn();
        let now = now_unix();
        let claimed = conn
            .query_row(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?1,
                        lease_until = ?2, lease_epoch = lease_epoch + 1,
                        started_at = COALESCE(started_at, ?3), updated_at = ?3
                 WHERE id = (SELECT id FROM jobs
                             WHERE state = 'queued'
                                OR (state = 'running' AND lease_until < ?4
                                    AND lease_owner IS NOT ?1)
                             ORDER BY id LIMIT 1)
                 RETURNING id, project, git_ref, sha, attempt, delivery, created_at, lease_epoch",
                params![self.owner, now + lease.as_secs() as i64, now_text(), now],
                |row| {
                    Ok((
                        ClaimedJob {
                            id: row.get(0)?,
                            project: row.get(1)?,
                            git_ref: parsed(row, 2, GIT_REF, GitRef::parse)?,
                            sha: parsed(row, 3, SHA, CommitSha::parse)?,
                            attempt: row.get(4)?,
                            epoch: row.get(7)?,
                            event_json: String::new(),
                            created_at: row.get(6)?,
                        },
                        row.get::<_, i64>(5)?,
                    ))
                },
            )
            .optional()
            .map_err(column_error)?;
        let Some((mut job, delivery)) = claimed else {
            return Ok(None);
        };
        job.event_json = conn.query_row(
            "SELECT COALESCE(event_json, '{}') FROM deliveries WHERE id = ?1",
            [delivery],
            |row| row.get(0),
        )?;
        self.held().insert(job.id, job.epoch);
        Ok(Some(job))
    }

    /// At startup: every job still `running` belonged to a process that died; expire its
    /// lease so `claim_next` takes it again (attempt + 1). Returns their ids.
    pub fn reclaim_all_running(&self) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "UPDATE jobs SET lease_until = 0 WHERE state = 'running' AND lease_owner IS NOT ?1
             RETURNING id",
        )?;
        let ids = statement.query_map([&self.owner], |row| row.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    }

    /// Extends the lease; false if the job is no longer ours (superseded, reclaimed).
    pub fn renew(&self, job: i64, lease: Duration) -> Result<bool, StoreError> {
        let epoch = self.held().get(&job).copied();
        let changed = self.conn().execute(
            "UPDATE jobs SET lease_until = ?1
             WHERE id = ?2 AND state = 'running' AND lease_owner = ?3
               AND (?4 IS NULL OR lease_epoch = ?4)",
            params![now_unix() + lease.as_secs() as i64, job, self.owner, epoch],
        )?;
        Ok(changed == 1)
    }

    /// Whether a newer push to the same branch (or pull request) is waiting or running: then
    /// this job's work is stale. Tags are never superseded.
    pub fn is_superseded(&self, job: &ClaimedJob) -> Result<bool, StoreError> {
        if job.git_ref.kind() == RefKind::Tag {
            return Ok(false);
        }
        let newer: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM jobs WHERE project = ?1 AND git_ref = ?2 AND id > ?3
               AND state IN ('waiting', 'queued', 'running', 'success', 'failed', 'deployed',
                             'rolled_back')",
            params![job.project, job.git_ref.as_ref(), job.id],
            |row| row.get(0),
        )?;
        Ok(newer > 0)
    }

    /// Sets a stage (nothing else goes with it).
    pub fn set_stage(&self, job: i64, update: &StageUpdate<'_>) -> Result<(), StoreError> {
        self.set_stage_reporting(job, update, &[])
    }

    /// Sets a stage and queues the reports it causes, in one transaction.
    pub fn set_stage_reporting(
        &self,
        job: i64,
        update: &StageUpdate<'_>,
        reports: &[super::NewReport],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        self.check_lease(&tx, job)?;
        upsert_stage(&tx, job, update)?;
        super::outbox::insert(&tx, reports, Some(job))?;
        tx.commit()?;
        Ok(())
    }

    /// A push done: its digest, the push stage's success and the reports it causes, in one
    /// transaction (one fsync between the push and what comes next).
    pub fn record_push(
        &self,
        job: i64,
        service: &str,
        reference: &str,
        digest: &str,
        reports: &[super::NewReport],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        self.check_lease(&tx, job)?;
        upsert_image(&tx, job, service, reference, Some(digest))?;
        // The first digest of a tag stays its digest: a later push of it is refused upstream.
        tx.execute(
            "INSERT INTO pushed_tags (reference, digest, sha, job, pushed_at)
             SELECT ?1, ?2, sha, id, ?3 FROM jobs WHERE id = ?4
             ON CONFLICT (reference) DO NOTHING",
            params![reference, digest, now_text(), job],
        )?;
        let pushed = format!("{reference}@{digest}");
        let update = StageUpdate {
            detail: Some(&pushed),
            ..StageUpdate::new(service, StageName::Push, StageState::Success)
        };
        upsert_stage(&tx, job, &update)?;
        super::outbox::insert(&tx, reports, Some(job))?;
        tx.commit()?;
        Ok(())
    }

    pub fn append_log(
        &self,
        job: i64,
        service: &str,
        stage: &str,
        text: &str,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        self.check_lease(&conn, job)?;
        conn.execute(
            "INSERT INTO log_chunks (job, service, stage, text, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![job, service, stage, text, now_text()],
        )?;
        Ok(())
    }

    pub fn record_image(
        &self,
        job: i64,
        service: &str,
        reference: &str,
        digest: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        self.check_lease(&conn, job)?;
        upsert_image(&conn, job, service, reference, digest)
    }

    /// `reference@digest` of what `job` pushed for `service`, if it pushed.
    pub fn pushed_image(&self, job: i64, service: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT reference || '@' || digest FROM images
                 WHERE job = ?1 AND service = ?2 AND digest IS NOT NULL",
                params![job, service],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// The digest an image reference was first pushed with, and the commit it was built
    /// from: a retry reuses it, and a moved tag is refused (pushed tags are immutable).
    pub fn pushed_digest(&self, reference: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT digest, sha FROM pushed_tags WHERE reference = ?1",
                [reference],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    /// The image deploybot built for `project` from exactly these inputs (a digest of them),
    /// if it recorded one: the only thing image reuse trusts.
    pub fn built_image(
        &self,
        project: &str,
        input: &str,
    ) -> Result<Option<BuiltImage>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT image_id, pushed FROM built_images WHERE project = ?1 AND input = ?2",
                params![project, input],
                |row| {
                    Ok(BuiltImage {
                        image_id: row.get(0)?,
                        pushed: row.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records that the image built for `project` from these inputs is in the registry as
    /// `pushed` (`repository@digest`).
    pub fn record_built_push(
        &self,
        project: &str,
        input: &str,
        pushed: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE built_images SET pushed = ?3 WHERE project = ?1 AND input = ?2",
            params![project, input, pushed],
        )?;
        Ok(())
    }

    /// Records the image `job` built for `project` from these inputs.
    pub fn record_built(
        &self,
        job: i64,
        project: &str,
        input: &str,
        image_id: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO built_images (project, input, image_id, job, built_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (project, input) DO UPDATE SET image_id = excluded.image_id,
                job = excluded.job, built_at = excluded.built_at, pushed = NULL",
            params![project, input, image_id, job, now_text()],
        )?;
        Ok(())
    }

    /// Forgets this instance's lease on a job it stops running without finishing it (left for
    /// the next start after a shutdown, or canceled by an operator).
    pub fn release(&self, job: i64) {
        self.held().remove(&job);
    }

    /// Ends the job (only if this process still holds it).
    pub fn finish(&self, job: i64, state: JobState, error: Option<&str>) -> Result<(), StoreError> {
        self.finish_reporting(job, state, error, &[])
    }

    /// Ends the job and queues the reports it causes, in one transaction; nothing is queued
    /// if the job was no longer ours.
    pub fn finish_reporting(
        &self,
        job: i64,
        state: JobState,
        error: Option<&str>,
        reports: &[super::NewReport],
    ) -> Result<(), StoreError> {
        let now = now_text();
        let epoch = self.held().remove(&job);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET state = ?1, error = ?2, finished_at = ?3, updated_at = ?3,
                lease_owner = NULL, lease_until = NULL
             WHERE id = ?4 AND state = 'running' AND lease_owner = ?5
               AND (?6 IS NULL OR lease_epoch = ?6)",
            params![state.as_str(), error, now, job, self.owner, epoch],
        )?;
        if changed == 1 {
            super::outbox::insert(&tx, reports, Some(job))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored `PushEvent` JSON of the delivery that queued `job`.
    pub fn event_json(&self, job: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT d.event_json FROM jobs j JOIN deliveries d ON d.id = j.delivery
                 WHERE j.id = ?1",
                [job],
                |row| row.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Queues reports for a job without changing it (a canceled job's final status).
    pub fn queue_reports(&self, job: i64, reports: &[super::NewReport]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        super::outbox::insert(&tx, reports, Some(job))?;
        tx.commit()?;
        Ok(())
    }

    /// Marks a job that was never started as superseded.
    /// Ends a job a newer push to its branch replaced, with the reports that says so.
    pub fn supersede(&self, job: i64, reports: &[super::NewReport]) -> Result<(), StoreError> {
        self.finish_reporting(
            job,
            JobState::Superseded,
            Some("a newer push to the same branch replaced it"),
            reports,
        )
    }

    pub fn list(&self, limit: u32) -> Result<Vec<JobRow>, StoreError> {
        self.list_filtered(limit, None, None, None)
    }

    /// Newest first, optionally of one project, in one state and/or of one kind of ref
    /// (pull requests, say).
    pub fn list_filtered(
        &self,
        limit: u32,
        project: Option<&str>,
        state: Option<JobState>,
        kind: Option<RefKind>,
    ) -> Result<Vec<JobRow>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_TABLES}
                 WHERE (?2 IS NULL OR project = ?2) AND (?3 IS NULL OR state = ?3)
                   AND (?4 IS NULL OR ref_kind = ?4)
                 ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = statement.query_map(
            params![
                limit,
                project,
                state.map(JobState::as_str),
                kind.map(RefKind::as_str)
            ],
            job_row,
        )?;
        rows.collect::<Result<_, _>>().map_err(column_error)
    }

    pub fn get(&self, id: i64) -> Result<Option<JobDetail>, StoreError> {
        let (job, stages, images) = {
            let conn = self.conn();
            let job = conn
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM {JOB_TABLES} WHERE id = ?1"),
                    [id],
                    job_row,
                )
                .optional()
                .map_err(column_error)?;
            let Some(job) = job else { return Ok(None) };
            let mut statement = conn.prepare(
            "SELECT service, stage, state, exit_code, detail, started_at, finished_at FROM stages
             WHERE job = ?1 ORDER BY service, id",
        )?;
            let stages = statement
                .query_map([id], |row| {
                    Ok(StageRow {
                        service: row.get(0)?,
                        stage: states::read(row, 1, "stages.stage")?,
                        state: states::read(row, 2, "stages.state")?,
                        exit_code: row.get(3)?,
                        detail: row.get(4)?,
                        started_at: row.get(5)?,
                        finished_at: row.get(6)?,
                    })
                })?
                .collect::<Result<_, _>>()
                .map_err(column_error)?;
            let mut statement = conn.prepare(
                "SELECT service, reference, digest FROM images WHERE job = ?1 ORDER BY service",
            )?;
            let images = statement
                .query_map([id], |row| {
                    Ok(ImageRow {
                        service: row.get(0)?,
                        reference: row.get(1)?,
                        digest: row.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            (job, stages, images)
        };
        let deploys = self.deploys_of_job(id)?;
        Ok(Some(JobDetail {
            job,
            stages,
            images,
            deploys,
        }))
    }

    /// Log chunks after `after` (a chunk id), optionally of one service.
    pub fn logs(
        &self,
        job: i64,
        service: Option<&str>,
        after: i64,
    ) -> Result<Vec<LogChunk>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT id, service, stage, text FROM log_chunks
             WHERE job = ?1 AND id > ?2 AND (?3 IS NULL OR service = ?3) ORDER BY id",
        )?;
        let rows = statement.query_map(params![job, after, service], |row| {
            Ok(LogChunk {
                id: row.get(0)?,
                service: row.get(1)?,
                stage: row.get(2)?,
                text: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Puts a finished job back in the queue as a new run: its stages are cleared, its
    /// attempts counted from none again, its log gets a line, its pushed digests stay (a
    /// re-run of the same commit reuses them). False if the job is queued or running.
    pub fn rerun(&self, job: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET state = 'queued', error = NULL, finished_at = NULL, lease_owner = NULL,
                lease_until = NULL, updated_at = ?2, attempt = 0,
                run_from = (SELECT COALESCE(MAX(id), 0) FROM outbox)
             WHERE id = ?1 AND state NOT IN ('waiting', 'queued', 'running')",
            params![job, now_text()],
        )?;
        if changed == 1 {
            tx.execute("DELETE FROM stages WHERE job = ?1", [job])?;
            // A re-run deploys again; the old rollouts stay as history.
            tx.execute("UPDATE deploys SET retired = 1 WHERE job = ?1", [job])?;
            note_action(&tx, job, "rerun", "re-run requested")?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// The payloads of the commit statuses this run of `job` queued, oldest first.
    pub fn run_statuses(&self, job: i64) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT payload FROM outbox
             WHERE job = ?1 AND channel = 'forge'
               AND id > (SELECT run_from FROM jobs WHERE id = ?1)
             ORDER BY id",
        )?;
        let rows = statement.query_map([job], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Lets a job waiting for approval (a pull request from a fork) run: it is queued, and its
    /// log says who let it. False if it was not waiting.
    pub fn approve(&self, job: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE jobs SET state = 'queued', updated_at = ?2 WHERE id = ?1 AND state = 'waiting'",
            params![job, now_text()],
        )?;
        if changed == 1 {
            note_action(&tx, job, "approve", "approved by an operator")?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Cancels a waiting, queued or running job. A running one stops at its worker's next
    /// lease check (its containers are killed). False if the job had already ended.
    pub fn cancel(&self, job: i64) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET state = 'canceled', error = 'canceled by an operator',
                finished_at = ?2, updated_at = ?2
             WHERE id = ?1 AND state IN ('waiting', 'queued', 'running')",
            params![job, now_text()],
        )?;
        Ok(changed == 1)
    }

    /// How many jobs are in each state.
    pub fn counts(&self) -> Result<Vec<(JobState, i64)>, StoreError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = statement.query_map([], |row| {
            Ok((states::read(row, 0, "jobs.state")?, row.get(1)?))
        })?;
        rows.collect::<Result<_, _>>().map_err(column_error)
    }

    pub fn state(&self, job: i64) -> Result<Option<JobState>, StoreError> {
        self.conn()
            .query_row("SELECT state FROM jobs WHERE id = ?1", [job], |row| {
                states::read(row, 0, "jobs.state")
            })
            .optional()
            .map_err(column_error)
    }
}

fn upsert_stage(conn: &Connection, job: i64, update: &StageUpdate<'_>) -> Result<(), StoreError> {
    let now = now_text();
    let (started, finished) = match update.state {
        StageState::Running => (Some(now.as_str()), None),
        StageState::Pending => (None, None),
        _ => (None, Some(now.as_str())),
    };
    conn.execute(
        "INSERT INTO stages (job, service, stage, state, exit_code, detail, started_at, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (job, service, stage) DO UPDATE SET state = excluded.state,
            exit_code = excluded.exit_code, detail = excluded.detail,
            started_at = COALESCE(stages.started_at, excluded.started_at),
            finished_at = excluded.finished_at",
        params![
            job,
            update.service,
            update.stage.as_str(),
            update.state.as_str(),
            update.exit_code,
            update.detail,
            started,
            finished
        ],
    )?;
    Ok(())
}

fn upsert_image(
    conn: &Connection,
    job: i64,
    service: &str,
    reference: &str,
    digest: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO images (job, service, reference, digest, pushed_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (job, service) DO UPDATE SET reference = excluded.reference,
            digest = COALESCE(excluded.digest, images.digest),
            pushed_at = COALESCE(excluded.pushed_at, images.pushed_at)",
        params![job, service, reference, digest, digest.map(|_| now_text())],
    )?;
    Ok(())
}

const GIT_REF: (&str, &str) = ("jobs.git_ref", "refs/heads/NAME or refs/tags/NAME");
const SHA: (&str, &str) = ("jobs.sha", "a commit id of 40 or 64 hex digits");

/// A stored identifier parsed again; one that does not parse is an error naming its column
/// and what deploybot writes there (`what`).
fn parsed<T>(
    row: &rusqlite::Row<'_>,
    index: usize,
    (column, what): (&'static str, &str),
    parse: impl FnOnce(&str) -> Result<T, crate::domain::ParseError>,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse(&text).map_err(|_| {
        let error = StoreError::Column {
            column,
            source: super::UnexpectedValue::new(text, &[what]),
        };
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}

/// An operator's action on `job`, as a line of its log.
fn note_action(
    tx: &rusqlite::Transaction<'_>,
    job: i64,
    action: &str,
    text: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO log_chunks (job, service, stage, text, at) VALUES (?1, '-', ?2, ?3, ?4)",
        params![job, action, format!("[deploybot] {text}\n"), now_text()],
    )?;
    Ok(())
}

/// What a `JobRow` is read from (`job_row` reads the columns in this order).
const JOB_COLUMNS: &str = "jobs.id, project, git_ref, sha, state, attempt, created_at, started_at,
    finished_at, error, (SELECT origin = 'recovered' FROM deliveries WHERE id = jobs.delivery),
    p.number, p.title, p.author, p.source_branch, p.target_branch, p.from_fork";
const JOB_TABLES: &str = "jobs LEFT JOIN pull_requests p ON p.job = jobs.id";

fn job_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let pull = super::PullInfo::read(row, 11)?;
    Ok(JobRow {
        id: row.get(0)?,
        project: row.get(1)?,
        git_ref: row.get(2)?,
        sha: row.get(3)?,
        state: states::read(row, 4, "jobs.state")?,
        attempt: row.get(5)?,
        created_at: row.get(6)?,
        started_at: row.get(7)?,
        finished_at: row.get(8)?,
        error: row.get(9)?,
        recovered: row.get::<_, Option<bool>>(10)?.unwrap_or(false),
        pull,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one queued job (id 1), opened by two workers.
    fn two_workers() -> (tempfile::TempDir, Jobs, Jobs) {
        let dir = tempfile::tempdir().unwrap();
        let first = Jobs::open_migrated(dir.path()).unwrap();
        first
            .conn()
            .execute_batch(
                "INSERT INTO deliveries (project, outcome, received_at) VALUES ('p', 'queued', 't');
                 INSERT INTO jobs (delivery, project, git_ref, ref_kind, ref_name, sha, state,
                                   created_at, updated_at)
                 VALUES (1, 'p', 'refs/tags/v1', 'tag', 'v1', 'abc0000000000000000000000000000000000000', 'queued', 't', 't');",
            )
            .unwrap();
        let first = Jobs {
            owner: "first".into(),
            ..first
        };
        let second = Jobs::open(dir.path(), "second").unwrap();
        (dir, first, second)
    }

    /// The lease looks long expired, as after a forward step of the wall clock.
    fn lapse(jobs: &Jobs) {
        jobs.conn()
            .execute("UPDATE jobs SET lease_until = 0", [])
            .unwrap();
    }

    #[test]
    fn a_worker_never_claims_its_own_running_job_again_however_the_clock_moves() {
        let (_dir, first, _second) = two_workers();
        let job = first.claim_next(Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!((job.id, job.attempt), (1, 1));
        lapse(&first);
        assert!(first.claim_next(Duration::from_secs(60)).unwrap().is_none());
    }

    #[test]
    fn a_worker_whose_job_was_claimed_again_writes_nothing_for_it() {
        let (_dir, first, second) = two_workers();
        let lost = first.claim_next(Duration::from_secs(60)).unwrap().unwrap();
        lapse(&first);
        let taken = second.claim_next(Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!(taken.epoch, lost.epoch + 1);

        let err = first
            .set_stage(
                1,
                &StageUpdate::new("web", StageName::Check, StageState::Running),
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseLost { job: 1 }), "{err}");
        assert!(first.append_log(1, "web", "check", "late\n").is_err());
        assert!(!first.renew(1, Duration::from_secs(60)).unwrap());
        first.finish(1, JobState::Failed, Some("late")).unwrap();
        assert_eq!(first.state(1).unwrap(), Some(JobState::Running));

        second
            .set_stage(
                1,
                &StageUpdate::new("web", StageName::Check, StageState::Running),
            )
            .unwrap();
        second.finish(1, JobState::Success, None).unwrap();
        assert_eq!(second.state(1).unwrap(), Some(JobState::Success));
    }

    #[test]
    fn a_tag_keeps_its_first_digest_through_a_rerun_that_builds_again() {
        let (_dir, jobs, _) = two_workers();
        jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
        jobs.record_push(1, "web", "r/web:v1", "sha256:first", &[])
            .unwrap();
        jobs.finish(1, JobState::Success, None).unwrap();
        assert!(jobs.rerun(1).unwrap());
        jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();

        // The re-run's image stage records the image it built, without a digest yet.
        jobs.record_image(1, "web", "r/web:v1", None).unwrap();

        assert_eq!(
            jobs.pushed_digest("r/web:v1").unwrap(),
            Some((
                "sha256:first".into(),
                "abc0000000000000000000000000000000000000".into()
            ))
        );
        let detail = jobs.get(1).unwrap().unwrap();
        assert_eq!(detail.images[0].digest.as_deref(), Some("sha256:first"));
    }

    #[test]
    fn stage_writes_from_two_connections_at_once_wait_their_turn_instead_of_failing() {
        let (_dir, first, second) = two_workers();
        first.claim_next(Duration::from_secs(60)).unwrap().unwrap();
        let update = |stage| StageUpdate::new("web", stage, StageState::Running);

        let failures = std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                (0..200)
                    .filter(|_| second.set_stage(1, &update(StageName::Image)).is_err())
                    .count()
            });
            let own = (0..200)
                .filter(|_| {
                    first
                        .set_stage_reporting(1, &update(StageName::Check), &[])
                        .is_err()
                })
                .count();
            own + other.join().unwrap()
        });

        assert_eq!(
            failures, 0,
            "every write (a lease read, then the stage) committed"
        );
    }

    fn status_report(state: &str) -> crate::store::NewReport {
        crate::store::NewReport {
            project: "p".into(),
            channel: "forge".into(),
            job: Some(1),
            key: "abc/deploybot/web".into(),
            payload: state.into(),
        }
    }

    #[test]
    fn a_rerun_starts_a_new_run_with_no_statuses_and_its_attempts_counted_from_one() {
        let (_dir, jobs, _) = two_workers();
        jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
        let web = StageUpdate::new("web", StageName::Push, StageState::Success);
        jobs.set_stage_reporting(1, &web, &[status_report("first run")])
            .unwrap();
        assert_eq!(jobs.run_statuses(1).unwrap(), ["first run"]);
        jobs.finish(1, JobState::Success, None).unwrap();

        assert!(jobs.rerun(1).unwrap());
        let again = jobs.claim_next(Duration::from_secs(60)).unwrap().unwrap();
        jobs.set_stage_reporting(1, &web, &[status_report("second run")])
            .unwrap();

        assert_eq!(again.attempt, 1);
        assert_eq!(jobs.run_statuses(1).unwrap(), ["second run"]);
    }

    #[test]
    fn an_unknown_stored_state_is_an_error_naming_its_column() {
        let (_dir, jobs, _) = two_workers();
        jobs.conn()
            .execute("UPDATE jobs SET state = 'done'", [])
            .unwrap();

        let err = jobs.state(1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("store: column jobs.state: unexpected value \"done\" (deploybot writes waiting, queued, running,"),
            "{err}"
        );
        assert!(
            jobs.get(1).is_err(),
            "nor does the job read with a default state"
        );
    }
}
