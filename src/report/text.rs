//! The words of every status and message, for every forge and chat: one place, so they read
//! the same everywhere. Descriptions fit GitHub's 140-character limit.

use super::{mrkdwn, Report, StatusState};

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

/// Slack cuts a message's `text` at 40,000 characters and asks for no more than 4,000
/// (older Mattermost servers refuse longer posts too); a chat message stays under this.
pub const CHAT_TEXT_LIMIT: usize = 4000;
/// The failure's log tail: its last lines, in a code block of at most this many characters,
/// each line at most `TAIL_LINE_LIMIT`.
const TAIL_LIMIT: usize = 2000;
const TAIL_LINE_LIMIT: usize = 240;
/// A project, pusher, service or result; a ref name (up to 200 characters, escaping grows it);
/// an image reference with its digest; the link to the job.
const NAME_LIMIT: usize = 100;
const REF_LIMIT: usize = 250;
const IMAGE_LIMIT: usize = 250;
const LINK_LIMIT: usize = 300;
/// Room kept for the line that says how many services did not fit.
const MORE_RESERVE: usize = 40;

/// What a chat message says of a finished job. Every value but `seconds` comes from outside
/// (the push, the repository, the build's log) and is escaped before it is shown.
pub struct FinishedJob<'a> {
    pub project: &'a str,
    pub git_ref: &'a str,
    pub sha: &'a str,
    pub pusher: &'a str,
    pub result: &'a str,
    pub seconds: i64,
    pub services: &'a [ServiceLine],
    pub failure_tail: Option<&'a str>,
    pub link: Option<&'a str>,
}

/// The chat message for a finished job: project, ref, sha, who pushed, each service with its
/// result and digest, how long it took, the failure's log tail, and a link. Every value is
/// escaped and cut (`mrkdwn`), so none can mention, link, leave the code block or grow the
/// message past `CHAT_TEXT_LIMIT`.
pub fn chat_message(job: &FinishedJob<'_>) -> Report {
    let headline = headline(job);
    let tail = job
        .failure_tail
        .filter(|t| !t.trim().is_empty())
        .map(|t| format!("\n{}", mrkdwn::code_block(t, TAIL_LIMIT, TAIL_LINE_LIMIT)))
        .unwrap_or_default();
    let link = job
        .link
        .map(|l| format!("\n{}", mrkdwn::inline(l, LINK_LIMIT)))
        .unwrap_or_default();
    let room = CHAT_TEXT_LIMIT.saturating_sub(chars(&headline) + chars(&tail) + chars(&link));
    let services = service_lines(job.services, room);
    let text = format!("{headline}{services}{tail}{link}");
    Report::Chat {
        message: serde_json::json!({
            "text": text,
            // The log tail's code block needs mrkdwn (Slack's default, said anyway).
            "mrkdwn": true,
            // A plain `@channel` or `@team` in a value stays text, never a mention.
            "link_names": false,
            // A URL in a ref name or log line gets no preview fetched and posted beside it.
            "unfurl_links": false,
            "unfurl_media": false,
        }),
    }
}

/// `✅ project ref (sha) by pusher: result in 12 s`.
fn headline(job: &FinishedJob<'_>) -> String {
    let icon = match job.result {
        "success" | "deployed" => "✅",
        "rolled_back" => "↩️",
        _ => "❌",
    };
    let short: String = job.sha.chars().take(7).collect();
    format!(
        "{icon} {} {} ({}) by {}: {} in {} s",
        mrkdwn::inline(job.project, NAME_LIMIT),
        mrkdwn::inline(job.git_ref, REF_LIMIT),
        mrkdwn::inline(&short, NAME_LIMIT),
        mrkdwn::inline(job.pusher, NAME_LIMIT),
        mrkdwn::inline(&job.result.replace('_', " "), NAME_LIMIT),
        job.seconds,
    )
}

/// `• service: result — image` for each service that fits in `room` characters; the rest
/// are counted on a last line (the job's page lists them all).
fn service_lines(services: &[ServiceLine], room: usize) -> String {
    let mut out = String::new();
    for (shown, line) in services.iter().enumerate() {
        let line = service_line(line);
        if chars(&out) + chars(&line) + MORE_RESERVE > room {
            let more = services.len() - shown;
            out.push_str(&format!("\n• … {more} more"));
            break;
        }
        out.push_str(&line);
    }
    out
}

fn service_line(line: &ServiceLine) -> String {
    let mut text = format!(
        "\n• {}: {}",
        mrkdwn::inline(&line.service, NAME_LIMIT),
        mrkdwn::inline(&line.result, NAME_LIMIT)
    );
    if let Some(image) = &line.image {
        text.push_str(&format!(" — {}", mrkdwn::inline(image, IMAGE_LIMIT)));
    }
    text
}

fn chars(text: &str) -> usize {
    text.chars().count()
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
    fn hostile_message(tail: &str) -> String {
        let services = [ServiceLine {
            service: "web".into(),
            result: "failed at check".into(),
            image: Some("registry/<!here>:v1@sha256:abc".into()),
        }];
        let message = chat_message(&FinishedJob {
            project: "myevents",
            git_ref: "<!channel>",
            sha: "0123456789abcdef",
            pusher: "<https://evil.example|click> & friends",
            result: "failed",
            seconds: 3,
            services: &services,
            failure_tail: Some(tail),
            link: Some("https://deploybot.example/jobs/7"),
        });
        let Report::Chat { message } = message else {
            panic!("not a chat message")
        };
        message["text"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_chat_message_escapes_a_mention_in_the_ref_name() {
        let text = hostile_message("boom");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(!text.contains("<!"), "{text}");
    }

    #[test]
    fn a_chat_message_escapes_a_fake_link_in_the_pusher() {
        let text = hostile_message("boom");
        assert!(
            text.contains("by &lt;https://evil.example|click&gt; &amp; friends:"),
            "{text}"
        );
    }

    #[test]
    fn a_chat_message_escapes_an_image_reference() {
        let text = hostile_message("boom");
        assert!(
            text.contains("registry/&lt;!here&gt;:v1@sha256:abc"),
            "{text}"
        );
    }

    #[test]
    fn a_log_tail_cannot_close_its_code_block() {
        let text = hostile_message("step 1\n```\n<!channel> look\n```\nstep 2");
        assert_eq!(text.matches("```").count(), 2, "{text}");
        assert!(text.contains("&lt;!channel&gt; look"), "{text}");
    }

    #[test]
    fn a_five_megabyte_log_line_is_cut_and_the_message_stays_under_slacks_limit() {
        let text = hostile_message(&"x".repeat(5 << 20));
        assert!(text.chars().count() <= CHAT_TEXT_LIMIT, "{}", text.len());
        assert!(text.contains(&format!("{}…", "x".repeat(TAIL_LINE_LIMIT - 1))));
        assert!(
            text.ends_with("```\nhttps://deploybot.example/jobs/7"),
            "the link survives"
        );
    }

    #[test]
    fn a_message_of_longest_values_and_many_services_stays_under_slacks_limit() {
        let long = "&".repeat(10_000);
        let services: Vec<ServiceLine> = (0..500)
            .map(|_| ServiceLine {
                service: long.clone(),
                result: long.clone(),
                image: Some(long.clone()),
            })
            .collect();
        let tail = format!("{long}\n").repeat(500);
        let message = chat_message(&FinishedJob {
            project: &long,
            git_ref: &long,
            sha: &long,
            pusher: &long,
            result: &long,
            seconds: i64::MAX,
            services: &services,
            failure_tail: Some(&tail),
            link: Some(&long),
        });
        let Report::Chat { message } = message else {
            panic!("not a chat message")
        };
        let text = message["text"].as_str().unwrap();
        assert!(
            text.chars().count() <= CHAT_TEXT_LIMIT,
            "{}",
            text.chars().count()
        );
        assert!(text.contains("more"), "the services left out are counted");
    }

    #[test]
    fn a_chat_message_asks_for_no_mentions_by_name_and_no_previews() {
        let message = chat_message(&FinishedJob {
            project: "p",
            git_ref: "main",
            sha: "abc",
            pusher: "a",
            result: "success",
            seconds: 1,
            services: &[],
            failure_tail: None,
            link: None,
        });
        let Report::Chat { message } = message else {
            panic!("not a chat message")
        };
        assert_eq!(message["mrkdwn"], true);
        assert_eq!(message["link_names"], false);
        assert_eq!(message["unfurl_links"], false);
        assert_eq!(message["unfurl_media"], false);
    }
}
