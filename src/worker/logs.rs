//! Build logs: every line masked (each configured secret value becomes `***`) before it is
//! kept, capped per job with a visible truncation line, and written to the store in chunks as
//! it arrives, so `deploybot logs --follow` shows a running step.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::docker::LogSink;
use crate::store::Jobs;

/// How many of a service's last lines a failure report quotes.
pub const TAIL_LINES: usize = 20;
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Replaces secret values in text. Values shorter than 3 characters are not masked: they
/// would turn every log into asterisks, and config validation should refuse them anyway.
#[derive(Clone)]
pub struct Masker {
    secrets: Arc<Vec<String>>,
}

impl Masker {
    pub fn new(mut secrets: Vec<String>) -> Masker {
        secrets.retain(|s| s.len() >= 3);
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker {
            secrets: Arc::new(secrets),
        }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut masked = text.to_owned();
        for secret in self.secrets.iter() {
            if masked.contains(secret.as_str()) {
                masked = masked.replace(secret.as_str(), "***");
            }
        }
        masked
    }
}

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

    pub fn stage(&self, service: &str, stage: &str) -> StageLog {
        StageLog {
            log: self.clone(),
            service: service.to_owned(),
            stage: stage.to_owned(),
        }
    }

    fn push(&self, service: &str, stage: &str, line: &str) {
        let line = self.masker.mask(line);
        let mut pending = self.lock();
        let tail = pending.tails.entry(service.to_owned()).or_default();
        tail.push_back(line.clone());
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
        if let Ok(Err(e)) | Err(e) =
            written.map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))
        {
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
    stage: String,
}

impl StageLog {
    pub fn note(&self, text: &str) {
        self.log
            .push(&self.service, &self.stage, &format!("[deploybot] {text}"));
    }
}

impl LogSink for StageLog {
    fn line(&self, text: &str) {
        self.log.push(&self.service, &self.stage, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_value_is_masked_longest_first() {
        let masker = Masker::new(vec!["s3cret".into(), "s3cret-and-more".into(), "x".into()]);
        assert_eq!(
            masker.mask("token=s3cret-and-more pw=s3cret x"),
            "token=*** pw=*** x"
        );
    }
}
