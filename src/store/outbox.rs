//! The outbox: reports (commit statuses, chat messages) written in the same transaction as the
//! state change that causes them, and delivered later by `report::sender`.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{connection::open_connection, db_path, timestamp, StoreError};

/// A report to write with a state change: its destination, the key that makes a newer report
/// replace it (a status's sha and context; empty for chat) and its payload, which only the
/// report module reads.
#[derive(Debug, Clone)]
pub struct NewReport {
    pub project: String,
    /// `forge`, or `chat:<name>`.
    pub channel: String,
    pub job: Option<i64>,
    pub key: String,
    pub payload: String,
}

/// Inserts reports inside the caller's transaction, for `job` where they name none.
pub(crate) fn insert(
    tx: &rusqlite::Transaction<'_>,
    reports: &[NewReport],
    job: Option<i64>,
) -> Result<(), StoreError> {
    if reports.is_empty() {
        return Ok(());
    }
    let mut statement = tx.prepare_cached(
        "INSERT INTO outbox (project, channel, key, payload, job, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let now = timestamp(time::OffsetDateTime::now_utc());
    for entry in reports {
        statement.execute(params![
            entry.project,
            entry.channel,
            entry.key,
            entry.payload,
            entry.job.or(job),
            now
        ])?;
    }
    Ok(())
}

/// One report waiting for delivery.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub project: String,
    pub channel: String,
    pub key: String,
    pub job: Option<i64>,
    pub attempts: i64,
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    pub pending: i64,
    pub failed: i64,
}

pub struct Outbox {
    conn: Mutex<Connection>,
}

impl Outbox {
    pub fn open(data_dir: &Path) -> Result<Outbox, StoreError> {
        Ok(Outbox {
            conn: Mutex::new(open_connection(&db_path(data_dir))?),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reports due now (unix milliseconds), oldest first.
    pub fn due(&self, now: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT id, project, channel, key, job, attempts, payload FROM outbox
             WHERE state = 'pending' AND next_at <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![now, limit], |row| {
            Ok(OutboxRow {
                id: row.get(0)?,
                project: row.get(1)?,
                channel: row.get(2)?,
                key: row.get(3)?,
                job: row.get(4)?,
                attempts: row.get(5)?,
                payload: row.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether a newer report with the same key (same sha and context) exists: then this one
    /// is stale and must never be sent.
    pub fn superseded(&self, row: &OutboxRow) -> Result<bool, StoreError> {
        if row.key.is_empty() {
            return Ok(false);
        }
        let newer: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM outbox WHERE project = ?1 AND channel = ?2 AND key = ?3
               AND id > ?4 AND state IN ('pending', 'sent')",
            params![row.project, row.channel, row.key, row.id],
            |r| r.get(0),
        )?;
        Ok(newer > 0)
    }

    pub fn finish(&self, id: i64, state: &str, error: Option<&str>) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET state = ?1, last_error = COALESCE(?2, last_error), done_at = ?3 WHERE id = ?4",
            params![state, error, timestamp(time::OffsetDateTime::now_utc()), id],
        )?;
        Ok(())
    }

    pub fn retry_at(&self, id: i64, next_at: i64, error: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ?1, last_error = ?2 WHERE id = ?3",
            params![next_at, error, id],
        )?;
        Ok(())
    }

    /// The earliest time (unix milliseconds) a pending report is due, if any.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row(
            "SELECT MIN(next_at) FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn counts(&self) -> Result<OutboxCounts, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'failed'), 0) FROM outbox",
            [],
            |r| Ok(OutboxCounts { pending: r.get(0)?, failed: r.get(1)? }),
        )?)
    }
}
