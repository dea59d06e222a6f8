//! What a job tells the outside world as it goes: commit statuses (overall `deploybot` and one
//! `deploybot/<service>` context per service) and, at the end, chat messages. This only builds
//! the outbox rows; the worker writes them with the state change that causes them.

use std::collections::{HashMap, HashSet};

use crate::config::Settings;
use crate::domain::{JobState, StageName, StageState};
use crate::intake::PushEvent;
use crate::report::text::{self, ServiceLine, StatusFor};
use crate::report::{Report, StatusState};
use crate::store::{JobDetail, NewReport};

pub struct Reporter {
    project: String,
    statuses: bool,
    repository: String,
    sha: String,
    git_ref: String,
    /// What people call the ref: a branch or tag name, or `pull request #N`.
    ref_label: String,
    /// A pull request's job: its checks say everything, no chat message.
    pull: bool,
    pusher: String,
    base_url: Option<String>,
    job: i64,
    /// The chat channels that want this project's successes, and its failures.
    chat_on_success: Vec<String>,
    chat_on_failed: Vec<String>,
    /// The contexts an earlier attempt of this run (before a crash or kill) already brought
    /// to a result: a `pending` for them would take a check back, so none is sent.
    decided: HashSet<String>,
}

impl Reporter {
    pub fn new(settings: &Settings, event: &PushEvent, job: i64) -> Reporter {
        let statuses = settings
            .project(&event.project)
            .is_some_and(|p| p.statuses.is_some());
        Reporter {
            project: event.project.clone(),
            statuses,
            repository: event.repository.clone(),
            sha: event.sha.to_string(),
            git_ref: event.git_ref.to_string(),
            ref_label: event.git_ref.label(),
            pull: event.git_ref.kind() == crate::domain::RefKind::Pull,
            pusher: event.pusher.clone(),
            base_url: settings.report.base_url.clone(),
            job,
            chat_on_success: chats_wanting(settings, &event.project, "success"),
            chat_on_failed: chats_wanting(settings, &event.project, "failed"),
            decided: HashSet::new(),
        }
    }

    /// The reporter of an attempt that takes the job back, given the commit statuses its run
    /// queued before (their payloads, oldest first): a context whose newest status there is a
    /// result gets no `pending` again, only its result (the same, or a new one).
    pub fn taking_back(mut self, earlier: &[String]) -> Reporter {
        let mut newest: HashMap<String, StatusState> = HashMap::new();
        for payload in earlier {
            if let Ok(Report::Status { context, state, .. }) = serde_json::from_str(payload) {
                newest.insert(context, state);
            }
        }
        self.decided = newest
            .into_iter()
            .filter(|(_, state)| *state != StatusState::Pending)
            .map(|(context, _)| context)
            .collect();
        self
    }

    /// A commit status for `context` (None: the overall one), if the project reports them.
    pub fn status(&self, service: Option<&str>, state: StatusState, words: &str) -> Vec<NewReport> {
        if !self.statuses {
            return Vec::new();
        }
        let context = service.map_or_else(|| text::CONTEXT.to_owned(), text::service_context);
        if state == StatusState::Pending && self.decided.contains(&context) {
            return Vec::new();
        }
        let status = StatusFor {
            repository: &self.repository,
            sha: &self.sha,
            git_ref: &self.git_ref,
            base_url: self.base_url.as_deref(),
            job: self.job,
        };
        let report = status.status(context, state, words);
        vec![report.queued(&self.project, "forge".into(), Some(self.job))]
    }

    /// The reports of a finished job: the overall status, and a message for every chat
    /// channel that wants this project's `result` (`success` or `failed`).
    pub fn finished(
        &self,
        result: JobState,
        error: Option<&str>,
        detail: Option<&JobDetail>,
    ) -> Vec<NewReport> {
        let pushed = detail.is_some_and(|d| {
            d.stages
                .iter()
                .any(|s| s.stage == StageName::Push && s.state == StageState::Success)
        });
        let (state, mut words) = final_status(result, error, pushed);
        if result == JobState::Superseded && self.pull {
            words = format!("Superseded by a newer commit to {}", self.ref_label);
        }
        let mut reports = self.status(None, state, &words);
        if matches!(result, JobState::Superseded | JobState::Canceled) {
            // Its services' contexts end too, or a commit would show them pending for ever
            // (the chaos drill found one).
            for service in detail.map(open_services).unwrap_or_default() {
                reports.extend(self.status(Some(service), state, &words));
            }
            return reports;
        }
        // Chat is for releases and branches people deploy; a pull request's result is its
        // checks.
        if let (Some(detail), false) = (detail, self.pull) {
            reports.extend(self.chat(result, detail));
        }
        reports
    }

    /// The chat message for a finished job, to each channel that takes its result.
    fn chat(&self, result: JobState, detail: &JobDetail) -> Vec<NewReport> {
        let services = service_lines(detail);
        let tail = detail
            .stages
            .iter()
            .find(|s| matches!(s.state, StageState::Failed | StageState::RolledBack))
            .and_then(|s| s.detail.as_deref());
        let seconds = duration_seconds(detail);
        let link = text::target_url(self.base_url.as_deref(), self.job);
        let channels = if matches!(result, JobState::Success | JobState::Deployed) {
            &self.chat_on_success
        } else {
            &self.chat_on_failed
        };
        channels
            .iter()
            .map(|name| {
                let message = text::chat_message(&text::FinishedJob {
                    project: &self.project,
                    git_ref: &self.ref_label,
                    sha: &self.sha,
                    pusher: &self.pusher,
                    result: result.as_str(),
                    seconds,
                    services: &services,
                    failure_tail: tail,
                    link: link.as_deref(),
                });
                message.queued(&self.project, format!("chat:{name}"), Some(self.job))
            })
            .collect()
    }
}

fn chats_wanting(settings: &Settings, project: &str, result: &str) -> Vec<String> {
    settings
        .chat
        .iter()
        .filter(|c| c.wants(project, result))
        .map(|c| c.name.clone())
        .collect()
}

fn duration_seconds(detail: &JobDetail) -> i64 {
    let parse = |t: &Option<String>| {
        t.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    match (
        parse(&detail.job.started_at),
        Some(time::OffsetDateTime::now_utc()),
    ) {
        (Some(start), Some(end)) => (end - start).whole_seconds().max(0),
        _ => 0,
    }
}

/// The overall status of a finished job, and its words.
fn final_status(result: JobState, error: Option<&str>, pushed: bool) -> (StatusState, String) {
    match result {
        JobState::Success if pushed => (
            StatusState::Success,
            "Built and pushed every service".to_owned(),
        ),
        JobState::Success => (
            StatusState::Success,
            "Built and checked every service; nothing pushed".to_owned(),
        ),
        JobState::Deployed => (
            StatusState::Success,
            "Built, pushed and deployed every service".to_owned(),
        ),
        JobState::RolledBack => (
            StatusState::Failure,
            format!("Rolled back: {}", error.unwrap_or("a rollout failed")),
        ),
        JobState::Superseded => (
            StatusState::Error,
            "Superseded by a newer push to this branch".to_owned(),
        ),
        JobState::Canceled => (StatusState::Error, canceled_words(error)),
        JobState::Failed | JobState::Waiting | JobState::Queued | JobState::Running => {
            (StatusState::Failure, error.unwrap_or("failed").to_owned())
        }
    }
}

/// Why a job was canceled, as its status says it: the job's error with a capital letter
/// (`canceled by an operator`, `canceled: pull request #3 was closed`).
fn canceled_words(error: Option<&str>) -> String {
    let error = error.unwrap_or("canceled by an operator");
    let mut chars = error.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// The services whose commit status has not reached a result yet: none of their stages
/// failed, and a stage is still to run or they got neither to a deploy that ended nor to a
/// push that was their last stage (skipped by policy, or pushed with no deploy after it).
fn open_services(detail: &JobDetail) -> Vec<&str> {
    let mut services: Vec<&str> = detail
        .stages
        .iter()
        .map(|s| s.service.as_str())
        .filter(|s| *s != "-")
        .collect();
    services.sort_unstable();
    services.dedup();
    services.retain(|service| {
        let stages: Vec<_> = detail
            .stages
            .iter()
            .filter(|s| s.service == *service)
            .collect();
        let state_of = |name: StageName| stages.iter().find(|s| s.stage == name).map(|s| s.state);
        let failed = stages
            .iter()
            .any(|s| matches!(s.state, StageState::Failed | StageState::RolledBack));
        let unfinished = stages
            .iter()
            .any(|s| matches!(s.state, StageState::Pending | StageState::Running));
        let deployed = matches!(
            state_of(StageName::Deploy),
            Some(StageState::Success | StageState::Skipped)
        );
        let pushed_last = match state_of(StageName::Push) {
            Some(StageState::Skipped) => true,
            Some(StageState::Success) => state_of(StageName::Deploy).is_none(),
            _ => false,
        };
        !(failed || (!unfinished && (deployed || pushed_last)))
    });
    services
}

/// One line per service: how it ended (failed at a stage, rolled back, deployed, ok) and its
/// image.
fn service_lines(detail: &JobDetail) -> Vec<ServiceLine> {
    let mut services: Vec<ServiceLine> = Vec::new();
    for stage in detail.stages.iter().filter(|s| s.service != "-") {
        let result = match (stage.stage, stage.state) {
            (at, StageState::Failed) => Some(format!("failed at {at}")),
            (StageName::Deploy, StageState::RolledBack) => Some("rolled back".to_owned()),
            (StageName::Deploy, StageState::Success) => Some("deployed".to_owned()),
            _ => None,
        };
        match services.iter_mut().find(|l| l.service == stage.service) {
            Some(line) => {
                if let Some(result) = result {
                    line.result = result;
                }
            }
            None => services.push(ServiceLine {
                service: stage.service.clone(),
                result: result.unwrap_or_else(|| "ok".into()),
                image: None,
            }),
        }
    }
    for line in &mut services {
        line.image = detail
            .images
            .iter()
            .find(|i| i.service == line.service)
            .map(|i| match &i.digest {
                Some(digest) => format!("{}@{digest}", i.reference),
                None => format!("{} (not pushed)", i.reference),
            });
    }
    services
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;
    use crate::domain::{CommitSha, GitRef, RefKind};
    use crate::store::{JobRow, StageRow};

    const CONFIG: &str = r#"
[[projects]]
name = "myevents"
forge = "github"
repository = "bradrydzewski/drone-test-go"
webhook_secret = "s"
status_token = "t"

[[chat]]
name = "oncall"
webhook_url = "https://chat.example/hooks/x"
"#;

    fn settings() -> Settings {
        let sources = Sources {
            file: None,
            inline_toml: Some(CONFIG),
            env: Default::default(),
        };
        Settings::from_sources(sources).unwrap()
    }

    /// A push as a forge might send it: every name chosen by whoever pushed.
    fn hostile_push() -> PushEvent {
        PushEvent {
            forge: "github".into(),
            project: "myevents".into(),
            repository: "bradrydzewski/drone-test-go".into(),
            git_ref: GitRef::parse("refs/heads/<!channel>").unwrap(),
            kind: RefKind::Branch,
            name: "<!channel>".into(),
            sha: CommitSha::parse("d2b75aa7797ec26b088fa2dd527e9d2c052fcedd").unwrap(),
            before: CommitSha::parse("0000000000000000000000000000000000000000").unwrap(),
            pusher: "<https://evil.example|deploybot> ```".into(),
            clone_url: "https://github.com/bradrydzewski/drone-test-go.git".into(),
            head_commit_message: None,
            delivery_id: "d".into(),
            received_at: time::OffsetDateTime::now_utc(),
            pull: None,
        }
    }

    fn failed_at_check(tail: &str) -> JobDetail {
        JobDetail {
            job: JobRow {
                id: 7,
                project: "myevents".into(),
                git_ref: "refs/heads/<!channel>".into(),
                sha: "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd".into(),
                state: JobState::Failed,
                attempt: 1,
                created_at: String::new(),
                started_at: None,
                finished_at: None,
                error: None,
                recovered: false,
                pull: None,
            },
            stages: vec![StageRow {
                service: "web".into(),
                stage: StageName::Check,
                state: StageState::Failed,
                exit_code: Some(1),
                detail: Some(tail.into()),
                started_at: None,
                finished_at: None,
            }],
            images: Vec::new(),
            deploys: Vec::new(),
        }
    }

    fn chat_text(reports: &[NewReport]) -> String {
        let chat = reports.iter().find(|r| r.channel == "chat:oncall");
        let report =
            chat.map(|r| serde_json::from_str::<crate::report::Report>(&r.payload).unwrap());
        match report {
            Some(crate::report::Report::Chat { message }) => {
                message["text"].as_str().unwrap_or_default().to_owned()
            }
            other => panic!("no chat message: {other:?}"),
        }
    }

    #[test]
    fn a_hostile_ref_pusher_and_log_tail_reach_the_chat_message_escaped() {
        // Arrange
        let reporter = Reporter::new(&settings(), &hostile_push(), 7);
        let detail = failed_at_check("```\n<!here> <https://evil.example|logs>\n```");

        // Act
        let reports = reporter.finished(JobState::Failed, Some("check failed"), Some(&detail));

        // Assert
        let text = chat_text(&reports);
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(
            text.contains("&lt;https://evil.example|deploybot&gt;"),
            "{text}"
        );
        assert!(text.contains("&lt;!here&gt;"), "{text}");
        assert_eq!(
            text.matches("```").count(),
            2,
            "only the tail's own block: {text}"
        );
    }

    fn payload_of(report: &NewReport) -> String {
        report.payload.clone()
    }

    #[test]
    fn a_job_taken_back_sends_no_pending_to_a_context_its_run_already_decided() {
        // Arrange: the first attempt pushed `web` (a result) and was building `api`.
        let first = Reporter::new(&settings(), &hostile_push(), 7);
        let earlier: Vec<String> = [
            first.status(Some("web"), StatusState::Pending, "Building web"),
            first.status(Some("api"), StatusState::Pending, "Building api"),
            first.status(Some("web"), StatusState::Success, "Pushed web"),
        ]
        .iter()
        .flatten()
        .map(payload_of)
        .collect();

        // Act
        let again = Reporter::new(&settings(), &hostile_push(), 7).taking_back(&earlier);

        // Assert
        assert!(again
            .status(Some("web"), StatusState::Pending, "Building web")
            .is_empty());
        assert_eq!(
            again
                .status(Some("web"), StatusState::Failure, "push failed")
                .len(),
            1,
            "a new result is still sent"
        );
        assert_eq!(
            again
                .status(Some("api"), StatusState::Pending, "Building api")
                .len(),
            1
        );
    }

    fn stage(service: &str, stage: StageName, state: StageState) -> StageRow {
        StageRow {
            service: service.into(),
            stage,
            state,
            exit_code: None,
            detail: None,
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn a_superseded_job_ends_only_the_service_contexts_still_open() {
        use StageName::{Check, Compile, Deploy, Image, Push};
        use StageState::{Failed, Running, Skipped, Success};
        let mut detail = failed_at_check("");
        detail.stages = vec![
            stage("-", StageName::Checkout, Success),
            stage("building", Check, Success),
            stage("building", Compile, Running),
            stage("failed", Check, Failed),
            stage("not-pushing", Image, Success),
            stage("not-pushing", Push, Skipped),
            // Planned skipped from the start; its image is still being built.
            stage("imaging", Image, Running),
            stage("imaging", Push, Skipped),
            stage("pushed", Push, Success),
            stage("deploying", Push, Success),
            stage("deploying", Deploy, Running),
            stage("deployed", Push, Success),
            stage("deployed", Deploy, Success),
        ];
        assert_eq!(open_services(&detail), ["building", "deploying", "imaging"]);
    }
}
