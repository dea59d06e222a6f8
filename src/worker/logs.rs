//! Build logs: every line masked (each configured secret value becomes `***`) before it is
//! kept, capped per job with a visible truncation line, and written to the store in chunks as
//! it arrives, so `deploybot logs --follow` shows a running step.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::StageName;
use crate::executor::LogSink;
pub use crate::masking::Masker;
use crate::store::Jobs;

/// How many of a service's last lines a failure report quotes, and how much of each.
pub const TAIL_LINES: usize = 20;
const TAIL_LINE_BYTES: usize = 400;
/// The most of a failure's reason a stage detail, status or chat message carries.
pub const REASON_BYTES: usize = 1000;

/// `text` cut to at most `max` bytes on a character boundary, the cut marked with `…`.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
const FLUSH_EVERY: Duration = Duration::from_millis(200);

struct Pending {
    chunks: Vec<(String, String, String)>,
    written: usize,
    truncated: bool,
    tails: std::collections::HashMap<String, VecDeque<String>>,
}

/// One job's log. Cheap to clone; [`JobLog::stage`] gives the sink for one service's stage.
#[derive(Clone)]
pub struct JobLog {
    job: i64,
    limit: usize,
    masker: Masker,
    jobs: Arc<Jobs>,
    pending: Arc<Mutex<Pending>>,
}

impl JobLog {
    pub fn new(job: i64, limit: usize, masker: Masker, jobs: Arc<Jobs>) -> JobLog {
        JobLog {
            job,
            limit,
            masker,
            jobs,
            pending: Arc::new(Mutex::new(Pending {
                chunks: Vec::new(),
                written: 0,
                truncated: false,
                tails: Default::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    pub fn stage(&self, service: &str, stage: StageName) -> StageLog {
        StageLog {
            log: self.clone(),
            service: service.to_owned(),
            stage,
        }
    }

    fn push(&self, service: &str, stage: &str, line: &str) {
        let line = self.masker.mask(line);
        let mut pending = self.lock();
        let tail = pending.tails.entry(service.to_owned()).or_default();
        tail.push_back(clip(&line, TAIL_LINE_BYTES));
        if tail.len() > TAIL_LINES {
            tail.pop_front();
        }
        if pending.truncated {
            return;
        }
        if pending.written + line.len() + 1 > self.limit {
            pending.truncated = true;
            let note = format!(
                "[deploybot] log truncated: this job's log reached its limit of {} bytes",
                self.limit
            );
            pending
                .chunks
                .push((service.to_owned(), stage.to_owned(), note));
            return;
        }
        pending.written += line.len() + 1;
        pending
            .chunks
            .push((service.to_owned(), stage.to_owned(), line));
    }

    /// The last lines of a service's output (masked), for failure reports.
    pub fn tail(&self, service: &str) -> Vec<String> {
        self.lock()
            .tails
            .get(service)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes what has accumulated, one chunk per (service, stage) run of lines.
    pub async fn flush(&self) {
        let chunks = std::mem::take(&mut self.lock().chunks);
        if chunks.is_empty() {
            return;
        }
        let (jobs, job) = (self.jobs.clone(), self.job);
        let written = tokio::task::spawn_blocking(move || {
            let mut groups: Vec<(String, String, String)> = Vec::new();
            for (service, stage, line) in chunks {
                match groups.last_mut() {
                    Some((s, st, text)) if *s == service && *st == stage => {
                        text.push_str(&line);
                        text.push('\n');
                    }
                    _ => groups.push((service, stage, format!("{line}\n"))),
                }
            }
            for (service, stage, text) in groups {
                jobs.append_log(job, &service, &stage, &text)?;
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .await;
        if let Ok(Err(e)) | Err(e) = written.map_err(crate::store::StoreError::from) {
            tracing::warn!(job, error = %e, "Could not store build log lines");
        }
    }

    /// Flushes every 200 ms until `stop` is cancelled, then once more.
    pub async fn flush_until(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(FLUSH_EVERY) => self.flush().await,
                () = stop.cancelled() => break,
            }
        }
        self.flush().await;
    }
}

/// The sink for one service's stage.
pub struct StageLog {
    log: JobLog,
    service: String,
    stage: StageName,
}

impl StageLog {
    pub fn note(&self, text: &str) {
        self.log.push(
            &self.service,
            self.stage.as_str(),
            &format!("[deploybot] {text}"),
        );
    }
}

impl LogSink for StageLog {
    fn line(&self, text: &str) {
        self.log.push(&self.service, self.stage.as_str(), text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_log(limit: usize) -> (tempfile::TempDir, Arc<Jobs>, JobLog) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn =
            crate::store::connection::open_connection(&dir.path().join("deploybot.db")).unwrap();
        crate::store::schema::migrate(&mut conn).unwrap();
        conn.execute_batch(
            "INSERT INTO deliveries (project, outcome, received_at) VALUES ('p', 'queued', 't');
             INSERT INTO jobs (delivery, project, git_ref, ref_kind, ref_name, sha, state,
                               created_at, updated_at)
             VALUES (1, 'p', 'refs/tags/v1', 'tag', 'v1', 'x', 'running', 't', 't');",
        )
        .unwrap();
        let jobs = Arc::new(Jobs::open(dir.path(), "test").unwrap());
        let log = JobLog::new(1, limit, Masker::new(vec!["hunter2".into()]), jobs.clone());
        (dir, jobs, log)
    }

    #[tokio::test]
    async fn a_log_past_its_limit_ends_with_a_visible_truncation_line() {
        let (_dir, jobs, log) = job_log(20);
        let sink = log.stage("web", StageName::Compile);
        for line in ["0123456789", "abcdefghij", "never stored"] {
            sink.line(line);
        }
        log.flush().await;

        let text: String = jobs
            .logs(1, None, 0)
            .unwrap()
            .into_iter()
            .map(|c| c.text)
            .collect();
        assert_eq!(
            text,
            "0123456789\n[deploybot] log truncated: this job's log reached its limit of 20 bytes\n"
        );
        assert_eq!(
            log.tail("web").last().unwrap(),
            "never stored",
            "the tail still sees it"
        );
    }

    #[tokio::test]
    async fn stored_lines_are_masked() {
        let (_dir, jobs, log) = job_log(1000);
        log.stage("web", StageName::Check).line("password=hunter2");
        log.flush().await;
        let chunks = jobs.logs(1, Some("web"), 0).unwrap();
        assert_eq!(chunks[0].text, "password=***\n");
    }

    #[test]
    fn clipped_text_ends_on_a_character_boundary_with_a_mark() {
        assert_eq!(clip("short", 10), "short");
        let clipped = clip(&"é".repeat(100), 11);
        assert!(clipped.len() <= 11 && clipped.ends_with('…'), "{clipped}");
    }
}
