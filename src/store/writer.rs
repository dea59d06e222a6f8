//! The single writer: one thread owns the write connection and the body segments, takes
//! whatever requests are waiting (up to `max_batch`), and commits them together.
//!
//! Per batch: find redeliveries, append the new bodies and `fdatasync` once, then insert every
//! row in one transaction (`synchronous=FULL`: the commit fsyncs the WAL), then answer each
//! caller. A failure fails the whole batch: nobody is told "recorded" unless it is.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::segments::{BodyLocation, Segments};
use super::{
    bodies_dir, db_path, schema, timestamp, Action, NewDelivery, Recorded, Rejection, StoreError,
};

/// Requests waiting for the writer; bounded, so a stalled disk pushes back on intake.
const QUEUE_DEPTH: usize = 4096;

pub enum Command {
    Record(
        Box<NewDelivery>,
        oneshot::Sender<Result<Recorded, StoreError>>,
    ),
    Reject(Rejection),
    Probe(oneshot::Sender<Result<(), StoreError>>),
}

/// Where the writer reports its batch sizes and commit times (metrics live elsewhere).
#[derive(Clone)]
pub struct WriterStats {
    pub batch_size: prometheus::Histogram,
    pub commit_seconds: prometheus::Histogram,
}

pub fn spawn(
    data_dir: &Path,
    max_batch: usize,
    stats: WriterStats,
) -> Result<(mpsc::Sender<Command>, std::thread::JoinHandle<()>), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::Segment {
        path: data_dir.to_owned(),
        source,
    })?;
    let mut conn = open_connection(&db_path(data_dir))?;
    schema::migrate(&mut conn)?;
    let segments = Segments::open(&bodies_dir(data_dir), |segment| {
        let end: Option<i64> = conn.query_row(
            "SELECT MAX(body_offset + body_len) FROM deliveries WHERE body_segment = ?1",
            [segment],
            |row| row.get(0),
        )?;
        Ok(end.unwrap_or(0).max(0) as u64)
    })?;
    let (sender, receiver) = mpsc::channel(QUEUE_DEPTH);
    let mut writer = Writer {
        conn,
        segments,
        stats,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(receiver, max_batch.max(1)))
        .map_err(|source| StoreError::Segment {
            path: data_dir.to_owned(),
            source,
        })?;
    Ok((sender, thread))
}

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk when it returns, which is the promise behind every 2xx.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

struct Writer {
    conn: Connection,
    segments: Segments,
    stats: WriterStats,
}

/// A record request after duplicate detection.
enum Pending {
    New {
        delivery: Box<NewDelivery>,
        reply: oneshot::Sender<Result<Recorded, StoreError>>,
    },
    /// Redelivered: answered from the row that exists (or is being written in this batch).
    Duplicate {
        existing: Existing,
        reply: oneshot::Sender<Result<Recorded, StoreError>>,
    },
}

enum Existing {
    Stored { outcome: String, job: Option<i64> },
    InBatch(usize),
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
        let mut pending = Vec::new();
        let mut rejections = Vec::new();
        let mut probes = Vec::new();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for command in batch {
            match command {
                Command::Record(delivery, reply) => {
                    let key = (delivery.project.clone(), delivery.delivery_id.clone());
                    let existing = match seen.get(&key) {
                        Some(index) => Ok(Some(Existing::InBatch(*index))),
                        None => self.find_existing(&key.0, &key.1),
                    };
                    match existing {
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                        Ok(Some(existing)) => pending.push(Pending::Duplicate { existing, reply }),
                        Ok(None) => {
                            seen.insert(key, pending.len());
                            pending.push(Pending::New { delivery, reply });
                        }
                    }
                }
                Command::Reject(rejection) => rejections.push(rejection),
                Command::Probe(reply) => probes.push(reply),
            }
        }

        let outcome = self.write(&pending, &rejections);
        for probe in probes {
            let _ = probe.send(match &outcome {
                Ok(_) => Ok(()),
                Err(e) => Err(StoreError::Corrupt(e.to_string())),
            });
        }
        match outcome {
            Ok(results) => answer(pending, results),
            Err(e) => {
                tracing::error!(error = %e, "Store batch failed; every delivery in it is refused");
                for item in pending {
                    let reply = match item {
                        Pending::New { reply, .. } | Pending::Duplicate { reply, .. } => reply,
                    };
                    let _ = reply.send(Err(StoreError::Corrupt(e.to_string())));
                }
            }
        }
    }

    fn find_existing(&self, project: &str, id: &str) -> Result<Option<Existing>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT d.outcome, j.id FROM deliveries d LEFT JOIN jobs j ON j.delivery = d.id
             WHERE d.project = ?1 AND d.delivery_id = ?2 AND d.outcome <> 'rejected'",
        )?;
        let found = statement
            .query_row(params![project, id], |row| {
                Ok(Existing::Stored {
                    outcome: row.get(0)?,
                    job: row.get(1)?,
                })
            })
            .optional()?;
        Ok(found)
    }

    /// Writes bodies, then rows; returns what each `Pending::New` became (None for others).
    fn write(
        &mut self,
        pending: &[Pending],
        rejections: &[Rejection],
    ) -> Result<Vec<Option<Recorded>>, StoreError> {
        let bodies: Vec<&[u8]> = pending
            .iter()
            .filter_map(|p| match p {
                Pending::New { delivery, .. } => Some(delivery.body.as_ref()),
                Pending::Duplicate { .. } => None,
            })
            .collect();
        let mut locations = if bodies.is_empty() {
            Vec::new()
        } else {
            self.segments.append(&bodies)?
        }
        .into_iter();

        // IMMEDIATE takes the write lock up front, so a probe proves the database is writable.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut results = Vec::with_capacity(pending.len());
        for item in pending {
            results.push(match item {
                Pending::New { delivery, .. } => {
                    let at = locations
                        .next()
                        .ok_or_else(|| StoreError::Corrupt("body location missing".into()))?;
                    Some(insert_delivery(&tx, delivery, at)?)
                }
                Pending::Duplicate { .. } => None,
            });
        }
        for rejection in rejections {
            insert_rejection(&tx, rejection)?;
        }
        tx.commit()?;
        Ok(results)
    }
}

fn insert_delivery(
    tx: &rusqlite::Transaction<'_>,
    d: &NewDelivery,
    at: BodyLocation,
) -> Result<Recorded, StoreError> {
    let (outcome, reason) = match &d.action {
        Action::Queue(_) => ("queued", None),
        Action::Record { outcome, reason } => (*outcome, Some(reason.as_str())),
    };
    let received = timestamp(d.received_at);
    let mut statement = tx.prepare_cached(
        "INSERT INTO deliveries (delivery_id, project, forge, event, repository, git_ref, sha,
            outcome, reason, received_at, headers, event_json, body_segment, body_offset, body_len)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?;
    statement.execute(params![
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
    ])?;
    let delivery_row = tx.last_insert_rowid();
    match &d.action {
        Action::Record { outcome, .. } => Ok(Recorded::Recorded {
            outcome: (*outcome).to_owned(),
        }),
        Action::Queue(job) => {
            let mut statement = tx.prepare_cached(
                "INSERT INTO jobs (delivery, project, git_ref, ref_kind, ref_name, sha, state,
                    created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7)",
            )?;
            statement.execute(params![
                delivery_row,
                d.project,
                job.git_ref,
                job.ref_kind.as_str(),
                job.ref_name,
                job.sha,
                received,
            ])?;
            Ok(Recorded::Queued {
                job: tx.last_insert_rowid(),
            })
        }
    }
}

fn insert_rejection(tx: &rusqlite::Transaction<'_>, r: &Rejection) -> Result<(), StoreError> {
    let mut statement = tx.prepare_cached(
        "INSERT INTO deliveries (delivery_id, project, forge, event, outcome, reason, received_at)
         VALUES (?1, ?2, ?3, ?4, 'rejected', ?5, ?6)",
    )?;
    statement.execute(params![
        r.delivery_id,
        r.project,
        r.forge,
        r.event,
        r.reason,
        timestamp(r.received_at),
    ])?;
    Ok(())
}

fn answer(pending: Vec<Pending>, results: Vec<Option<Recorded>>) {
    // Duplicates inside one batch answer with what their first copy became.
    let duplicate_of = |index: usize| match &results[index] {
        Some(Recorded::Queued { job }) => Recorded::Duplicate {
            outcome: "queued".into(),
            job: Some(*job),
        },
        Some(Recorded::Recorded { outcome }) => Recorded::Duplicate {
            outcome: outcome.clone(),
            job: None,
        },
        _ => Recorded::Duplicate {
            outcome: "unknown".into(),
            job: None,
        },
    };
    let answers: Vec<Recorded> = pending
        .iter()
        .zip(&results)
        .map(|(item, result)| match (item, result) {
            (Pending::New { .. }, Some(recorded)) => recorded.clone(),
            (Pending::Duplicate { existing, .. }, _) => match existing {
                Existing::Stored { outcome, job } => Recorded::Duplicate {
                    outcome: outcome.clone(),
                    job: *job,
                },
                Existing::InBatch(index) => duplicate_of(*index),
            },
            (Pending::New { .. }, None) => Recorded::Duplicate {
                outcome: "unknown".into(),
                job: None,
            },
        })
        .collect();
    for (item, recorded) in pending.into_iter().zip(answers) {
        let reply = match item {
            Pending::New { reply, .. } | Pending::Duplicate { reply, .. } => reply,
        };
        let _ = reply.send(Ok(recorded));
    }
}
