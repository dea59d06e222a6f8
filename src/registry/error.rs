//! What can go wrong talking to a registry. Every error after the client is built names the
//! registry, the repository and the reference (tag or digest) it was about, and keeps its
//! cause. None holds a credential: bodies are excerpts with the password and tokens taken out
//! (`body::excerpt`), and transport errors are kept without their URL.

use std::fmt;

/// Which registry, repository and reference (tag or digest) a call was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub repository: String,
    pub reference: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Repository and reference may be a caller's invalid input: quoted, escaped.
        write!(
            f,
            "registry {}, repository {:?}, reference {:?}",
            self.registry, self.repository, self.reference
        )
    }
}

/// The request a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `GET /v2/<repository>/manifests/<digest>`
    ReadManifest,
    /// `PUT /v2/<repository>/manifests/<tag>`
    WriteManifest,
    /// `HEAD /v2/<repository>/manifests/<tag>`
    CheckManifest,
    /// `GET <realm>?service=…&scope=…`
    Token,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::ReadManifest => "GET manifest",
            Step::WriteManifest => "PUT manifest",
            Step::CheckManifest => "HEAD manifest",
            Step::Token => "token request to the realm",
        })
    }
}

/// The target is boxed so that every `Result<_, RegistryError>` stays small.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {address:?}: not a registry address: {rule}")]
    Address { address: String, rule: &'static str },
    #[error("registry {registry}: the HTTP client could not be set up")]
    Client {
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{target}: the {what} is not valid: {rule}")]
    Invalid {
        target: Box<Target>,
        what: &'static str,
        rule: &'static str,
    },
    #[error("{target}: {step}: no answer")]
    Transport {
        target: Box<Target>,
        step: Step,
        #[source]
        source: reqwest::Error,
    },
    #[error("{target}: {step}: 401 Unauthorized for user {username:?} (wrong user or password, or no access): {detail}")]
    Unauthorized {
        target: Box<Target>,
        step: Step,
        username: String,
        detail: String,
    },
    #[error("{target}: {step}: answered {status}: {detail}")]
    Status {
        target: Box<Target>,
        step: Step,
        status: reqwest::StatusCode,
        detail: String,
    },
    #[error("{target}: {step}: the answer's {header} header is {problem}")]
    Header {
        target: Box<Target>,
        step: Step,
        header: &'static str,
        problem: &'static str,
    },
    #[error("{target}: the manifest is larger than {limit} bytes")]
    TooLarge { target: Box<Target>, limit: usize },
    #[error("{target}: the manifest served hashes to {actual}, not to the digest asked for")]
    ContentMismatch { target: Box<Target>, actual: String },
    #[error("{target}: the registry stored the manifest as {answered}, not as {expected}")]
    DigestMismatch {
        target: Box<Target>,
        expected: String,
        answered: String,
    },
    #[error("{target}: the registry asked for a token: {problem}")]
    Realm {
        target: Box<Target>,
        problem: &'static str,
    },
    #[error("{target}: the token realm's answer holds no token")]
    TokenAnswer {
        target: Box<Target>,
        #[source]
        source: Option<serde_json::Error>,
    },
}
