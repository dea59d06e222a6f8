//! Which pull request (merge request) events of a project build, drafts, and what happens to
//! a request whose head lives in a fork.

use crate::forge::{ForgeKind, PullAction};

/// A project's rules for pull requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestPolicy {
    /// The events that build the request's head (the forge's words in the file).
    pub events: Vec<PullAction>,
    /// Whether a draft builds.
    pub drafts: bool,
    pub forks: ForkPolicy,
    /// Whether a fork's steps and image builds get the network (only where the project's do).
    pub fork_network: bool,
}

/// What happens to a pull request from a fork: its code is not the project's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkPolicy {
    /// It waits for an operator's approval before anything runs (the default).
    Approve,
    /// It builds at once, confined as every fork's build is.
    Build,
    /// It is recorded and nothing runs.
    Ignore,
}

/// The forge's words for the events that may build, and what each means.
fn event_words(forge: ForgeKind) -> &'static [(&'static str, PullAction)] {
    match forge {
        ForgeKind::Github => &[
            ("opened", PullAction::Opened),
            ("reopened", PullAction::Reopened),
            ("synchronize", PullAction::NewCommits),
            ("ready_for_review", PullAction::ReadyForReview),
        ],
        // A merge request leaving draft is an `update` without new commits: it builds with
        // its next commits.
        ForgeKind::Gitlab => &[
            ("open", PullAction::Opened),
            ("reopen", PullAction::Reopened),
            ("update", PullAction::NewCommits),
        ],
    }
}

/// The policy from a project's raw values, or the message naming what is wrong (the caller
/// names the field).
pub fn policy(
    forge: ForgeKind,
    events: Option<&[String]>,
    drafts: bool,
    forks: Option<&str>,
    fork_network: bool,
) -> Result<PullRequestPolicy, (&'static str, String)> {
    let words = event_words(forge);
    let events = match events {
        None => words.iter().map(|(_, action)| action.clone()).collect(),
        Some(asked) => asked
            .iter()
            .map(|word| {
                words
                    .iter()
                    .find(|(known, _)| known == word)
                    .map(|(_, action)| action.clone())
                    .ok_or_else(|| {
                        let known: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
                        (
                            "pull_request_events",
                            format!(
                                "\"{word}\" is not a {} pull request event that builds (one of {})",
                                forge.as_str(),
                                known.join(", ")
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let forks = match forks.unwrap_or("approve") {
        "approve" => ForkPolicy::Approve,
        "build" => ForkPolicy::Build,
        "ignore" => ForkPolicy::Ignore,
        other => {
            return Err((
                "fork_pull_requests",
                format!("\"{other}\" is not one of approve, build, ignore"),
            ))
        }
    };
    Ok(PullRequestPolicy {
        events,
        drafts,
        forks,
        fork_network,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_opened_reopened_and_new_commits_build_and_forks_wait_for_approval() {
        let github = policy(ForgeKind::Github, None, false, None, false).unwrap();
        assert_eq!(
            github.events,
            [
                PullAction::Opened,
                PullAction::Reopened,
                PullAction::NewCommits,
                PullAction::ReadyForReview
            ]
        );
        assert_eq!((github.drafts, github.forks), (false, ForkPolicy::Approve));
        let gitlab = policy(ForgeKind::Gitlab, None, false, None, false).unwrap();
        assert_eq!(
            gitlab.events,
            [
                PullAction::Opened,
                PullAction::Reopened,
                PullAction::NewCommits
            ]
        );
    }

    #[test]
    fn an_event_is_named_in_its_forges_words() {
        let gitlab = policy(
            ForgeKind::Gitlab,
            Some(&["update".into()]),
            true,
            Some("build"),
            false,
        );
        assert_eq!(
            gitlab.map(|p| (p.events, p.forks)),
            Ok((vec![PullAction::NewCommits], ForkPolicy::Build))
        );
        let (field, message) = policy(
            ForgeKind::Gitlab,
            Some(&["synchronize".into()]),
            false,
            None,
            false,
        )
        .unwrap_err();
        assert_eq!(field, "pull_request_events");
        assert_eq!(
            message,
            "\"synchronize\" is not a gitlab pull request event that builds (one of open, reopen, update)"
        );
    }

    #[test]
    fn an_unknown_fork_rule_is_named() {
        let (field, message) =
            policy(ForgeKind::Github, None, false, Some("trust"), false).unwrap_err();
        assert_eq!(field, "fork_pull_requests");
        assert_eq!(message, "\"trust\" is not one of approve, build, ignore");
    }
}
