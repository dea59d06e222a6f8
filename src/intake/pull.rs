//! What a pull request (merge request) event does: build the request's head, cancel its jobs
//! (closed or merged), or nothing, as the project's rules say.

use crate::config::{ForkPolicy, Project};
use crate::domain::{CommitSha, GitRef};
use crate::forge::{PullAction, PullRequest, Push};

use super::event::PullSummary;

/// What intake does with a pull request event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PullOutcome {
    /// Queue a job of the request's head.
    Build(Box<PullBuild>),
    /// Cancel the queued and running jobs of the request's head ref: why (the delivery's
    /// reason, and the jobs' error).
    Cancel {
        git_ref: GitRef,
        reason: String,
        error: String,
    },
    /// Record it and do nothing: why.
    Ignore(String),
}

/// A pull request's head as a push to build, what its pages show of the request, and
/// whether it waits for an operator's approval first.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PullBuild {
    pub(super) push: Push,
    pub(super) summary: PullSummary,
    pub(super) waits_for_approval: bool,
}

/// The most of a branch name or title kept in a recorded reason.
const NAME_CHARS: usize = 100;

pub(super) fn decide(project: &Project, pull: PullRequest) -> PullOutcome {
    let head = match GitRef::parse(&pull.head_ref(project.forge)) {
        Ok(head) => head,
        Err(e) => return PullOutcome::Ignore(format!("its head ref: {e}")),
    };
    let what = format!("{} ({})", head.label(), pull.action);
    let rules = &project.pull_requests;
    if matches!(pull.action, PullAction::Closed | PullAction::Merged) {
        return PullOutcome::Cancel {
            reason: format!("{what}: its queued and running jobs are canceled"),
            error: format!("canceled: {} was {}", head.label(), pull.action),
            git_ref: head,
        };
    }
    if !rules.events.contains(&pull.action) {
        return PullOutcome::Ignore(format!(
            "{what}: not an event this project builds (pull_request_events)"
        ));
    }
    if pull.draft && !rules.drafts {
        return PullOutcome::Ignore(format!(
            "{what}: a draft; this project builds drafts only with pull_request_drafts = true"
        ));
    }
    let waits_for_approval = match (pull.from_fork, rules.forks) {
        (false, _) | (true, ForkPolicy::Build) => false,
        (true, ForkPolicy::Approve) => true,
        (true, ForkPolicy::Ignore) => {
            let branch: String = pull.source_branch.chars().take(NAME_CHARS).collect();
            return PullOutcome::Ignore(format!(
                "{what} from a fork's branch {branch}: fork_pull_requests = \"ignore\""
            ));
        }
    };
    PullOutcome::Build(Box::new(build(project, head, pull, waits_for_approval)))
}

fn build(
    project: &Project,
    head: GitRef,
    pull: PullRequest,
    waits_for_approval: bool,
) -> PullBuild {
    let summary = PullSummary {
        number: pull.number,
        title: pull.title.chars().take(255).collect(),
        author: pull.author.chars().take(255).collect(),
        source_branch: pull.source_branch.chars().take(255).collect(),
        target_branch: pull.target_branch.chars().take(255).collect(),
        from_fork: pull.from_fork,
    };
    let push = Push {
        repository: pull.repository,
        git_ref: head,
        sha: pull.head_sha,
        // A request has no "before"; its base is another branch.
        before: CommitSha::zero(),
        pusher: summary.author.clone(),
        clone_url: project.clone_url.clone(),
        head_commit_message: Some(summary.title.clone()),
    };
    PullBuild {
        push,
        summary,
        waits_for_approval,
    }
}
