//! Configuration: the embedded defaults, an optional TOML file and `DEPLOYBOT__SECTION__KEY`
//! environment overrides, layered by the `config` crate and then turned into typed [`Settings`].
//!
//! Two stages, as ripgrep does with its flags: [`raw`] is what serde reads (everything optional,
//! nothing checked), [`Settings`] is what the rest of the program uses (every value parsed, every
//! secret resolved). The conversion collects *every* problem, each naming its field, so
//! `deploybot check-config` can print them all at once. Nothing here panics on bad input.

mod environment;
mod executor;
mod project;
mod pulls;
mod raw;
mod secret;
mod validate;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::domain::{ProjectName, RepoSlug};
use crate::forge::ForgeKind;

pub use environment::{ClusterAccess, DeployOrder, Environment};
pub use executor::{ExecutorSettings, KubernetesExecutor};
pub use pulls::{ForkPolicy, PullRequestPolicy};

/// The embedded defaults (`config/default.toml`), compiled into the binary.
pub const DEFAULTS_TOML: &str = include_str!("../../config/default.toml");

/// Where `deploybot` looks for its configuration file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "config/deploybot.toml";

/// Everything deploybot runs on, parsed and checked.
#[derive(Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub log: LogSettings,
    pub projects: Vec<Project>,
    pub worker: WorkerSettings,
    pub registry: Option<RegistrySettings>,
    pub toolchains: Vec<Toolchain>,
    pub report: ReportSettings,
    pub retention: RetentionSettings,
    pub recovery: RecoverySettings,
    pub chat: Vec<ChatChannel>,
    /// The bearer token for actions on the web surface; None: actions are off.
    pub action_token: Option<SecretString>,
    /// Where tag images roll out; none: nothing is deployed.
    pub environments: Vec<Environment>,
    /// Where builds run.
    pub executor: ExecutorSettings,
}

/// What the store forgets, and how often it looks.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    pub interval: Duration,
    pub limits: crate::store::RetentionLimits,
}

/// How deploybot finds pushes whose deliveries it missed.
#[derive(Debug, Clone)]
pub struct RecoverySettings {
    pub enabled: bool,
    pub interval: Duration,
    /// Pages of a forge's delivery list walked per project and run.
    pub max_pages: u32,
    /// Redeliveries asked per project and run.
    pub max_redeliveries: u32,
    /// How often one delivery is asked for, ever.
    pub max_asks: u32,
    /// Pushes recorded from the ref comparison per project and run.
    pub max_recovered: u32,
    pub list_timeout: Duration,
    pub max_listing_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub base_url: Option<String>,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub timeout: Duration,
}

/// Where a project's commit statuses go, and how deploybot authenticates there.
#[derive(Debug)]
pub struct StatusReporting {
    pub api_url: String,
    pub auth: StatusAuth,
}

#[derive(Debug)]
pub enum StatusAuth {
    /// A personal or project access token (GitHub bearer token, GitLab `PRIVATE-TOKEN`).
    Token(SecretString),
    /// A GitHub App: its id and private key make JWTs, traded for installation tokens that
    /// octocrab refreshes before they expire.
    GitHubApp {
        app_id: u64,
        installation_id: u64,
        private_key: SecretString,
    },
}

impl StatusAuth {
    pub fn secret(&self) -> &SecretString {
        match self {
            StatusAuth::Token(token) => token,
            StatusAuth::GitHubApp { private_key, .. } => private_key,
        }
    }
}

#[derive(Debug)]
pub struct ChatChannel {
    pub name: String,
    pub webhook_url: SecretString,
    pub on: Vec<String>,
    pub projects: Vec<String>,
}

impl ChatChannel {
    pub fn wants(&self, project: &str, result: &str) -> bool {
        (self.projects.is_empty() || self.projects.iter().any(|p| p == project))
            && self.on.iter().any(|r| r == result)
    }
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub enabled: bool,
    pub concurrency: usize,
    pub service_concurrency: usize,
    pub step_timeout: Duration,
    pub lease: Duration,
    pub log_limit_bytes: usize,
    /// What a step may use at most (toolchains tighten it); image builds get it too.
    pub limits: crate::executor::Limits,
    pub max_context_bytes: u64,
    /// Claims of one job (each a worker that died with it) before it fails instead.
    pub max_attempts: u32,
    /// URL schemes repositories may be fetched over (`https`, and for tests `git`).
    pub clone_schemes: Vec<String>,
}

/// The registry images are pushed to.
#[derive(Debug)]
pub struct RegistrySettings {
    /// `host[:port]`, the prefix of every pushed image.
    pub address: String,
    pub username: String,
    pub password: Option<SecretString>,
}

/// What an image name in a pipeline means on this deploybot: the image actually run, the
/// dependency caches kept between builds (named volumes per project), the non-root user to run
/// as and the limits its steps run with. Steps run only in toolchains the operator named.
#[derive(Debug, Clone)]
pub struct Toolchain {
    pub name: String,
    pub image: String,
    pub caches: Vec<String>,
    /// `uid[:gid]`, never root.
    pub user: String,
    pub limits: crate::executor::Limits,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub max_inflight_body_bytes: usize,
    /// The longest pause between two pieces of a body.
    pub body_idle_timeout: Duration,
    /// The longest a whole body may take to arrive.
    pub body_deadline: Duration,
    /// Rejections recorded one by one per source per window; the rest are counted.
    pub rejections_per_source: u32,
    pub rejections_window: Duration,
    pub max_commit_batch: usize,
    pub shutdown_timeout: Duration,
    pub signature_tolerance: Duration,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub filter: String,
}

/// One repository whose forge calls `POST /hooks/{name}`.
#[derive(Debug)]
pub struct Project {
    pub name: ProjectName,
    pub forge: ForgeKind,
    pub repository: RepoSlug,
    pub secrets: crate::forge::WebhookSecrets,
    /// Where to fetch from: the configured `clone_url`, else the repository's URL on its forge
    /// (never a URL a payload names).
    pub clone_url: String,
    pub git_credentials: Option<crate::checkout::GitCredentials>,
    /// The pipeline for repositories without a `.deploybot.toml`.
    pub default_pipeline: Option<String>,
    /// Image repositories this project's pipeline may build (patterns).
    pub allowed_images: Vec<crate::pipeline::Pattern>,
    /// Deployments this project's pipeline may name (patterns); none by default.
    pub allowed_deployments: Vec<crate::pipeline::Pattern>,
    /// Steps may ask for the network, and Dockerfile commands get one.
    pub allow_network: bool,
    /// Dockerfiles may run commands (`RUN`, `ONBUILD`) in the engine's build containers.
    pub allow_dockerfile_run: bool,
    /// Commit statuses, when a token is configured.
    pub statuses: Option<StatusReporting>,
    /// The project's webhook on its forge, when recovery may read and redeliver its
    /// deliveries.
    pub hook: Option<HookAccess>,
    /// Which pull request events build, drafts, forks.
    pub pull_requests: PullRequestPolicy,
}

/// A project's webhook on its forge, and a token that may list and redeliver its deliveries.
#[derive(Debug)]
pub struct HookAccess {
    pub id: u64,
    pub api_url: String,
    pub token: SecretString,
}

impl Settings {
    /// Every secret value this configuration holds, for redaction and for tests that scan
    /// captured output. Exposing them is the point of this function.
    pub fn secret_values(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        let mut values = Vec::new();
        for project in &self.projects {
            values.extend(project.secrets.values());
            if let Some(credentials) = &project.git_credentials {
                values.push(credentials.token.expose_secret().to_owned());
            }
            if let Some(statuses) = &project.statuses {
                values.push(statuses.auth.secret().expose_secret().to_owned());
            }
            if let Some(hook) = &project.hook {
                values.push(hook.token.expose_secret().to_owned());
            }
        }
        for channel in &self.chat {
            values.push(channel.webhook_url.expose_secret().to_owned());
        }
        if let Some(token) = &self.action_token {
            values.push(token.expose_secret().to_owned());
        }
        for environment in &self.environments {
            for token in &environment.tokens {
                values.push(token.expose_secret().to_owned());
            }
        }
        if let ExecutorSettings::Kubernetes(kubernetes) = &self.executor {
            for token in &kubernetes.tokens {
                values.push(token.expose_secret().to_owned());
            }
        }
        if let Some(password) = self.registry.as_ref().and_then(|r| r.password.as_ref()) {
            values.push(password.expose_secret().to_owned());
        }
        values
    }

    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    pub fn project(&self, name: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.name.as_ref() == name)
    }

    /// The toolchain a pipeline's image name stands for; None for a name the operator did not
    /// configure (a step may not run any image it names).
    pub fn toolchain(&self, name: &str) -> Option<&Toolchain> {
        self.toolchains.iter().find(|t| t.name == name)
    }
}

/// One thing wrong with the configuration, naming the field (`projects[1].forge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The configuration could not be used; every problem found is listed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Unreadable { .. } => vec![self.to_string()],
            ConfigError::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Where the layers come from. Tests pass their own environment instead of touching the
/// process's, so they can run in parallel.
pub struct Sources<'a> {
    /// The configuration file, and whether it must exist (it must when named by `--config`).
    pub file: Option<(&'a Path, bool)>,
    /// TOML text layered after the file (tests use it instead of a file).
    pub inline_toml: Option<&'a str>,
    /// The environment: `DEPLOYBOT__*` overrides and the variables `*_env` keys name.
    pub env: HashMap<String, String>,
}

impl Settings {
    /// Loads the configuration the way the binary does: `path` if given (it must exist),
    /// else `config/deploybot.toml` if it exists, else the embedded defaults alone.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let default_path = Path::new(DEFAULT_CONFIG_PATH);
        Settings::from_sources(Sources {
            file: Some(path.map_or((default_path, false), |p| (p, true))),
            inline_toml: None,
            env: std::env::vars().collect(),
        })
    }

    /// Only the `[server]` section, for commands that read the store and need no project
    /// secrets (`deploybot deliveries` works where the webhook secrets are not set).
    pub fn load_server(path: Option<&Path>) -> Result<ServerSettings, ConfigError> {
        let default_path = Path::new(DEFAULT_CONFIG_PATH);
        let sources = Sources {
            file: Some(path.map_or((default_path, false), |p| (p, true))),
            inline_toml: None,
            env: std::env::vars().collect(),
        };
        let raw = raw::RawSettings::layer(&sources)?;
        validate::server_only(&raw)
    }

    pub fn from_sources(sources: Sources<'_>) -> Result<Settings, ConfigError> {
        let raw = raw::RawSettings::layer(&sources)?;
        validate::settings(raw, &|name| sources.env.get(name).cloned())
    }
}

/// Every problem a configuration (TOML over the embedded defaults, no environment) has; none
/// when it loads. For the tests of each part of the configuration.
#[cfg(test)]
fn problems(toml: &str) -> Vec<String> {
    let sources = Sources {
        file: None,
        inline_toml: Some(toml),
        env: HashMap::new(),
    };
    match Settings::from_sources(sources) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems(),
    }
}
