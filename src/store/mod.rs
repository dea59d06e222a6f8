//! The store: SQLite (WAL, `synchronous=FULL`) plus append-only body segment files, all under
//! `server.data_dir`. It owns the schema and typed queries; it holds no business rules.
//!
//! Writes go through one writer thread ([`writer`]) that batches concurrent requests into a
//! single transaction, so one fsync covers many deliveries (group commit). A caller gets its
//! answer only after that commit is on disk: this is what lets intake answer 2xx. Raw bodies
//! are appended to a segment file that is synced *before* the transaction that references
//! them commits, so a committed row always points at bytes on disk; bytes a crash left
//! unreferenced are cut off at the next start. Reads use their own connections ([`Reader`]).

pub(crate) mod connection;
mod deploys;
mod jobs;
mod ledger;
mod outbox;
mod reader;
mod retention;
pub(crate) mod schema;
mod segments;
mod states;
mod turns;
pub(crate) mod writer;

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub use deploys::{DeployRow, RolloutCause, RolloutState, UnexpectedValue};
pub(crate) use deploys::{DeployUpdate, NewDeploy};
pub use jobs::{
    BuiltImage, ClaimedJob, ImageRow, JobDetail, JobRow, Jobs, LogChunk, StageRow, StageUpdate,
};
pub(crate) use ledger::RecoveryLedger;
pub use outbox::NewReport;
pub(crate) use outbox::{Outbox, OutboxRow};
pub use reader::{DeliveryRow, Reader};
pub use retention::RetentionLimits;
pub(crate) use retention::{Sweeper, Swept};
pub(crate) use turns::TurnClaim;
pub(crate) use writer::WriterStats;

use crate::domain::RefKind;

const DB_FILE: &str = "deploybot.db";
const BODIES_DIR: &str = "bodies";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("body segment {path}: {source}")]
    Segment {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store: the writer has stopped")]
    Closed,
    #[error("store: {0}")]
    Corrupt(String),
    /// A store call on a blocking thread did not return (it panicked, or the runtime is
    /// shutting down).
    #[error("store: a store call stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The group commit this request was part of failed; every request in it hears why.
    #[error("store: the batch this was in failed: {0}")]
    Batch(#[source] std::sync::Arc<StoreError>),
    /// A value in a column that deploybot never writes there.
    #[error("store: column {column}: {source}")]
    Column {
        column: &'static str,
        #[source]
        source: UnexpectedValue,
    },
    #[error("job {job}: its lease is no longer this worker's (another claim took it)")]
    LeaseLost { job: i64 },
}

/// A delivery to record, with what to do about it.
#[derive(Debug)]
pub struct NewDelivery {
    pub delivery_id: String,
    pub project: String,
    pub forge: &'static str,
    pub event: String,
    pub repository: Option<String>,
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    /// The recorded headers as a JSON object.
    pub headers_json: String,
    /// The normalized push event as JSON, for pushes.
    pub event_json: Option<String>,
    pub body: bytes::Bytes,
    pub received_at: OffsetDateTime,
    pub action: Action,
    /// Reports to send once this delivery's job is recorded (the first `pending` status).
    pub reports: Vec<NewReport>,
    pub origin: Origin,
}

/// Where a delivery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The forge called the webhook (first delivery or a redelivery).
    Webhook,
    /// deploybot found a ref with no recorded push and recorded the push itself. It is queued
    /// only when no delivery of the same push (project, ref, sha) was queued before, and a
    /// webhook delivery of that push arriving afterwards queues nothing.
    Recovered,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Webhook => "webhook",
            Origin::Recovered => "recovered",
        }
    }
}

#[derive(Debug)]
pub enum Action {
    /// Record the delivery and a `queued` job for it, in the same transaction.
    Queue(NewJob),
    /// Record the delivery only (`ignored` or `pong`), with why.
    Record {
        outcome: &'static str,
        reason: String,
    },
    /// Record the delivery (`ignored`, with why) and, in the same transaction, cancel the
    /// queued and running jobs of the project's `git_ref` (a pull request closed or merged),
    /// each with `error`.
    Cancel {
        git_ref: String,
        reason: String,
        error: String,
    },
}

#[derive(Debug)]
pub struct NewJob {
    pub git_ref: String,
    pub ref_kind: RefKind,
    pub ref_name: String,
    pub sha: String,
    /// The pull request it builds, for a job of a pull request's head.
    pub pull: Option<PullInfo>,
    /// It waits for an operator's approval (`waiting`) instead of being `queued`.
    pub waits_for_approval: bool,
}

/// What the pages show of a pull request a job builds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullInfo {
    /// GitHub's number, GitLab's `iid`.
    pub number: i64,
    pub title: String,
    pub author: String,
    pub source_branch: String,
    pub target_branch: String,
    /// Its head lives in another repository than the base.
    pub from_fork: bool,
}

impl PullInfo {
    /// The columns `number, title, author, source_branch, target_branch, from_fork` of
    /// `pull_requests` from column `first` of `row` on (a left join: None without a request).
    pub(crate) fn read(
        row: &rusqlite::Row<'_>,
        first: usize,
    ) -> rusqlite::Result<Option<PullInfo>> {
        let Some(number) = row.get::<_, Option<i64>>(first)? else {
            return Ok(None);
        };
        Ok(Some(PullInfo {
            number,
            title: row.get(first + 1)?,
            author: row.get(first + 2)?,
            source_branch: row.get(first + 3)?,
            target_branch: row.get(first + 4)?,
            from_fork: row.get(first + 5)?,
        }))
    }
}

/// What the store did with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Queued {
        job: i64,
    },
    Recorded {
        outcome: String,
    },
    /// Seen before (a redelivery, or a push recovery found already queued): nothing new was
    /// written.
    Duplicate {
        outcome: String,
        job: Option<i64>,
    },
    /// A webhook delivery of a push that recovery had already queued: recorded as `ignored`,
    /// no second job.
    AlreadyRecovered {
        job: i64,
    },
    /// Recorded, and these jobs canceled: those that were queued or waiting (nobody reports
    /// their end yet) and those that were running (their workers stop and report it).
    Canceled {
        queued: Vec<i64>,
        running: Vec<i64>,
    },
}

/// A delivery refused before it was trusted: kept (without its body) so a person can see why
/// a push did nothing. Recording it is best effort and never delays the 4xx.
#[derive(Debug)]
pub struct Rejection {
    /// Where it came from (a client address, or an IPv6 /64), as intake's budget names it.
    pub source: Option<String>,
    pub project: String,
    pub forge: Option<&'static str>,
    pub delivery_id: Option<String>,
    pub event: Option<String>,
    pub reason: String,
    pub received_at: OffsetDateTime,
}

/// The cloneable handle the server uses to write.
#[derive(Clone)]
pub struct Store {
    commands: mpsc::Sender<writer::Command>,
    data_dir: PathBuf,
}

impl Store {
    /// Opens (creating and migrating if needed) the store under `data_dir` and starts its
    /// writer thread. The thread ends when the last handle is dropped, after its last batch.
    pub fn open(
        data_dir: &Path,
        max_batch: usize,
        stats: WriterStats,
    ) -> Result<(Store, std::thread::JoinHandle<()>), StoreError> {
        let (commands, thread) = writer::spawn(data_dir, max_batch, stats)?;
        Ok((
            Store {
                commands,
                data_dir: data_dir.to_owned(),
            },
            thread,
        ))
    }

    /// Records a delivery durably; returns only after the commit is on disk.
    pub async fn record(&self, delivery: NewDelivery) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(writer::Command::Record(Box::new(delivery), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a rejection for recording, unless the writer is busy (then it is only logged
    /// and counted by the caller: an unauthenticated flood must not slow real deliveries).
    pub fn record_rejection(&self, rejection: Rejection) -> bool {
        self.commands
            .try_send(writer::Command::Reject(rejection))
            .is_ok()
    }

    /// Counts one more rejection from `source` on its last recorded one, best effort like
    /// [`Store::record_rejection`] (the caller counts what could not be queued).
    pub fn count_rejection(&self, source: String) -> bool {
        self.commands
            .try_send(writer::Command::Repeat(source))
            .is_ok()
    }

    /// Asks the writer to start a new body segment (best effort: retention asks again).
    pub fn rotate_segment(&self) -> bool {
        self.commands.try_send(writer::Command::Rotate).is_ok()
    }

    /// Proves the writer is alive and the database accepts a write transaction.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(writer::Command::Probe(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub fn reader(&self) -> Result<Reader, StoreError> {
        Reader::open(&self.data_dir)
    }
}

fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

fn bodies_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(BODIES_DIR)
}

pub(crate) fn timestamp(at: OffsetDateTime) -> String {
    // Fixed width (milliseconds, always three digits) so the text sorts as time does.
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}
