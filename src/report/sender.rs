//! Delivers the outbox: oldest first, newest-only per (sha, context), retrying 5xx, timeouts
//! and 429 with exponential backoff and jitter (a server's `Retry-After` or GitHub's rate-limit
//! reset wins), and giving up after `report.max_attempts` — visibly: a log line, the
//! `deploybot_reports_total{outcome="failed"}` metric, and the row's state with its last error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{ChatOrForge, DeliveryError, Notifier};
use crate::config::{ReportSettings, Settings};
use crate::forge::ForgeKind;
use crate::metrics::Metrics;
use crate::store::{Outbox, OutboxRow, StoreError};

/// Retries never wait longer than this (unless the server asks for longer).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub struct Sender {
    outbox: Arc<Outbox>,
    /// By project (`forge`) or by `chat:<name>`.
    destinations: HashMap<String, ChatOrForge>,
    settings: ReportSettings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Sender {
    /// Builds a client per project with a status token and per chat channel. A client that
    /// cannot be built is logged and its reports wait (and eventually fail visibly).
    pub fn new(
        settings: &Settings,
        outbox: Arc<Outbox>,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Sender {
        let timeout = settings.report.timeout;
        let mut destinations = HashMap::new();
        for project in &settings.projects {
            let Some(statuses) = &project.statuses else {
                continue;
            };
            let built = match project.forge {
                ForgeKind::Github => {
                    super::GitHubStatuses::new(&statuses.api_url, &statuses.auth, timeout)
                        .map(ChatOrForge::GitHub)
                }
                ForgeKind::Gitlab => super::GitLabStatuses::new(
                    &statuses.api_url,
                    statuses.auth.secret().clone(),
                    timeout,
                )
                .map(ChatOrForge::GitLab),
            };
            match built {
                Ok(destination) => {
                    destinations.insert(format!("forge:{}", project.name), destination);
                }
                Err(e) => {
                    tracing::error!(project = %project.name, error = %e, "Commit statuses are off for this project")
                }
            }
        }
        for channel in &settings.chat {
            match super::SlackWebhook::new(channel.webhook_url.clone(), timeout) {
                Ok(webhook) => {
                    destinations
                        .insert(format!("chat:{}", channel.name), ChatOrForge::Chat(webhook));
                }
                Err(e) => {
                    tracing::error!(channel = %channel.name, error = %e, "Chat channel is off")
                }
            }
        }
        Sender {
            outbox,
            destinations,
            settings: settings.report.clone(),
            wake,
            metrics,
        }
    }

    fn destination(&self, row: &OutboxRow) -> Option<&ChatOrForge> {
        let key = if row.channel == "forge" {
            format!("forge:{}", row.project)
        } else {
            row.channel.clone()
        };
        self.destinations.get(&key)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Outbox) -> Result<T, StoreError> + Send + 'static,
    ) -> Option<T> {
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || f(&outbox)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Outbox store call failed");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "Outbox store call panicked");
                None
            }
        }
    }

    /// Delivers until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let due = self
                .blocking(|o| o.due(now_ms(), 64))
                .await
                .unwrap_or_default();
            for row in due {
                if stop.is_cancelled() {
                    return;
                }
                self.handle(row).await;
            }
            if let Some(counts) = self.blocking(|o| o.counts()).await {
                self.metrics.outbox_pending.set(counts.pending);
            }
            let next = self.blocking(|o| o.next_due()).await.flatten();
            let wait = next
                .map(|at| Duration::from_millis((at - now_ms()).clamp(10, 1000) as u64))
                .unwrap_or(Duration::from_secs(1));
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn handle(&self, row: OutboxRow) {
        let id = row.id;
        let kind = if row.channel == "forge" {
            "status"
        } else {
            "chat"
        };
        let stale = {
            let row = row.clone();
            self.blocking(move |o| o.superseded(&row))
                .await
                .unwrap_or(false)
        };
        if stale {
            self.count(kind, "superseded");
            let _ = self
                .blocking(move |o| o.finish(id, "superseded", None))
                .await;
            return;
        }
        let Some(destination) = self.destination(&row) else {
            let reason = format!(
                "no destination configured for {} {}",
                row.project, row.channel
            );
            return self.give_up(id, kind, reason).await;
        };
        let report = match crate::report::Report::from_outbox(&row) {
            Ok(report) => report,
            Err(e) => {
                return self
                    .give_up(id, kind, format!("unreadable report: {e}"))
                    .await
            }
        };
        match destination.deliver(&report).await {
            Ok(()) => {
                self.count(kind, "sent");
                let _ = self.blocking(move |o| o.finish(id, "sent", None)).await;
            }
            Err(error) => self.failed(&row, kind, error).await,
        }
    }

    /// Ends a report that no attempt can deliver, visibly (log, metric, its row's reason).
    async fn give_up(&self, id: i64, kind: &'static str, reason: String) {
        tracing::error!(report = id, %reason, "Report given up");
        self.count(kind, "failed");
        let _ = self
            .blocking(move |o| o.finish(id, "failed", Some(&reason)))
            .await;
    }

    async fn failed(&self, row: &OutboxRow, kind: &'static str, error: DeliveryError) {
        let id = row.id;
        let attempts = row.attempts + 1;
        if error.permanent || attempts >= i64::from(self.settings.max_attempts) {
            tracing::error!(report = id, project = %row.project, channel = %row.channel, attempts, reason = %error.reason, "Report given up");
            self.count(kind, "failed");
            let reason = format!("gave up after {attempts} attempt(s): {}", error.reason);
            let _ = self
                .blocking(move |o| o.finish(id, "failed", Some(&reason)))
                .await;
            return;
        }
        let delay = error
            .retry_after
            .unwrap_or_else(|| backoff(self.settings.retry_base, attempts));
        tracing::warn!(report = id, project = %row.project, channel = %row.channel, attempts, retry_in_ms = delay.as_millis() as u64, reason = %error.reason, "Report not delivered; will retry");
        self.count(kind, "retried");
        let next = now_ms() + delay.as_millis() as i64;
        let reason = error.reason;
        let _ = self.blocking(move |o| o.retry_at(id, next, &reason)).await;
    }

    fn count(&self, kind: &str, outcome: &str) {
        self.metrics
            .reports
            .with_label_values(&[kind, outcome])
            .inc();
    }
}

/// `base × 2^(attempts-1)`, capped, with "equal jitter" (between half and all of it) so a
/// burst of failures does not retry in lockstep.
pub fn backoff(base: Duration, attempts: i64) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    let full = base.saturating_mul(1u32 << exponent).min(MAX_BACKOFF);
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0) as f64
        / 1e9;
    full / 2 + full.mul_f64(jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        for attempts in 1..6 {
            let full = Duration::from_secs(1 << (attempts - 1));
            let delay = backoff(base, attempts);
            assert!(delay >= full / 2 && delay <= full, "{attempts}: {delay:?}");
        }
        assert!(backoff(base, 30) <= MAX_BACKOFF);
    }
}
