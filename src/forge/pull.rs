//! A pull request (GitHub) or merge request (GitLab) event in deploybot's terms: which
//! request, what happened to it, the commit at its head and where that commit comes from.

use std::fmt;

use crate::domain::{CommitSha, RepoSlug};

/// What happened to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullAction {
    Opened,
    Reopened,
    /// New commits on its head (GitHub `synchronize`, GitLab `update` with `oldrev`).
    NewCommits,
    ReadyForReview,
    Closed,
    Merged,
    /// Anything else (edited, labeled, assigned, an update without new commits): the forge's
    /// own word for it.
    Other(String),
}

impl fmt::Display for PullAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullAction::Opened => "opened",
            PullAction::Reopened => "reopened",
            PullAction::NewCommits => "new commits",
            PullAction::ReadyForReview => "ready for review",
            PullAction::Closed => "closed",
            PullAction::Merged => "merged",
            PullAction::Other(word) => word,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The repository it asks to merge into (the project's).
    pub repository: RepoSlug,
    /// GitHub's number, GitLab's `iid`: `#N` on the forge's pages.
    pub number: u64,
    pub action: PullAction,
    /// The commit at its head: what a build of it checks out.
    pub head_sha: CommitSha,
    /// The branch it comes from (in its own repository).
    pub source_branch: String,
    /// The branch it asks to merge into.
    pub target_branch: String,
    /// Its head lives in another repository than the base: untrusted code.
    pub from_fork: bool,
    pub title: String,
    pub author: String,
    pub draft: bool,
}

impl PullRequest {
    /// The ref the forge keeps its head under in the base repository (GitHub
    /// `refs/pull/N/head`, GitLab `refs/merge-requests/N/head`), fork or not.
    pub fn head_ref(&self, forge: super::ForgeKind) -> String {
        match forge {
            super::ForgeKind::Github => format!("refs/pull/{}/head", self.number),
            super::ForgeKind::Gitlab => format!("refs/merge-requests/{}/head", self.number),
        }
    }
}

/// The published payload `name` under `tests/fixtures/`, parsed by `forge` as `event`, as a
/// pull request (for the forges' tests).
#[cfg(test)]
pub(super) fn parse_fixture(forge: &dyn super::Forge, event: &str, name: &str) -> PullRequest {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match forge.parse(event, super::BodyEncoding::Json, &body) {
        Ok(super::Hook::PullRequest(pull)) => pull,
        other => panic!("{name}: {other:?}"),
    }
}
