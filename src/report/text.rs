//! The words of every status and message, for every forge and chat: one place, so they read
//! the same everywhere. Descriptions fit GitHub's 140-character limit.

use super::{Report, StatusState};

/// GitHub refuses longer status descriptions.
pub const DESCRIPTION_LIMIT: usize = 140;

/// The overall context and one per service.
pub const CONTEXT: &str = "deploybot";

pub fn service_context(service: &str) -> String {
    format!("{CONTEXT}/{service}")
}

/// Cuts `text` to the limit on a character boundary, marking the cut.
pub fn description(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= DESCRIPTION_LIMIT {
        return one_line;
    }
    let cut: String = one_line.chars().take(DESCRIPTION_LIMIT - 1).collect();
    format!("{cut}…")
}

/// Where a status links: deploybot's page for the job, when a base URL is configured.
pub fn target_url(base_url: Option<&str>, job: i64) -> Option<String> {
    base_url.map(|base| format!("{}/jobs/{job}", base.trim_end_matches('/')))
}

/// A commit status.
pub struct StatusFor<'a> {
    pub repository: &'a str,
    pub sha: &'a str,
    pub git_ref: &'a str,
    pub base_url: Option<&'a str>,
    pub job: i64,
}

impl StatusFor<'_> {
    pub fn status(&self, context: String, state: StatusState, text: &str) -> Report {
        Report::Status {
            repository: self.repository.to_owned(),
            sha: self.sha.to_owned(),
            git_ref: self.git_ref.to_owned(),
            context,
            state,
            description: description(text),
            target_url: target_url(self.base_url, self.job),
        }
    }
}

/// One service's line in a chat message.
pub struct ServiceLine {
    pub service: String,
    pub result: String,
    pub image: Option<String>,
}

/// The chat message for a finished job: project, ref, sha, who pushed, each service with its
/// result and digest, how long it took, the failure's log tail, and a link.
#[allow(clippy::too_many_arguments)]
pub fn chat_message(
    project: &str,
    git_ref: &str,
    sha: &str,
    pusher: &str,
    result: &str,
    seconds: i64,
    services: &[ServiceLine],
    failure_tail: Option<&str>,
    link: Option<&str>,
) -> Report {
    let icon = match result {
        "success" | "deployed" => "✅",
        "rolled_back" => "↩️",
        _ => "❌",
    };
    let result = result.replace('_', " ");
    let short: String = sha.chars().take(7).collect();
    let mut text =
        format!("{icon} {project} {git_ref} ({short}) by {pusher}: {result} in {seconds} s");
    for line in services {
        text.push_str(&format!("\n• {}: {}", line.service, line.result));
        if let Some(image) = &line.image {
            text.push_str(&format!(" — {image}"));
        }
    }
    if let Some(tail) = failure_tail {
        text.push_str(&format!("\n```\n{tail}\n```"));
    }
    if let Some(link) = link {
        text.push_str(&format!("\n{link}"));
    }
    Report::Chat {
        message: serde_json::json!({ "text": text }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_cut_to_githubs_limit_on_a_character_boundary() {
        let long = "é".repeat(200);
        let cut = description(&long);
        assert_eq!(cut.chars().count(), DESCRIPTION_LIMIT);
        assert!(cut.ends_with('…'));
        assert_eq!(description("short\nline"), "short line");
    }

    #[test]
    fn statuses_link_to_the_jobs_page() {
        assert_eq!(
            target_url(Some("https://deploybot.example/"), 7).as_deref(),
            Some("https://deploybot.example/jobs/7")
        );
        assert_eq!(target_url(None, 7), None);
    }
}
