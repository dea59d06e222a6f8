//! GitLab webhooks: `X-Gitlab-Event`, the shared `X-Gitlab-Token`, delivery ids from
//! `Idempotency-Key` / `X-Gitlab-Event-UUID`, and, when the project has a signing token,
//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

use serde::Deserialize;

use super::signature::{
    token_matches, verify_standard, StandardHeaders, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use super::{
    json_bytes, recorded_headers, BodyEncoding, DeliveryHeaders, Forge, ForgeKind, HeaderSource,
    Hook, HookError, PullAction, PullRequest, Push, VerifyContext,
};
use super::{GivenSecrets, SecretsProblem, WebhookSecrets};
use crate::domain::{CommitSha, DeliveryId, GitRef, RepoSlug};

pub struct GitLab;

const EVENT: &str = "X-Gitlab-Event";
const TOKEN: &str = "X-Gitlab-Token";
const EVENT_UUID: &str = "X-Gitlab-Event-UUID";
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
const WEBHOOK_ID: &str = "webhook-id";
const RECORDED: [&str; 4] = [
    "X-Gitlab-Instance",
    "X-Gitlab-Webhook-UUID",
    EVENT_UUID,
    "User-Agent",
];

impl Forge for GitLab {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Gitlab
    }

    fn claims(&self, headers: &dyn HeaderSource) -> bool {
        matches!(headers.header(EVENT), Ok(Some(_)) | Err(_))
    }

    fn identify(&self, headers: &dyn HeaderSource) -> Result<DeliveryHeaders, HookError> {
        let event = headers.required(EVENT)?.to_owned();
        // Retries of one event keep their Idempotency-Key (GitLab 17.4+) and webhook-id (the
        // same value, and covered by the signature); X-Gitlab-Event-UUID is the older id.
        let (header, value) = [WEBHOOK_ID, IDEMPOTENCY_KEY, EVENT_UUID]
            .into_iter()
            .map(|name| headers.header(name).map(|value| (name, value)))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find_map(|(name, value)| value.map(|v| (name, v)))
            .ok_or(HookError::MissingHeader(EVENT_UUID))?;
        let id = DeliveryId::parse(value).map_err(|e| HookError::BadHeader {
            header,
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
            other => Err(HookError::UnsupportedContentType {
                got: other.to_owned(),
                expected: "application/json",
            }),
        }
    }

    fn verify(
        &self,
        headers: &dyn HeaderSource,
        body: &[u8],
        secrets: &WebhookSecrets,
        context: VerifyContext,
    ) -> Result<(), HookError> {
        let WebhookSecrets::GitLab { token, signing_key } = secrets else {
            return Err(HookError::BadSignature(TOKEN));
        };
        if let Some(expected) = token {
            let token = headers
                .header(TOKEN)?
                .ok_or(HookError::MissingSignature(TOKEN))?;
            if !token_matches(expected, token) {
                return Err(HookError::BadSignature(TOKEN));
            }
        }
        if let Some(key) = signing_key {
            let need = |name: &'static str| -> Result<&str, HookError> {
                headers
                    .header(name)?
                    .ok_or(HookError::MissingSignature(name))
            };
            let signed = StandardHeaders {
                id: need(WEBHOOK_ID)?,
                timestamp: need(TIMESTAMP_HEADER)?,
                signature: need(SIGNATURE_HEADER)?,
            };
            verify_standard(key, &signed, body, context.now, context.tolerance)?;
        }
        if token.is_none() && signing_key.is_none() {
            // `webhook_secrets` never makes this; refuse rather than accept unverified.
            return Err(HookError::MissingSignature(TOKEN));
        }
        Ok(())
    }

    fn event_label(&self, event: &str) -> &'static str {
        match event {
            "Push Hook" => "Push Hook",
            "Tag Push Hook" => "Tag Push Hook",
            "Merge Request Hook" => "Merge Request Hook",
            _ => "other",
        }
    }

    fn parse(&self, event: &str, encoding: BodyEncoding, body: &[u8]) -> Result<Hook, HookError> {
        let json = json_bytes(encoding, body)?;
        match event {
            "Push Hook" | "Tag Push Hook" => parse_push(&json),
            "Merge Request Hook" => parse_merge_request(&json),
            other => {
                let envelope: Envelope = serde_json::from_slice(&json).map_err(HookError::json)?;
                Ok(Hook::Ignored {
                    repository: envelope.project.map(|p| p.path_with_namespace),
                    git_ref: None,
                    reason: format!(
                        "event {other} is not acted on (only Push Hook and Tag Push Hook)"
                    ),
                })
            }
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    project: Option<EnvelopeProject>,
}

#[derive(Deserialize)]
struct EnvelopeProject {
    path_with_namespace: String,
}

/// The fields of a push or tag push deploybot uses.
#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    /// The commit to build: for an annotated tag `after` is the tag object, this is its
    /// commit. `null` when the ref was deleted.
    checkout_sha: Option<String>,
    user_username: Option<String>,
    user_name: Option<String>,
    project: PushProject,
    #[serde(default)]
    commits: Vec<Commit>,
}

#[derive(Deserialize)]
struct PushProject {
    path_with_namespace: String,
    git_http_url: String,
}

#[derive(Deserialize)]
struct Commit {
    id: String,
    message: Option<String>,
}

fn parse_push(json: &[u8]) -> Result<Hook, HookError> {
    let payload: PushPayload = serde_json::from_slice(json).map_err(HookError::json)?;
    let repository = payload.project.path_with_namespace;
    let Some(checkout_sha) = payload.checkout_sha else {
        return Ok(Hook::Ignored {
            repository: Some(repository),
            reason: format!("{} was deleted", payload.git_ref),
            git_ref: Some(payload.git_ref),
        });
    };
    let field = |field: &'static str| {
        move |e: crate::domain::ParseError| HookError::BadField {
            field,
            reason: e.to_string(),
        }
    };
    let after = CommitSha::parse(&payload.after).map_err(field("after"))?;
    if after.is_zero() {
        return Ok(Hook::Ignored {
            repository: Some(repository),
            reason: format!("{} was deleted", payload.git_ref),
            git_ref: Some(payload.git_ref),
        });
    }
    let git_ref = match GitRef::parse(&payload.git_ref) {
        Ok(git_ref) => git_ref,
        Err(e) => {
            return Ok(Hook::Ignored {
                repository: Some(repository),
                reason: format!("ref: {e}"),
                git_ref: None,
            })
        }
    };
    let sha = CommitSha::parse(&checkout_sha).map_err(field("checkout_sha"))?;
    let head_commit_message = payload
        .commits
        .iter()
        .find(|c| c.id.eq_ignore_ascii_case(sha.as_ref()))
        .or(payload.commits.last())
        .and_then(|c| c.message.clone());
    Ok(Hook::Push(Push {
        repository: RepoSlug::parse(&repository).map_err(field("project.path_with_namespace"))?,
        git_ref,
        sha,
        before: CommitSha::parse(&payload.before).map_err(field("before"))?,
        pusher: payload
            .user_username
            .or(payload.user_name)
            .unwrap_or_default(),
        clone_url: payload.project.git_http_url,
        head_commit_message,
    }))
}

/// The fields of a `Merge Request Hook` payload deploybot uses.
#[derive(Deserialize)]
struct MergePayload {
    project: EnvelopeProject,
    user: Option<MergeUser>,
    object_attributes: MergeAttributes,
}

#[derive(Deserialize)]
struct MergeUser {
    username: Option<String>,
}

#[derive(Deserialize)]
struct MergeAttributes {
    iid: u64,
    /// Absent in payloads older than GitLab 9.
    action: Option<String>,
    source_branch: String,
    target_branch: String,
    source_project_id: Option<u64>,
    target_project_id: Option<u64>,
    title: Option<String>,
    draft: Option<bool>,
    #[serde(default)]
    work_in_progress: bool,
    /// The head before an update that brought new commits; absent otherwise.
    oldrev: Option<String>,
    last_commit: MergeCommit,
}

#[derive(Deserialize)]
struct MergeCommit {
    id: String,
}

fn parse_merge_request(json: &[u8]) -> Result<Hook, HookError> {
    let payload: MergePayload = serde_json::from_slice(json).map_err(HookError::json)?;
    let field = |field: &'static str| {
        move |e: crate::domain::ParseError| HookError::BadField {
            field,
            reason: e.to_string(),
        }
    };
    let mr = payload.object_attributes;
    let action = match mr.action.as_deref().unwrap_or("") {
        "open" => PullAction::Opened,
        "reopen" => PullAction::Reopened,
        "update" if mr.oldrev.is_some() => PullAction::NewCommits,
        "close" => PullAction::Closed,
        "merge" => PullAction::Merged,
        other => PullAction::Other(other.chars().take(64).collect()),
    };
    Ok(Hook::PullRequest(PullRequest {
        repository: RepoSlug::parse(&payload.project.path_with_namespace)
            .map_err(field("project.path_with_namespace"))?,
        number: mr.iid,
        action,
        head_sha: CommitSha::parse(&mr.last_commit.id)
            .map_err(field("object_attributes.last_commit.id"))?,
        source_branch: mr.source_branch,
        target_branch: mr.target_branch,
        from_fork: mr.source_project_id != mr.target_project_id,
        title: mr.title.unwrap_or_default(),
        author: payload.user.and_then(|u| u.username).unwrap_or_default(),
        draft: mr.draft.unwrap_or(mr.work_in_progress),
    }))
}

/// GitLab verifies with `X-Gitlab-Token`, Standard Webhooks signatures, or both; a project
/// with neither would accept anything, so it is refused.
pub(super) fn webhook_secrets(given: GivenSecrets) -> Result<WebhookSecrets, SecretsProblem> {
    if given.secret.is_none() && given.signing_key.is_none() {
        return Err(SecretsProblem {
            key: "webhook_secret",
            message: "missing: a GitLab project needs a webhook_secret (X-Gitlab-Token), a signing_token, or both",
        });
    }
    Ok(WebhookSecrets::GitLab {
        token: given.secret,
        signing_key: given.signing_key,
    })
}

/// GitLab's web root for an API root: `https://gitlab.example.com/api/v4` →
/// `https://gitlab.example.com`; gitlab.com without one.
pub(super) fn web_root(api_url: Option<&str>) -> String {
    match api_url.map(|u| u.trim_end_matches('/')) {
        None => "https://gitlab.com".into(),
        Some(api) => api.trim_end_matches("/api/v4").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::pull::parse_fixture;

    #[test]
    fn each_published_merge_request_event_reads_as_its_action_iid_and_head() {
        let closed = "c4c79227ed610f1151f05bbc5be33b4f340d39c8";
        for (name, action, iid, head, draft) in [
            (
                "opened",
                PullAction::Opened,
                1,
                "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
                false,
            ),
            (
                "update",
                PullAction::NewCommits,
                3,
                "c136499ec574e1034b24c5d306de9acda3005367",
                false,
            ),
            (
                "update-draft",
                PullAction::Other("update".into()),
                3,
                "ffd71529ecdfb41a530ee13f91b8fdd3e743c754",
                true,
            ),
            ("close", PullAction::Closed, 1, closed, false),
            ("reopen", PullAction::Reopened, 1, closed, false),
            ("merge", PullAction::Merged, 1, closed, false),
        ] {
            let fixture = format!("gitlab/merge_request.{name}.json");
            let pull = parse_fixture(&GitLab, "Merge Request Hook", &fixture);
            assert_eq!(pull.action, action, "{name}");
            assert_eq!((pull.number, pull.head_sha.as_ref()), (iid, head), "{name}");
            assert_eq!(pull.draft, draft, "{name}");
            assert!(!pull.from_fork, "{name}: source and target are one project");
        }
        let pull = parse_fixture(
            &GitLab,
            "Merge Request Hook",
            "gitlab/merge_request.opened.json",
        );
        assert_eq!(
            pull.head_ref(ForgeKind::Gitlab),
            "refs/merge-requests/1/head"
        );
    }
}
