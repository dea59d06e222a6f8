//! Read-only queries, on a connection of their own (WAL lets them run beside the writer).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::segments::{self, BodyLocation};
use super::{bodies_dir, db_path, StoreError};

/// One recorded delivery, as `deploybot deliveries` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryRow {
    pub id: i64,
    pub delivery_id: Option<String>,
    pub project: String,
    pub forge: Option<String>,
    pub event: Option<String>,
    pub repository: Option<String>,
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub received_at: String,
    pub job: Option<i64>,
    pub headers: String,
    pub event_json: Option<String>,
    /// A rejection's source: a client address, or an IPv6 /64.
    pub source: Option<String>,
    /// Further rejections from the same source counted on this one, not recorded one by one.
    pub repeats: i64,
    /// `webhook`, or `recovered` for a push deploybot found missing and recorded itself.
    pub origin: String,
    /// The pull request its job builds.
    pub pull: Option<super::PullInfo>,
}

impl DeliveryRow {
    /// What became of it, in a few words: `queued (job 7)`, `ignored: why`, `rejected: why
    /// (+12 more from 203.0.113.7)`, `queued (job 9), recovered: its delivery never arrived`.
    pub fn outcome_text(&self) -> String {
        let mut text = match (self.outcome.as_str(), self.job, self.reason.as_deref()) {
            ("queued", Some(job), _) => match &self.pull {
                Some(pull) => format!(
                    "queued (job {job}): pull request #{} {} by {} from {}",
                    pull.number, pull.title, pull.author, pull.source_branch
                ),
                None => format!("queued (job {job})"),
            },
            (outcome, _, Some(reason)) if !reason.is_empty() => format!("{outcome}: {reason}"),
            (outcome, _, _) => outcome.to_owned(),
        };
        if self.origin == "recovered" {
            text.push_str(", recovered: its delivery never arrived");
        }
        if self.repeats > 0 {
            let source = self.source.as_deref().unwrap_or("this source");
            text.push_str(&format!(" (+{} more from {source})", self.repeats));
        }
        text
    }
}

pub struct Reader {
    conn: Connection,
    data_dir: PathBuf,
}

impl Reader {
    /// Opens the store for reading; it must exist (a typo in `data_dir` should not look like
    /// an empty store).
    pub fn open(data_dir: &Path) -> Result<Reader, StoreError> {
        let path = db_path(data_dir);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader {
            conn,
            data_dir: data_dir.to_owned(),
        })
    }

    /// The newest deliveries first.
    pub fn deliveries(&self, limit: u32) -> Result<Vec<DeliveryRow>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT d.id, d.delivery_id, d.project, d.forge, d.event, d.repository, d.git_ref,
                    d.sha, d.outcome, d.reason, d.received_at, j.id, d.headers, d.event_json,
                    d.source, d.repeats, d.origin, p.number, p.title, p.author,
                    p.source_branch, p.target_branch, p.from_fork
             FROM deliveries d LEFT JOIN jobs j ON j.delivery = d.id
                  LEFT JOIN pull_requests p ON p.job = j.id
             ORDER BY d.id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map([limit], |row| {
            Ok(DeliveryRow {
                id: row.get(0)?,
                delivery_id: row.get(1)?,
                project: row.get(2)?,
                forge: row.get(3)?,
                event: row.get(4)?,
                repository: row.get(5)?,
                git_ref: row.get(6)?,
                sha: row.get(7)?,
                outcome: row.get(8)?,
                reason: row.get(9)?,
                received_at: row.get(10)?,
                job: row.get(11)?,
                headers: row.get(12)?,
                event_json: row.get(13)?,
                source: row.get(14)?,
                repeats: row.get(15)?,
                origin: row.get(16)?,
                pull: super::PullInfo::read(row, 17)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The raw body of an accepted delivery, exactly as it arrived.
    pub fn body(&self, delivery_row: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let location = self
            .conn
            .query_row(
                "SELECT body_segment, body_offset, body_len, body_crc32 FROM deliveries
                 WHERE id = ?1 AND body_segment IS NOT NULL",
                params![delivery_row],
                |row| {
                    Ok(BodyLocation {
                        segment: row.get(0)?,
                        offset: row.get::<_, i64>(1)? as u64,
                        len: row.get::<_, i64>(2)? as u64,
                        crc32: row.get(3)?,
                    })
                },
            )
            .optional()?;
        location
            .map(|at| segments::read(&bodies_dir(&self.data_dir), at))
            .transpose()
    }

    /// How many jobs are in each state.
    pub fn job_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
