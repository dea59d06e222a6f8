use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{CommitSha, DeliveryId, GitRef, ProjectName, RefKind};
use crate::forge::{ForgeKind, Push};

/// One accepted push, in deploybot's own terms: what the worker builds from. Stored as JSON
/// with the delivery; this is deploybot's format, not any forge's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushEvent {
    pub forge: String,
    pub project: String,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: GitRef,
    pub kind: RefKind,
    /// The branch or tag name (also in `git_ref`; kept in the stored format).
    pub name: String,
    pub sha: CommitSha,
    pub before: CommitSha,
    pub pusher: String,
    pub clone_url: String,
    pub head_commit_message: Option<String>,
    pub delivery_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The pull request, for a job of a pull request's head (absent in events stored before
    /// pull requests were built).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullSummary>,
}

/// What a pull request job says of its request: pages, statuses and the rules for forks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullSummary {
    pub number: u64,
    pub title: String,
    pub author: String,
    pub source_branch: String,
    pub target_branch: String,
    /// Its head lives in another repository than the base: untrusted code.
    pub from_fork: bool,
}

impl PushEvent {
    pub fn new(
        forge: ForgeKind,
        project: &ProjectName,
        push: Push,
        delivery_id: DeliveryId,
        received_at: OffsetDateTime,
    ) -> PushEvent {
        PushEvent {
            forge: forge.as_str().to_owned(),
            project: project.to_string(),
            repository: push.repository.to_string(),
            kind: push.git_ref.kind(),
            name: push.git_ref.name().to_owned(),
            git_ref: push.git_ref,
            sha: push.sha,
            before: push.before,
            pusher: push.pusher,
            clone_url: push.clone_url,
            head_commit_message: push.head_commit_message,
            delivery_id: delivery_id.to_string(),
            received_at,
            pull: None,
        }
    }
}
