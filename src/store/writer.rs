//! The writer: one thread that turns concurrent requests into group commits.
//!
//! Per batch (every request waiting, up to `max_batch`): append the new bodies to the segment
//! file; then, at the same time, the *syncer* thread `fdatasync`s the segment while this thread
//! inserts the rows in one transaction (`synchronous=FULL`: the commit fsyncs the WAL). Only
//! when both syncs are done is any caller answered. Running the two syncs side by side, rather
//! than one after the other, is what keeps intake latency near one fsync.
//!
//! The price is a window in which a row is committed but its body not yet synced. Nobody has
//! been answered for such a row, and each row keeps its body's CRC32: if the body sync fails
//! the batch's rows are deleted again before the error answers; if the process dies, the next
//! open verifies the newest rows (only the batch in flight can be affected) and removes any
//! whose body did not make it. A third thread checkpoints the WAL into the database file, off
//! the commit path (a checkpoint inside a commit is what makes the latency tail).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc as sync_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::connection::open_connection;
use super::segments::{self, BodyLocation, Segments};
use super::{
    bodies_dir, db_path, schema, timestamp, Action, NewDelivery, Origin, Recorded, Rejection,
    StoreError,
};
use crate::domain::JobState;

/// Requests waiting for the writer; bounded, so a stalled disk pushes back on intake.
const QUEUE_DEPTH: usize = 4096;
/// How often the checkpointer moves the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

pub enum Command {
    Record(
        Box<NewDelivery>,
        oneshot::Sender<Result<Recorded, StoreError>>,
    ),
    Reject(Rejection),
    /// One more rejection from this source, counted on its last recorded one.
    Repeat(String),
    /// Start a new body segment (retention asks, so that the current one can age out).
    Rotate,
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

/// Where the writer reports its batch sizes and commit times (metrics live elsewhere).
#[derive(Clone)]
pub struct WriterStats {
    pub batch_size: prometheus::Histogram,
    pub commit_seconds: prometheus::Histogram,
}

/// Opens the database and segments and starts the writer. The returned thread ends, after
/// the last batch is committed and the WAL checkpointed, once every sender is dropped.
pub fn spawn(
    data_dir: &Path,
    max_batch: usize,
    stats: WriterStats,
) -> Result<(mpsc::Sender<Command>, JoinHandle<()>), StoreError> {
    let io_error = |source| StoreError::Segment {
        path: data_dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(data_dir).map_err(io_error)?;
    let mut conn = open_connection(&db_path(data_dir))?;
    schema::migrate(&mut conn)?;
    // Checkpoints are the checkpointer thread's job, not the committing thread's.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let bodies = bodies_dir(data_dir);
    remove_unsynced_tail(&mut conn, &bodies, max_batch)?;
    let segments = Segments::open(&bodies, |segment| {
        let end: Option<i64> = conn.query_row(
            "SELECT MAX(body_offset + body_len) FROM deliveries WHERE body_segment = ?1",
            [segment],
            |row| row.get(0),
        )?;
        Ok(end.unwrap_or(0).max(0) as u64)
    })?;
    let checkpoint_conn = open_connection(&db_path(data_dir))?;

    let spawn_named = |name: &str| std::thread::Builder::new().name(name.to_owned());
    let (stop_checkpoints, checkpoint_signal) = sync_mpsc::channel::<()>();
    let checkpointer = spawn_named("store-checkpoint")
        .spawn(move || run_checkpoints(checkpoint_conn, checkpoint_signal))
        .map_err(io_error)?;
    let (to_syncer, sync_requests) = sync_mpsc::sync_channel::<(File, PathBuf)>(1);
    let (sync_done, sync_results) = sync_mpsc::sync_channel(1);
    spawn_named("store-sync")
        .spawn(move || {
            for (file, path) in sync_requests {
                let result = file
                    .sync_data()
                    .map_err(|source| StoreError::Segment { path, source });
                if sync_done.send(result).is_err() {
                    return;
                }
            }
        })
        .map_err(io_error)?;

    let (commands, receiver) = mpsc::channel(QUEUE_DEPTH);
    let mut writer = Writer {
        conn,
        segments,
        to_syncer,
        sync_results,
        stats,
    };
    let thread = spawn_named("store-writer")
        .spawn(move || {
            writer.run(receiver, max_batch.max(1));
            drop(writer);
            drop(stop_checkpoints);
            let _ = checkpointer.join();
        })
        .map_err(io_error)?;
    Ok((commands, thread))
}

/// After a crash, the rows of the batch that was in flight may point at bodies that never
/// reached the disk. None of them was acknowledged (answers wait for both syncs), so they are
/// removed; recovery (or the forge, asked) sends again what nobody was told we have. Only the
/// newest `max_batch` rows with a body can be affected; twice that many are checked.
fn remove_unsynced_tail(
    conn: &mut Connection,
    bodies: &Path,
    max_batch: usize,
) -> Result<(), StoreError> {
    let tail: Vec<(i64, BodyLocation)> = {
        let mut statement = conn.prepare(
            "SELECT id, body_segment, body_offset, body_len, body_crc32 FROM deliveries
             WHERE body_segment IS NOT NULL ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map([(max_batch * 2) as i64], |row| {
            Ok((
                row.get(0)?,
                BodyLocation {
                    segment: row.get(1)?,
                    offset: row.get::<_, i64>(2)? as u64,
                    len: row.get::<_, i64>(3)? as u64,
                    crc32: row.get(4)?,
                },
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let torn: Vec<i64> = tail
        .into_iter()
        .filter(|(_, at)| !segments::verify(bodies, *at))
        .map(|(id, _)| id)
        .collect();
    if !torn.is_empty() {
        let tx = conn.transaction()?;
        delete_deliveries(&tx, &torn)?;
        tx.commit()?;
        tracing::warn!(
            count = torn.len(),
            "Removed deliveries whose body did not reach the disk before a crash; none was acknowledged"
        );
    }
    Ok(())
}

fn delete_deliveries(tx: &rusqlite::Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
    let mut pulls = tx.prepare_cached(
        "DELETE FROM pull_requests WHERE job IN (SELECT id FROM jobs WHERE delivery = ?1)",
    )?;
    let mut jobs = tx.prepare_cached("DELETE FROM jobs WHERE delivery = ?1")?;
    let mut deliveries = tx.prepare_cached("DELETE FROM deliveries WHERE id = ?1")?;
    for id in ids {
        pulls.execute([id])?;
        jobs.execute([id])?;
        deliveries.execute([id])?;
    }
    Ok(())
}

struct Writer {
    conn: Connection,
    segments: Segments,
    to_syncer: sync_mpsc::SyncSender<(File, PathBuf)>,
    sync_results: sync_mpsc::Receiver<Result<(), StoreError>>,
    stats: WriterStats,
}

impl Writer {
    fn run(&mut self, mut receiver: mpsc::Receiver<Command>, max_batch: usize) {
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match receiver.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.stats.batch_size.observe(batch.len() as f64);
            let started = Instant::now();
            self.commit(std::mem::take(&mut batch));
            self.stats
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }

    fn commit(&mut self, batch: Vec<Command>) {
        let mut records = Vec::new();
        let mut rejections = Rejections::default();
        let mut probes = Vec::new();
        let mut rotate = false;
        for command in batch {
            match command {
                Command::Record(delivery, reply) => records.push((delivery, reply)),
                Command::Reject(rejection) => rejections.recorded.push(rejection),
                Command::Repeat(source) => *rejections.repeats.entry(source).or_default() += 1,
                Command::Probe(reply) => probes.push(reply),
                Command::Rotate => rotate = true,
            }
        }
        let outcome = self.write(&records, &rejections);
        if rotate {
            if let Err(e) = self.segments.rotate() {
                tracing::error!(error = %e, "Could not start a new body segment");
            }
        }
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "Store batch failed; every delivery in it is refused");
        }
        let outcome = outcome.map_err(std::sync::Arc::new);
        for probe in probes {
            let _ = probe.send(match &outcome {
                Ok(_) => Ok(()),
                Err(e) => Err(StoreError::Batch(e.clone())),
            });
        }
        match outcome {
            Ok(answers) => {
                for ((_, reply), answer) in records.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for (_, reply) in records {
                    let _ = reply.send(Err(StoreError::Batch(e.clone())));
                }
            }
        }
    }

    /// Bodies, then rows and the body sync side by side; answers only when both are durable.
    fn write(
        &mut self,
        records: &Records,
        rejections: &Rejections,
    ) -> Result<Vec<Recorded>, StoreError> {
        let bodies: Vec<&[u8]> = records.iter().map(|(d, _)| d.body.as_ref()).collect();
        let (locations, syncing) = if bodies.is_empty() {
            (Vec::new(), false)
        } else {
            let locations = self.segments.append(&bodies)?;
            let handle = self.segments.file_to_sync()?;
            self.to_syncer
                .send(handle)
                .map_err(|_| StoreError::Corrupt("the body syncer stopped".into()))?;
            (locations, true)
        };
        let rows = write_rows(&mut self.conn, records, &locations, rejections);
        let synced = if syncing {
            self.sync_results
                .recv()
                .unwrap_or_else(|_| Err(StoreError::Corrupt("the body syncer stopped".into())))
        } else {
            Ok(())
        };
        let (answers, inserted) = rows?;
        if let Err(e) = synced {
            // The rows are committed but their bodies may not be on disk: take them back
            // before anyone is told anything. (Should this fail too, the next open finds
            // them by their CRC.)
            let undo = self
                .conn
                .transaction()
                .map_err(StoreError::from)
                .and_then(|tx| delete_deliveries(&tx, &inserted).and_then(|()| Ok(tx.commit()?)));
            if let Err(undo_error) = undo {
                tracing::error!(error = %undo_error, "Could not remove rows whose body sync failed");
            }
            return Err(e);
        }
        Ok(answers)
    }
}

/// The rejections of one batch: the ones recorded, and per source how many more to count.
#[derive(Default)]
struct Rejections {
    recorded: Vec<Rejection>,
    repeats: std::collections::HashMap<String, i64>,
}

type Records = [(
    Box<NewDelivery>,
    oneshot::Sender<Result<Recorded, StoreError>>,
)];

/// Inserts the batch in one transaction; returns each record's answer and the ids of the
/// delivery rows it created.
fn write_rows(
    conn: &mut Connection,
    records: &Records,
    bodies: &[BodyLocation],
    rejections: &Rejections,
) -> Result<(Vec<Recorded>, Vec<i64>), StoreError> {
    if bodies.len() != records.len() {
        return Err(StoreError::Corrupt(
            "body locations do not match the batch".into(),
        ));
    }
    // IMMEDIATE takes the write lock up front, so a probe proves the database is writable.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut answers = Vec::with_capacity(records.len());
    let mut inserted = Vec::with_capacity(records.len());
    for ((delivery, _), at) in records.iter().zip(bodies) {
        let (answer, row) = insert_delivery(&tx, delivery, *at)?;
        answers.push(answer);
        inserted.extend(row);
    }
    for rejection in &rejections.recorded {
        insert_rejection(&tx, rejection)?;
    }
    for (source, count) in &rejections.repeats {
        count_repeats(&tx, source, *count)?;
    }
    tx.commit()?;
    Ok((answers, inserted))
}

/// Inserts a delivery (and its job), or, when its id was accepted before (in an earlier batch
/// or earlier in this one), answers with what that first copy became. A duplicate's body
/// stays in the segment unreferenced; redeliveries are rare enough not to matter.
fn insert_delivery(
    tx: &rusqlite::Transaction<'_>,
    d: &NewDelivery,
    at: BodyLocation,
) -> Result<(Recorded, Option<i64>), StoreError> {
    let same_push = match &d.action {
        Action::Queue(job) => queued_push(tx, &d.project, &job.git_ref, &job.sha)?,
        Action::Record { .. } | Action::Cancel { .. } => None,
    };
    let recovered_before = match (same_push, d.origin) {
        (Some(earlier), Origin::Recovered) => {
            return Ok((
                Recorded::Duplicate {
                    outcome: "queued".into(),
                    job: Some(earlier.job),
                },
                None,
            ))
        }
        (Some(earlier), Origin::Webhook) if earlier.recovered => Some(earlier.job),
        _ => None,
    };
    let already =
        recovered_before.map(|job| format!("the same push was recovered before (job {job})"));
    let (outcome, reason) = match (&d.action, &already) {
        (_, Some(already)) => ("ignored", Some(already.as_str())),
        (Action::Queue(_), None) => ("queued", None),
        (Action::Record { outcome, reason }, None) => (*outcome, Some(reason.as_str())),
        (Action::Cancel { reason, .. }, None) => ("ignored", Some(reason.as_str())),
    };
    let received = timestamp(d.received_at);
    let mut statement = tx.prepare_cached(
        "INSERT OR IGNORE INTO deliveries (delivery_id, project, forge, event, repository,
            git_ref, sha, outcome, reason, received_at, headers, event_json, body_segment,
            body_offset, body_len, body_crc32, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?;
    let inserted = statement.execute(params![
        d.delivery_id,
        d.project,
        d.forge,
        d.event,
        d.repository,
        d.git_ref,
        d.sha,
        outcome,
        reason,
        received,
        d.headers_json,
        d.event_json,
        at.segment,
        at.offset as i64,
        at.len as i64,
        at.crc32,
        d.origin.as_str(),
    ])?;
    if inserted == 0 {
        return Ok((duplicate_of(tx, &d.project, &d.delivery_id)?, None));
    }
    let delivery_row = tx.last_insert_rowid();
    if let Some(job) = recovered_before {
        return Ok((Recorded::AlreadyRecovered { job }, Some(delivery_row)));
    }
    let recorded = match &d.action {
        Action::Record { outcome, .. } => Recorded::Recorded {
            outcome: (*outcome).to_owned(),
        },
        Action::Cancel { git_ref, error, .. } => cancel_open_jobs(tx, &d.project, git_ref, error)?,
        Action::Queue(job) => {
            let mut statement = tx.prepare_cached(
                "INSERT INTO jobs (delivery, project, git_ref, ref_kind, ref_name, sha, state,
                    created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            )?;
            let state = if job.waits_for_approval {
                JobState::Waiting
            } else {
                JobState::Queued
            };
            statement.execute(params![
                delivery_row,
                d.project,
                job.git_ref,
                job.ref_kind.as_str(),
                job.ref_name,
                job.sha,
                state.as_str(),
                received,
            ])?;
            let job_id = tx.last_insert_rowid();
            if let Some(pull) = &job.pull {
                insert_pull(tx, job_id, pull)?;
            }
            super::outbox::insert(tx, &d.reports, Some(job_id))?;
            Recorded::Queued { job: job_id }
        }
    };
    Ok((recorded, Some(delivery_row)))
}

/// Cancels the waiting, queued and running jobs of `git_ref` in `project`, with `error`
/// saying why.
fn cancel_open_jobs(
    tx: &rusqlite::Transaction<'_>,
    project: &str,
    git_ref: &str,
    error: &str,
) -> Result<Recorded, StoreError> {
    let open: Vec<(i64, String)> = tx
        .prepare_cached(
            "SELECT id, state FROM jobs
             WHERE project = ?1 AND git_ref = ?2 AND state IN ('waiting', 'queued', 'running')",
        )?
        .query_map(params![project, git_ref], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let now = timestamp(time::OffsetDateTime::now_utc());
    let mut cancel = tx.prepare_cached(
        "UPDATE jobs SET state = 'canceled', error = ?2, finished_at = ?3, updated_at = ?3
         WHERE id = ?1",
    )?;
    let (mut queued, mut running) = (Vec::new(), Vec::new());
    for (job, state) in open {
        cancel.execute(params![job, error, now])?;
        if state != "running" {
            queued.push(job);
        } else {
            running.push(job);
        }
    }
    Ok(Recorded::Canceled { queued, running })
}

/// What the pages show of the pull request job `job` builds.
fn insert_pull(
    tx: &rusqlite::Transaction<'_>,
    job: i64,
    pull: &super::PullInfo,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO pull_requests (job, number, title, author, source_branch, target_branch,
            from_fork)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        job,
        pull.number,
        pull.title,
        pull.author,
        pull.source_branch,
        pull.target_branch,
        pull.from_fork
    ])?;
    Ok(())
}

/// The job of the push (project, ref, sha) queued earlier, if any, and whether recovery
/// queued it.
struct QueuedPush {
    job: i64,
    recovered: bool,
}

fn queued_push(
    tx: &rusqlite::Transaction<'_>,
    project: &str,
    git_ref: &str,
    sha: &str,
) -> Result<Option<QueuedPush>, StoreError> {
    let mut statement = tx.prepare_cached(
        "SELECT j.id, d.origin FROM deliveries d JOIN jobs j ON j.delivery = d.id
         WHERE d.project = ?1 AND d.git_ref = ?2 AND d.sha = ?3 AND d.outcome = 'queued'
         ORDER BY d.origin = 'recovered' DESC, d.id LIMIT 1",
    )?;
    Ok(statement
        .query_row(params![project, git_ref, sha], |row| {
            Ok(QueuedPush {
                job: row.get(0)?,
                recovered: row.get::<_, String>(1)? == "recovered",
            })
        })
        .optional()?)
}

fn duplicate_of(
    tx: &rusqlite::Transaction<'_>,
    project: &str,
    id: &str,
) -> Result<Recorded, StoreError> {
    let mut statement = tx.prepare_cached(
        "SELECT d.outcome, j.id FROM deliveries d LEFT JOIN jobs j ON j.delivery = d.id
         WHERE d.project = ?1 AND d.delivery_id = ?2 AND d.outcome <> 'rejected'",
    )?;
    let found = statement
        .query_row(params![project, id], |row| {
            Ok(Recorded::Duplicate {
                outcome: row.get(0)?,
                job: row.get(1)?,
            })
        })
        .optional()?;
    found.ok_or_else(|| StoreError::Corrupt(format!("delivery {id} conflicts but is not found")))
}

fn insert_rejection(tx: &rusqlite::Transaction<'_>, r: &Rejection) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO deliveries (delivery_id, project, forge, event, outcome, reason, received_at,
            source)
         VALUES (?1, ?2, ?3, ?4, 'rejected', ?5, ?6, ?7)",
    )?;
    statement.execute(params![
        r.delivery_id,
        r.project,
        r.forge,
        r.event,
        r.reason,
        timestamp(r.received_at),
        r.source,
    ])?;
    Ok(())
}

/// Adds `count` to the repeats of `source`'s newest recorded rejection. With none recorded
/// (retention removed it, or it is still in the queue), the count lives only in the metric.
fn count_repeats(
    tx: &rusqlite::Transaction<'_>,
    source: &str,
    count: i64,
) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(
        "UPDATE deliveries SET repeats = repeats + ?2
         WHERE id = (SELECT MAX(id) FROM deliveries WHERE outcome = 'rejected' AND source = ?1)",
    )?;
    statement.execute(params![source, count])?;
    Ok(())
}

/// Stage 3: move committed WAL frames into the database file, in the background. PASSIVE
/// never blocks the writer; when the writer stops, one last TRUNCATE leaves a small WAL.
fn run_checkpoints(conn: Connection, stop: sync_mpsc::Receiver<()>) {
    let checkpoint = |mode: &str| {
        let sql = format!("PRAGMA wal_checkpoint({mode})");
        if let Err(e) = conn.query_row(&sql, [], |_| Ok(())) {
            tracing::warn!(error = %e, mode, "WAL checkpoint failed");
        }
    };
    while let Err(sync_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        checkpoint("PASSIVE");
    }
    checkpoint("TRUNCATE");
}
