//! Reporting back: commit statuses on the forge and chat messages, through an outbox.
//!
//! Every report is a row written in the same transaction as the state change that causes it
//! (intake's commit for the first `pending`, the worker's stage and job updates after that). The
//! [`sender`] delivers rows with retries and backoff, survives restarts (the rows are in the
//! store), and gives up only after `report.max_attempts`, visibly. Per (sha, context) only the
//! newest report is ever sent: an older one still waiting is superseded, so a late `pending`
//! never overwrites a final state. Each destination is one [`Notifier`] implementation:
//! `github.rs`, `gitlab.rs`, `chat.rs`; `text.rs` is the one place that words them, and
//! `mrkdwn.rs` escapes and bounds what chat text takes from outside.

mod chat;
mod github;
mod gitlab;
mod mrkdwn;
pub(crate) mod sender;
pub mod text;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{NewReport, OutboxRow};

pub(crate) use chat::SlackWebhook;
pub(crate) use github::GitHubStatuses;
pub(crate) use gitlab::GitLabStatuses;

/// A commit status's state, in deploybot's terms (each forge maps it to its own words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    Pending,
    Running,
    Success,
    Failure,
    Error,
}

/// What one outbox row asks a notifier to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Report {
    Status {
        /// `owner/name` or GitLab's `group/project`.
        repository: String,
        sha: String,
        git_ref: String,
        /// `deploybot` or `deploybot/<service>`.
        context: String,
        state: StatusState,
        description: String,
        target_url: Option<String>,
    },
    Chat {
        /// Slack-compatible message body (`text` plus `blocks`).
        message: serde_json::Value,
    },
}

impl Report {
    /// Reports with the same key replace one another: only the newest is sent.
    pub fn key(&self) -> String {
        match self {
            Report::Status { sha, context, .. } => format!("{sha}|{context}"),
            Report::Chat { .. } => String::new(),
        }
    }

    /// This report as an outbox row to write with a state change, for `project` through
    /// `channel` (`forge` or `chat:<name>`). A status's link may say `{job}` where the job's
    /// id is not known yet ([`Report::from_outbox`] fills it in).
    pub fn queued(&self, project: &str, channel: String, job: Option<i64>) -> NewReport {
        NewReport {
            project: project.to_owned(),
            channel,
            job,
            key: self.key(),
            // Serializing plain fields cannot fail; an empty payload would be given up visibly.
            payload: serde_json::to_string(self).unwrap_or_default(),
        }
    }

    /// The report an outbox row carries, its link naming the row's job.
    pub fn from_outbox(row: &OutboxRow) -> Result<Report, serde_json::Error> {
        let mut report: Report = serde_json::from_str(&row.payload)?;
        if let (
            Report::Status {
                target_url: Some(url),
                ..
            },
            Some(job),
        ) = (&mut report, row.job)
        {
            *url = url.replace("{job}", &job.to_string());
        }
        Ok(report)
    }
}

/// Why a delivery did not happen, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    pub reason: String,
    /// The server said when to come back (Retry-After, rate-limit reset).
    pub retry_after: Option<Duration>,
    /// No retry will help (a 4xx other than 408/429, a rejected token).
    pub permanent: bool,
}

impl DeliveryError {
    pub fn transient(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            reason: reason.into(),
            retry_after: None,
            permanent: false,
        }
    }

    /// Classifies an HTTP answer: 5xx, 408 and 429 are worth retrying; other 4xx are not.
    pub fn from_status(status: u16, retry_after: Option<Duration>, detail: &str) -> DeliveryError {
        let detail: String = detail.chars().take(200).collect();
        DeliveryError {
            reason: format!("HTTP {status}: {detail}"),
            retry_after,
            permanent: (400..500).contains(&status) && status != 408 && status != 429,
        }
    }
}

/// One destination for reports.
pub trait Notifier: Send + Sync {
    fn deliver(&self, report: &Report) -> impl Future<Output = Result<(), DeliveryError>> + Send;
}

/// The destinations a report can have (one enum, so the sender needs no boxed futures).
pub enum ChatOrForge {
    GitHub(GitHubStatuses),
    GitLab(GitLabStatuses),
    Chat(SlackWebhook),
}

impl Notifier for ChatOrForge {
    async fn deliver(&self, report: &Report) -> Result<(), DeliveryError> {
        match self {
            ChatOrForge::GitHub(github) => github.deliver(report).await,
            ChatOrForge::GitLab(gitlab) => gitlab.deliver(report).await,
            ChatOrForge::Chat(chat) => chat.deliver(report).await,
        }
    }
}

/// Sends a prepared request and classifies the answer. Errors never carry the URL (a chat
/// webhook's URL is a secret).
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    what: &str,
) -> Result<(), DeliveryError> {
    let response = request.send().await.map_err(|e| {
        DeliveryError::transient(format!("{what} unreachable: {}", e.without_url()))
    })?;
    let code = response.status().as_u16();
    if (200..300).contains(&code) {
        return Ok(());
    }
    let wait = retry_after(response.headers());
    let text = response.text().await.unwrap_or_default();
    Err(DeliveryError::from_status(code, wait, &text))
}

/// `Retry-After` as seconds (the form GitHub, GitLab and Slack send).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
