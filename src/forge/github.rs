//! GitHub webhooks: `X-GitHub-Event`, `X-GitHub-Delivery`, `X-Hub-Signature-256`
//! (HMAC-SHA256 of the raw body with the hook's secret), JSON or `payload=` form bodies.

use serde::Deserialize;

use super::signature::verify_github;
use super::{
    json_bytes, recorded_headers, BodyEncoding, DeliveryHeaders, Forge, ForgeKind, HeaderSource,
    Hook, HookError, PullAction, PullRequest, Push, VerifyContext,
};
use super::{GivenSecrets, SecretsProblem, WebhookSecrets};
use crate::domain::{CommitSha, DeliveryId, GitRef, RepoSlug};

pub struct GitHub;

const EVENT: &str = "X-GitHub-Event";
const DELIVERY: &str = "X-GitHub-Delivery";
const SIGNATURE: &str = "X-Hub-Signature-256";
/// Kept with each delivery: what a person debugging a hook wants to see.
const RECORDED: [&str; 4] = [
    "X-GitHub-Hook-ID",
    "X-GitHub-Hook-Installation-Target-Type",
    "X-GitHub-Hook-Installation-Target-ID",
    "User-Agent",
];

impl Forge for GitHub {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Github
    }

    fn claims(&self, headers: &dyn HeaderSource) -> bool {
        matches!(headers.header(EVENT), Ok(Some(_)) | Err(_))
    }

    fn identify(&self, headers: &dyn HeaderSource) -> Result<DeliveryHeaders, HookError> {
        let event = headers.required(EVENT)?.to_owned();
        let id =
            DeliveryId::parse(headers.required(DELIVERY)?).map_err(|e| HookError::BadHeader {
                header: DELIVERY,
                reason: e.to_string(),
            })?;
        let recorded = recorded_headers(headers, &RECORDED)?;
        Ok(DeliveryHeaders {
            id,
            event,
            recorded,
        })
    }

    fn encoding(&self, content_type: &str) -> Result<BodyEncoding, HookError> {
        match content_type {
            "application/json" => Ok(BodyEncoding::Json),
            "application/x-www-form-urlencoded" => Ok(BodyEncoding::Form),
            other => Err(HookError::UnsupportedContentType {
                got: other.to_owned(),
                expected: "application/json or application/x-www-form-urlencoded",
            }),
        }
    }

    fn verify(
        &self,
        headers: &dyn HeaderSource,
        body: &[u8],
        secrets: &WebhookSecrets,
        _context: VerifyContext,
    ) -> Result<(), HookError> {
        let signature = headers
            .header(SIGNATURE)?
            .ok_or(HookError::MissingSignature(SIGNATURE))?;
        // Intake only verifies a delivery with its own project's forge; another forge's
        // secrets verify nothing here.
        let WebhookSecrets::GitHub { secret } = secrets else {
            return Err(HookError::BadSignature(SIGNATURE));
        };
        verify_github(SIGNATURE, signature, secret, body)
    }

    fn event_label(&self, event: &str) -> &'static str {
        match event {
            "push" => "push",
            "ping" => "ping",
            "pull_request" => "pull_request",
            _ => "other",
        }
    }

    fn parse(&self, event: &str, encoding: BodyEncoding, body: &[u8]) -> Result<Hook, HookError> {
        let json = json_bytes(encoding, body)?;
        match event {
            "push" => parse_push(&json),
            "pull_request" => parse_pull(&json),
            "ping" => {
                let envelope: Envelope = serde_json::from_slice(&json).map_err(HookError::json)?;
                Ok(Hook::Ping {
                    repository: envelope.repository.map(|r| r.full_name),
                })
            }
            other => {
                let envelope: Envelope = serde_json::from_slice(&json).map_err(HookError::json)?;
                Ok(Hook::Ignored {
                    repository: envelope.repository.map(|r| r.full_name),
                    git_ref: None,
                    reason: format!("event {other} is not acted on (only push)"),
                })
            }
        }
    }
}

/// Just enough of any event to check which repository it is about.
#[derive(Deserialize)]
struct Envelope {
    repository: Option<EnvelopeRepository>,
}

#[derive(Deserialize)]
struct EnvelopeRepository {
    full_name: String,
}

/// The fields of a `push` payload deploybot uses; serde skips the rest without building it.
#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    repository: PushRepository,
    pusher: Option<Pusher>,
    sender: Option<Sender>,
    head_commit: Option<HeadCommit>,
}

#[derive(Deserialize)]
struct PushRepository {
    full_name: String,
    clone_url: String,
}

#[derive(Deserialize)]
struct Pusher {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Sender {
    login: Option<String>,
}

#[derive(Deserialize)]
struct HeadCommit {
    message: Option<String>,
}

fn parse_push(json: &[u8]) -> Result<Hook, HookError> {
    let payload: PushPayload = serde_json::from_slice(json).map_err(HookError::json)?;
    if payload.deleted {
        return Ok(Hook::Ignored {
            repository: Some(payload.repository.full_name),
            reason: format!("{} was deleted", payload.git_ref),
            git_ref: Some(payload.git_ref),
        });
    }
    let field = |field: &'static str| {
        move |e: crate::domain::ParseError| HookError::BadField {
            field,
            reason: e.to_string(),
        }
    };
    let git_ref = match GitRef::parse(&payload.git_ref) {
        Ok(git_ref) => git_ref,
        Err(e) => {
            return Ok(Hook::Ignored {
                repository: Some(payload.repository.full_name),
                reason: format!("ref: {e}"),
                git_ref: None,
            })
        }
    };
    let pusher = payload
        .pusher
        .and_then(|p| p.name)
        .or(payload.sender.and_then(|s| s.login))
        .unwrap_or_default();
    Ok(Hook::Push(Push {
        repository: RepoSlug::parse(&payload.repository.full_name)
            .map_err(field("repository.full_name"))?,
        git_ref,
        sha: CommitSha::parse(&payload.after).map_err(field("after"))?,
        before: CommitSha::parse(&payload.before).map_err(field("before"))?,
        pusher,
        clone_url: payload.repository.clone_url,
        head_commit_message: payload.head_commit.and_then(|c| c.message),
    }))
}

/// The fields of a `pull_request` payload deploybot uses.
#[derive(Deserialize)]
struct PullPayload {
    action: String,
    number: u64,
    pull_request: PullBody,
    repository: EnvelopeRepository,
}

#[derive(Deserialize)]
struct PullBody {
    title: Option<String>,
    user: Option<Sender>,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    merged: bool,
    head: PullSide,
    base: PullSide,
}

#[derive(Deserialize)]
struct PullSide {
    #[serde(rename = "ref")]
    branch: String,
    sha: String,
    /// Null when the head's repository (a fork) was deleted.
    repo: Option<EnvelopeRepository>,
}

fn parse_pull(json: &[u8]) -> Result<Hook, HookError> {
    let payload: PullPayload = serde_json::from_slice(json).map_err(HookError::json)?;
    let field = |field: &'static str| {
        move |e: crate::domain::ParseError| HookError::BadField {
            field,
            reason: e.to_string(),
        }
    };
    let pull = payload.pull_request;
    let action = match payload.action.as_str() {
        "opened" => PullAction::Opened,
        "reopened" => PullAction::Reopened,
        "synchronize" => PullAction::NewCommits,
        "ready_for_review" => PullAction::ReadyForReview,
        "closed" if pull.merged => PullAction::Merged,
        "closed" => PullAction::Closed,
        other => PullAction::Other(other.chars().take(64).collect()),
    };
    let base = pull.base.repo.map(|r| r.full_name);
    let head = pull.head.repo.map(|r| r.full_name);
    Ok(Hook::PullRequest(PullRequest {
        repository: RepoSlug::parse(&payload.repository.full_name)
            .map_err(field("repository.full_name"))?,
        number: payload.number,
        action,
        head_sha: CommitSha::parse(&pull.head.sha).map_err(field("pull_request.head.sha"))?,
        source_branch: pull.head.branch,
        target_branch: pull.base.branch,
        from_fork: head.is_none() || head != base,
        title: pull.title.unwrap_or_default(),
        author: pull.user.and_then(|u| u.login).unwrap_or_default(),
        draft: pull.draft,
    }))
}

/// GitHub verifies every delivery with the HMAC secret, and has no signing tokens.
pub(super) fn webhook_secrets(given: GivenSecrets) -> Result<WebhookSecrets, SecretsProblem> {
    match given {
        GivenSecrets {
            signing_key: Some(_),
            ..
        } => Err(SecretsProblem {
            key: "signing_token",
            message: "only GitLab projects use a signing token",
        }),
        GivenSecrets {
            secret: Some(secret),
            signing_key: None,
        } => Ok(WebhookSecrets::GitHub { secret }),
        GivenSecrets { secret: None, .. } => Err(SecretsProblem {
            key: "webhook_secret",
            message: "missing: GitHub deliveries are verified with it; set webhook_secret, webhook_secret_env or webhook_secret_file",
        }),
    }
}

/// GitHub's web root for an API root: `https://api.github.com` → `https://github.com`;
/// GitHub Enterprise's `https://ghe.example/api/v3` → `https://ghe.example`.
pub(super) fn web_root(api_url: Option<&str>) -> String {
    match api_url.map(|u| u.trim_end_matches('/')) {
        None | Some("https://api.github.com") => "https://github.com".into(),
        Some(api) => api.trim_end_matches("/api/v3").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::pull::parse_fixture;

    #[test]
    fn each_published_pull_request_event_reads_as_its_action_number_and_head() {
        let head = "ec26c3e57ca3a959ca5aad62de7213c562f8c821";
        for (name, action, draft) in [
            ("opened", PullAction::Opened, false),
            ("synchronize", PullAction::NewCommits, false),
            ("reopened", PullAction::Reopened, false),
            ("ready_for_review", PullAction::ReadyForReview, false),
            ("closed", PullAction::Closed, false),
            (
                "converted_to_draft",
                PullAction::Other("converted_to_draft".into()),
                true,
            ),
        ] {
            let pull = parse_fixture(
                &GitHub,
                "pull_request",
                &format!("github/pull_request.{name}.json"),
            );
            assert_eq!(pull.action, action, "{name}");
            assert_eq!(pull.draft, draft, "{name}");
            assert_eq!((pull.number, pull.head_sha.as_ref()), (2, head), "{name}");
            assert_eq!(pull.repository.as_ref(), "Codertocat/Hello-World");
            assert_eq!(pull.source_branch, "changes");
            assert!(!pull.from_fork, "{name}: head and base are one repository");
            assert_eq!(pull.head_ref(ForgeKind::Github), "refs/pull/2/head");
        }
    }

    #[test]
    fn a_pull_request_whose_head_is_another_repository_is_from_a_fork() {
        // No published example comes from a fork: the opened one, its head repository renamed.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/github/pull_request.opened.json");
        let mut payload: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        payload["pull_request"]["head"]["repo"]["full_name"] = "stranger/Hello-World".into();
        let body = serde_json::to_vec(&payload).unwrap();
        let Ok(Hook::PullRequest(pull)) = GitHub.parse("pull_request", BodyEncoding::Json, &body)
        else {
            panic!("not a pull request");
        };
        assert!(pull.from_fork);
        payload["pull_request"]["head"]["repo"] = serde_json::Value::Null;
        let body = serde_json::to_vec(&payload).unwrap();
        let Ok(Hook::PullRequest(pull)) = GitHub.parse("pull_request", BodyEncoding::Json, &body)
        else {
            panic!("not a pull request");
        };
        assert!(pull.from_fork, "a deleted fork is still a fork");
    }

    #[test]
    fn a_form_body_carries_the_json_in_its_payload_field() {
        let json = r#"{"zen":"x","repository":{"full_name":"a/b"}}"#;
        let body = serde_urlencoded::to_string([("payload", json)]).unwrap();
        let hook = GitHub
            .parse("ping", BodyEncoding::Form, body.as_bytes())
            .unwrap();
        assert_eq!(hook.repository(), Some("a/b"));
    }

    #[test]
    fn malformed_json_is_reported_with_line_and_column() {
        let err = GitHub
            .parse("push", BodyEncoding::Json, b"{\n  \"ref\": ,\n}")
            .unwrap_err();
        assert!(
            matches!(
                err,
                HookError::MalformedJson {
                    line: 2,
                    column: 10,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_push_missing_a_field_names_it() {
        let err = GitHub
            .parse(
                "push",
                BodyEncoding::Json,
                br#"{"ref":"refs/heads/x","before":"","after":""}"#,
            )
            .unwrap_err();
        assert!(
            err.to_string().contains("missing field `repository`"),
            "{err}"
        );
    }

    #[test]
    fn repositories_are_cloned_from_the_web_root_of_their_api() {
        assert_eq!(web_root(None), "https://github.com");
        assert_eq!(
            web_root(Some("https://api.github.com/")),
            "https://github.com"
        );
        assert_eq!(
            web_root(Some("https://ghe.example/api/v3")),
            "https://ghe.example"
        );
    }
}
