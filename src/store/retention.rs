//! What the store forgets, and when: rejected deliveries past an age or a count, the logs of
//! finished jobs past an age, and delivery bodies past an age. A body goes with its whole
//! segment file, once no row pointing into it is young or belongs to a queued or running job;
//! its rows stay (a delivery's headers, outcome and push event are small and the job history
//! needs them) with their body columns NULL, which is written before the file goes, so no row
//! ever points at a missing file. The segment being appended to is never deleted; when it holds
//! bodies halfway to their age, the sweep asks for a new one so that it can age out whole.
//!
//! Deletions run in small batches, each its own short transaction, beside intake's writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection};
use time::OffsetDateTime;

use super::segments;
use super::{bodies_dir, connection::open_connection, db_path, timestamp, StoreError};

/// Rows deleted (or bodies dropped) per transaction: the write lock is held only briefly.
const BATCH: i64 = 500;

/// How long things are kept. Every limit is required: the store grows without bound otherwise.
#[derive(Debug, Clone)]
pub struct RetentionLimits {
    pub rejections_max_age: Duration,
    pub rejections_max_count: u64,
    pub logs_max_age: Duration,
    pub bodies_max_age: Duration,
}

/// What one sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub rejections: u64,
    pub log_chunks: u64,
    /// Rows whose body was dropped.
    pub bodies: u64,
    /// Segment files deleted.
    pub segments: u64,
    /// The segment being appended to holds old bodies: the writer should start a new one.
    pub rotate: bool,
}

/// Runs sweeps on a connection of its own.
pub struct Sweeper {
    conn: Connection,
    bodies: PathBuf,
}

impl Sweeper {
    /// Opens the (already created) store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Sweeper, StoreError> {
        Ok(Sweeper {
            conn: open_connection(&db_path(data_dir))?,
            bodies: bodies_dir(data_dir),
        })
    }

    /// One sweep as of `now`. `go_on` is asked between batches: false stops the sweep there
    /// (at shutdown), leaving the rest for the next one.
    pub fn sweep(
        &mut self,
        limits: &RetentionLimits,
        now: OffsetDateTime,
        go_on: &dyn Fn() -> bool,
    ) -> Result<Swept, StoreError> {
        let before = |age: Duration| timestamp(now - age);
        let mut swept = Swept {
            rejections: self.in_batches(
                go_on,
                OLD_REJECTIONS,
                &before(limits.rejections_max_age),
            )?,
            ..Swept::default()
        };
        let keep = i64::try_from(limits.rejections_max_count).unwrap_or(i64::MAX);
        swept.rejections += self.in_batches(go_on, SURPLUS_REJECTIONS, &keep)?;
        swept.log_chunks = self.in_batches(go_on, OLD_LOG_CHUNKS, &before(limits.logs_max_age))?;
        self.sweep_bodies(limits.bodies_max_age, now, go_on, &mut swept)?;
        Ok(swept)
    }

    /// Runs `sql` (one batch, `?1` the argument, `?2` the batch size) until it changes nothing.
    fn in_batches(
        &self,
        go_on: &dyn Fn() -> bool,
        sql: &str,
        argument: &dyn rusqlite::ToSql,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        while go_on() {
            let changed = self.conn.execute(sql, params![argument, BATCH])?;
            total += changed as u64;
            if changed == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Deletes every segment but the newest whose rows are all past `max_age` and none of them
    /// a queued or running job's, dropping its rows' body columns first; asks for a rotation
    /// when the newest holds a body older than half the age.
    fn sweep_bodies(
        &mut self,
        max_age: Duration,
        now: OffsetDateTime,
        go_on: &dyn Fn() -> bool,
        swept: &mut Swept,
    ) -> Result<(), StoreError> {
        let mut numbers = segments::numbers(&self.bodies)?;
        numbers.sort_unstable();
        let Some(newest) = numbers.pop() else {
            return Ok(());
        };
        let cutoff = timestamp(now - max_age);
        for segment in numbers {
            if !go_on() {
                return Ok(());
            }
            let needed: bool =
                self.conn
                    .query_row(SEGMENT_NEEDED, params![segment, cutoff], |row| row.get(0))?;
            if needed {
                continue;
            }
            swept.bodies += self.in_batches(go_on, DROP_BODIES, &segment)?;
            if !go_on() {
                return Ok(());
            }
            segments::remove(&self.bodies, segment)?;
            swept.segments += 1;
        }
        swept.rotate = self.conn.query_row(
            HOLDS_BODIES_BEFORE,
            params![newest, timestamp(now - max_age / 2)],
            |row| row.get(0),
        )?;
        Ok(())
    }
}

/// Rejections received before `?1`.
const OLD_REJECTIONS: &str = "DELETE FROM deliveries WHERE id IN (
    SELECT id FROM deliveries WHERE outcome = 'rejected' AND received_at < ?1 LIMIT ?2)";

/// Rejections beyond the newest `?1`.
const SURPLUS_REJECTIONS: &str = "DELETE FROM deliveries WHERE id IN (
    SELECT id FROM deliveries WHERE outcome = 'rejected'
    ORDER BY received_at DESC, id DESC LIMIT ?2 OFFSET ?1)";

/// Log chunks written before `?1` of jobs that are neither queued nor running.
const OLD_LOG_CHUNKS: &str = "DELETE FROM log_chunks WHERE id IN (
    SELECT c.id FROM log_chunks c JOIN jobs j ON j.id = c.job
    WHERE c.at < ?1 AND j.state NOT IN ('waiting', 'queued', 'running') LIMIT ?2)";

/// Whether segment `?1` holds a body received at or after `?2`, or a queued or running job's.
const SEGMENT_NEEDED: &str = "SELECT EXISTS (
    SELECT 1 FROM deliveries d LEFT JOIN jobs j ON j.delivery = d.id
    WHERE d.body_segment = ?1
      AND (d.received_at >= ?2 OR j.state IN ('waiting', 'queued', 'running')))";

/// Forgets where the bodies in segment `?1` are (the rows stay).
const DROP_BODIES: &str = "UPDATE deliveries
    SET body_segment = NULL, body_offset = NULL, body_len = NULL, body_crc32 = NULL
    WHERE id IN (SELECT id FROM deliveries WHERE body_segment = ?1 LIMIT ?2)";

/// Whether segment `?1` holds a body received before `?2`.
const HOLDS_BODIES_BEFORE: &str = "SELECT EXISTS (
    SELECT 1 FROM deliveries WHERE body_segment = ?1 AND received_at < ?2)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RefKind;
    use crate::store::{Action, Jobs, NewDelivery, NewJob, Reader, Rejection, Store, WriterStats};

    const DAY: Duration = Duration::from_secs(86_400);

    fn limits() -> RetentionLimits {
        RetentionLimits {
            rejections_max_age: 30 * DAY,
            rejections_max_count: 1000,
            logs_max_age: 90 * DAY,
            bodies_max_age: 30 * DAY,
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        store: Store,
        writer: std::thread::JoinHandle<()>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let histogram = |name: &str| {
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(name, name)).unwrap()
        };
        let stats = WriterStats {
            batch_size: histogram("batch"),
            commit_seconds: histogram("commit"),
        };
        let (store, writer) = Store::open(dir.path(), 16, stats).unwrap();
        Fixture { dir, store, writer }
    }

    impl Fixture {
        fn sweep(&self, limits: &RetentionLimits, now: OffsetDateTime) -> Swept {
            let mut sweeper = Sweeper::open(self.dir.path()).unwrap();
            sweeper.sweep(limits, now, &|| true).unwrap()
        }

        async fn reject(&self, id: &str, received_at: OffsetDateTime) {
            assert!(self.store.record_rejection(Rejection {
                source: Some("203.0.113.7".into()),
                project: "p".into(),
                forge: Some("github"),
                delivery_id: Some(id.into()),
                event: Some("push".into()),
                reason: "signature in X-Hub-Signature-256 does not match the body".into(),
                received_at,
            }));
            self.store.probe().await.unwrap(); // queued in order: the rejection is in
        }

        /// Records a delivery, and queues a job for it when `queue`.
        async fn deliver(&self, id: &str, received_at: OffsetDateTime, queue: bool) {
            let action = if queue {
                Action::Queue(NewJob {
                    pull: None,
                    waits_for_approval: false,
                    git_ref: "refs/heads/main".into(),
                    ref_kind: RefKind::Branch,
                    ref_name: "main".into(),
                    sha: "a".repeat(40),
                })
            } else {
                Action::Record {
                    outcome: "ignored",
                    reason: "not a push".into(),
                }
            };
            self.store
                .record(NewDelivery {
                    delivery_id: id.into(),
                    project: "p".into(),
                    forge: "github",
                    event: "push".into(),
                    repository: None,
                    git_ref: None,
                    sha: None,
                    headers_json: "{}".into(),
                    event_json: Some(format!("{{\"delivery_id\":\"{id}\"}}")),
                    body: bytes::Bytes::from(format!("body of {id}")),
                    received_at,
                    action,
                    reports: Vec::new(),
                    origin: crate::store::Origin::Webhook,
                })
                .await
                .unwrap();
        }

        async fn rotate(&self) {
            assert!(self.store.rotate_segment());
            self.store.probe().await.unwrap();
        }

        fn reader(&self) -> Reader {
            Reader::open(self.dir.path()).unwrap()
        }

        fn delivery_ids(&self) -> Vec<String> {
            let rows = self.reader().deliveries(1000).unwrap();
            rows.into_iter().filter_map(|r| r.delivery_id).collect()
        }

        fn segment_files(&self) -> usize {
            segments::numbers(&bodies_dir(self.dir.path()))
                .unwrap()
                .len()
        }

        fn stop(self) {
            drop(self.store);
            self.writer.join().unwrap();
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[tokio::test]
    async fn rejections_past_their_age_are_deleted_and_younger_ones_kept() {
        let store = fixture();
        store.reject("old", now() - 31 * DAY).await;
        store.reject("young", now() - 29 * DAY).await;

        let swept = store.sweep(&limits(), now());

        assert_eq!(swept.rejections, 1);
        assert_eq!(store.delivery_ids(), ["young"]);
        store.stop();
    }

    #[tokio::test]
    async fn only_the_newest_rejections_up_to_the_count_are_kept() {
        let store = fixture();
        for n in 0..7 {
            store.reject(&format!("r{n}"), now()).await;
        }
        let few = RetentionLimits {
            rejections_max_count: 3,
            ..limits()
        };

        let swept = store.sweep(&few, now());

        assert_eq!(swept.rejections, 4);
        assert_eq!(store.delivery_ids(), ["r6", "r5", "r4"]);
        store.stop();
    }

    #[tokio::test]
    async fn logs_of_finished_jobs_past_their_age_are_deleted_and_a_running_jobs_kept() {
        let store = fixture();
        store.deliver("finished", now(), true).await;
        store.deliver("running", now(), true).await;
        let jobs = Jobs::open(store.dir.path(), "test").unwrap();
        let finished = jobs.claim_next(DAY).unwrap().unwrap().id;
        jobs.append_log(finished, "web", "check", "old line\n")
            .unwrap();
        jobs.finish(finished, crate::domain::JobState::Success, None)
            .unwrap();
        let running = jobs.claim_next(DAY).unwrap().unwrap().id;
        jobs.append_log(running, "web", "check", "still going\n")
            .unwrap();

        let swept = store.sweep(&limits(), now() + 91 * DAY);

        assert_eq!(swept.log_chunks, 1);
        assert!(jobs.logs(finished, None, 0).unwrap().is_empty());
        assert_eq!(jobs.logs(running, None, 0).unwrap().len(), 1);
        store.stop();
    }

    #[tokio::test]
    async fn a_segment_whose_bodies_are_all_past_their_age_goes_and_its_rows_stay_without_body() {
        let store = fixture();
        store.deliver("old-1", now() - 31 * DAY, false).await;
        store.deliver("old-2", now() - 31 * DAY, false).await;
        store.rotate().await;
        store.deliver("young", now(), false).await;

        let swept = store.sweep(&limits(), now());

        assert_eq!((swept.bodies, swept.segments), (2, 1));
        assert_eq!(store.segment_files(), 1);
        let rows = store.reader().deliveries(10).unwrap();
        assert_eq!(rows.len(), 3, "the rows stay");
        let bodies: Vec<Option<Vec<u8>>> = rows
            .iter()
            .map(|row| store.reader().body(row.id).unwrap())
            .collect();
        assert_eq!(bodies, [Some(b"body of young".to_vec()), None, None]);
        store.stop();
    }

    #[tokio::test]
    async fn a_segment_holding_a_queued_jobs_body_is_kept() {
        let store = fixture();
        store.deliver("queued", now() - 31 * DAY, true).await;
        store.rotate().await;

        let swept = store.sweep(&limits(), now());

        assert_eq!((swept.bodies, swept.segments), (0, 0));
        let row = store.reader().deliveries(1).unwrap().remove(0);
        assert!(store.reader().body(row.id).unwrap().is_some());
        assert!(row.event_json.is_some());
        store.stop();
    }

    #[tokio::test]
    async fn the_segment_being_written_is_kept_and_a_new_one_asked_for() {
        let store = fixture();
        store.deliver("old", now() - 31 * DAY, false).await;

        let swept = store.sweep(&limits(), now());

        assert_eq!(swept.segments, 0);
        assert!(swept.rotate);
        assert_eq!(store.segment_files(), 1);
        store.stop();
    }
}
