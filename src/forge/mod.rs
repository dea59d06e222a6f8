//! Forges: the only code that knows a forge's headers, signature scheme and JSON.
//!
//! Each forge is one file implementing [`Forge`]; intake picks the one whose headers it sees
//! ([`detect`]) and from then on handles only the neutral types below. Adding a forge means
//! one new file, one line in [`ALL`], and its fixtures under `tests/fixtures/`.

mod error;
mod github;
mod gitlab;
mod pull;
mod secrets;
pub(crate) mod signature;

use std::fmt;
use std::time::{Duration, SystemTime};

pub use error::HookError;
pub(crate) use github::GitHub;
pub(crate) use gitlab::GitLab;
pub use pull::{PullAction, PullRequest};
pub use secrets::WebhookSecrets;
pub(crate) use secrets::{GivenSecrets, SecretsProblem};
pub(crate) use signature::token_matches;
pub use signature::{github_signature, standard_webhooks_signature, SigningKey};

use crate::domain::{CommitSha, DeliveryId, GitRef, ParseError, RepoSlug};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    Github,
    Gitlab,
}

impl ForgeKind {
    pub fn parse(s: &str) -> Result<ForgeKind, ParseError> {
        match s {
            "github" => Ok(ForgeKind::Github),
            "gitlab" => Ok(ForgeKind::Gitlab),
            other => Err(ParseError(format!(
                "unknown forge \"{other}\" (expected github or gitlab)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ForgeKind::Github => "github",
            ForgeKind::Gitlab => "gitlab",
        }
    }

    /// The https URL a repository is cloned from on this forge, given the forge's API root
    /// (GitHub Enterprise, self-managed GitLab) or its public default. Always https: a forge
    /// serves git over https wherever it serves its API, and an API root given over http (a
    /// test double, say) must not make the git token travel in the clear.
    pub fn repository_url(self, api_url: Option<&str>, repository: &RepoSlug) -> String {
        let web = match self {
            ForgeKind::Github => github::web_root(api_url),
            ForgeKind::Gitlab => gitlab::web_root(api_url),
        };
        let host_and_path = web.split_once("://").map_or(web.as_str(), |(_, rest)| rest);
        format!("https://{host_and_path}/{}.git", repository.as_ref())
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Read access to a request's headers, so forges do not depend on the HTTP framework.
/// A header that is present but not visible ASCII is an error naming the header.
pub trait HeaderSource {
    fn header(&self, name: &'static str) -> Result<Option<&str>, HookError>;

    fn required(&self, name: &'static str) -> Result<&str, HookError> {
        self.header(name)?.ok_or(HookError::MissingHeader(name))
    }
}

/// What the headers say about a delivery before its body is read.
#[derive(Debug, Clone)]
pub struct DeliveryHeaders {
    pub id: DeliveryId,
    /// The forge's event name (`push`, `Tag Push Hook`, ...).
    pub event: String,
    /// The headers worth keeping with the delivery record (no secrets, no signatures).
    pub recorded: Vec<(&'static str, String)>,
}

/// How the body is wrapped, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    Json,
    /// GitHub's `application/x-www-form-urlencoded`: the JSON is the `payload` field.
    Form,
}

/// Inputs to signature checks that are not in the request.
#[derive(Debug, Clone, Copy)]
pub struct VerifyContext {
    pub now: SystemTime,
    /// How far a signed timestamp may be from `now` (replay protection).
    pub tolerance: Duration,
}

/// A push, in deploybot's terms, as a forge reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub repository: RepoSlug,
    pub git_ref: GitRef,
    pub sha: CommitSha,
    pub before: CommitSha,
    pub pusher: String,
    pub clone_url: String,
    pub head_commit_message: Option<String>,
}

/// What a delivery asks of deploybot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// A branch or tag was pushed: build it.
    Push(Push),
    /// Something happened to a pull request (merge request).
    PullRequest(PullRequest),
    /// The forge checks that the hook works.
    Ping { repository: Option<String> },
    /// Recorded and answered, nothing else: another event, a deleted ref.
    Ignored {
        repository: Option<String>,
        /// The ref, when the event was about one (a deleted branch, say).
        git_ref: Option<String>,
        reason: String,
    },
}

impl Hook {
    /// The repository the payload names, if it names one.
    pub fn git_ref(&self) -> Option<String> {
        match self {
            Hook::Push(push) => Some(push.git_ref.to_string()),
            Hook::Ignored { git_ref, .. } => git_ref.clone(),
            // Its ref depends on the forge: `PullRequest::head_ref`.
            Hook::PullRequest(_) => None,
            Hook::Ping { .. } => None,
        }
    }

    pub fn repository(&self) -> Option<&str> {
        match self {
            Hook::Push(push) => Some(push.repository.as_ref()),
            Hook::PullRequest(pull) => Some(pull.repository.as_ref()),
            Hook::Ping { repository } | Hook::Ignored { repository, .. } => repository.as_deref(),
        }
    }
}

/// One forge's webhook dialect.
pub trait Forge: Send + Sync {
    fn kind(&self) -> ForgeKind;

    /// Whether these headers are this forge's (its event header is present).
    fn claims(&self, headers: &dyn HeaderSource) -> bool;

    /// Reads the delivery id and event name; a missing header is named.
    fn identify(&self, headers: &dyn HeaderSource) -> Result<DeliveryHeaders, HookError>;

    /// Which body encodings this forge sends, by `Content-Type` (without parameters).
    fn encoding(&self, content_type: &str) -> Result<BodyEncoding, HookError>;

    /// Proves the delivery genuine, in constant time, over the exact raw body.
    fn verify(
        &self,
        headers: &dyn HeaderSource,
        body: &[u8],
        secrets: &WebhookSecrets,
        context: VerifyContext,
    ) -> Result<(), HookError>;

    /// Parses a verified body into a [`Hook`].
    fn parse(&self, event: &str, encoding: BodyEncoding, body: &[u8]) -> Result<Hook, HookError>;

    /// The event's name as a metric label: one of this forge's known events, or `other`, so
    /// a caller cannot grow the series count.
    fn event_label(&self, event: &str) -> &'static str;
}

/// The values of `names` that are present, to keep with the delivery record.
pub(crate) fn recorded_headers(
    headers: &dyn HeaderSource,
    names: &[&'static str],
) -> Result<Vec<(&'static str, String)>, HookError> {
    let mut recorded = Vec::new();
    for name in names {
        if let Some(value) = headers.header(name)? {
            recorded.push((*name, value.to_owned()));
        }
    }
    Ok(recorded)
}

/// Every forge deploybot speaks.
pub static ALL: [&dyn Forge; 2] = [&GitHub, &GitLab];

/// The forge whose headers these are.
pub fn detect(headers: &dyn HeaderSource) -> Option<&'static dyn Forge> {
    ALL.iter().copied().find(|forge| forge.claims(headers))
}

/// The JSON of a form-encoded GitHub body, or the body itself.
pub(crate) fn json_bytes(encoding: BodyEncoding, body: &[u8]) -> Result<Vec<u8>, HookError> {
    match encoding {
        BodyEncoding::Json => Ok(body.to_vec()),
        BodyEncoding::Form => {
            let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
                .map_err(|e| HookError::MalformedForm(e.to_string()))?;
            fields
                .into_iter()
                .find(|(k, _)| k == "payload")
                .map(|(_, v)| v.into_bytes())
                .ok_or_else(|| HookError::MalformedForm("no payload field".into()))
        }
    }
}
