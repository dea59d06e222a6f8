//! The configuration as serde reads it from the layered sources: nothing checked yet.

use std::path::PathBuf;

use config::{Config, Environment, File, FileFormat};
use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, Sources, DEFAULTS_TOML};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub server: RawServer,
    pub log: RawLog,
    #[serde(default)]
    pub projects: Vec<RawProject>,
    pub worker: RawWorker,
    pub registry: RawRegistry,
    #[serde(default)]
    pub toolchains: Vec<RawToolchain>,
    pub report: RawReport,
    pub retention: RawRetention,
    pub recovery: RawRecovery,
    pub web: RawWeb,
    #[serde(default)]
    pub chat: Vec<RawChat>,
    #[serde(default)]
    pub environments: Vec<RawEnvironment>,
    #[serde(default)]
    pub executor: RawExecutor,
}

/// Where builds run: beside a Docker engine (default) or as pods on a Kubernetes cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecutor {
    /// `docker` (default) or `kubernetes`; the other keys are the Kubernetes executor's.
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub in_cluster: Option<bool>,
    pub api_server: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub builder_image: Option<String>,
    pub service_account: Option<String>,
    #[serde(default)]
    pub node_selector: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    pub request_cpus: Option<f64>,
    pub request_memory_mb: Option<u64>,
    pub max_cpus: Option<f64>,
    pub max_memory_mb: Option<u64>,
    pub cache_claim: Option<String>,
    pub host_network: Option<bool>,
    pub search_registries: Option<Vec<String>>,
    pub start_timeout_secs: Option<u64>,
}

/// Where tag (or branch) images roll out: a cluster, a namespace, and which refs go there.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// Tag patterns that deploy here; default every tag, unless `branches` is given.
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub branches: Vec<String>,
    /// Projects that deploy here; default all.
    #[serde(default)]
    pub projects: Vec<String>,
    /// `semver` (default; push time where a tag is not semver) or `push-time`.
    pub order: Option<String>,
    pub rollout_timeout_secs: Option<u64>,
    /// The cluster: a kubeconfig (and context), the in-cluster service account, or an API
    /// server URL with a CA file and a bearer token file.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub in_cluster: Option<bool>,
    pub api_server: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    pub action_token: Option<SecretString>,
    pub action_token_env: Option<String>,
    pub action_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReport {
    pub base_url: String,
    pub max_attempts: u64,
    pub retry_base_ms: u64,
    pub timeout_secs: u64,
}

/// A chat channel: a Slack-compatible incoming webhook (its URL is a secret).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChat {
    pub name: String,
    pub webhook_url: Option<SecretString>,
    pub webhook_url_env: Option<String>,
    pub webhook_url_file: Option<PathBuf>,
    /// Job results that post here (`success`, `failed`); default both.
    pub on: Option<Vec<String>>,
    /// Projects that post here; default all.
    #[serde(default)]
    pub projects: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    pub enabled: bool,
    pub concurrency: u64,
    pub service_concurrency: u64,
    pub step_timeout_secs: u64,
    pub lease_secs: u64,
    pub log_limit_bytes: u64,
    pub step_memory_mb: u64,
    pub step_cpus: f64,
    pub step_pids: u64,
    pub max_context_bytes: u64,
    pub max_attempts: u64,
    pub clone_schemes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub address: String,
    pub username: String,
    pub password: Option<SecretString>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// An image name a pipeline may use, and what it really means here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToolchain {
    pub name: String,
    pub image: Option<String>,
    #[serde(default)]
    pub caches: Vec<String>,
    pub user: Option<String>,
    /// Tighter limits than `[worker]`'s for this toolchain's steps.
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    pub data_dir: PathBuf,
    pub max_body_bytes: u64,
    pub max_inflight_body_bytes: u64,
    pub body_idle_timeout_secs: u64,
    pub body_deadline_secs: u64,
    pub rejections_per_source: u64,
    pub rejections_window_secs: u64,
    pub max_commit_batch: u64,
    pub shutdown_timeout_secs: u64,
    pub signature_tolerance_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub interval_secs: u64,
    pub rejections_max_age_days: u64,
    pub rejections_max_count: u64,
    pub logs_max_age_days: u64,
    pub bodies_max_age_days: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecovery {
    pub enabled: bool,
    pub interval_secs: u64,
    pub max_pages: u32,
    pub max_redeliveries: u32,
    pub max_asks: u32,
    pub max_recovered: u32,
    pub list_timeout_secs: u64,
    pub max_listing_bytes: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub filter: String,
}

/// Every field is optional here so that a missing one is reported by name, with the
/// project's index, instead of as a serde error without context.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProject {
    pub name: Option<String>,
    pub forge: Option<String>,
    pub repository: Option<String>,
    pub webhook_secret: Option<SecretString>,
    pub webhook_secret_env: Option<String>,
    pub webhook_secret_file: Option<PathBuf>,
    pub signing_token: Option<SecretString>,
    pub signing_token_env: Option<String>,
    pub signing_token_file: Option<PathBuf>,
    pub clone_url: Option<String>,
    pub git_username: Option<String>,
    pub git_token: Option<SecretString>,
    pub git_token_env: Option<String>,
    pub git_token_file: Option<PathBuf>,
    pub default_pipeline_file: Option<PathBuf>,
    pub allowed_images: Option<Vec<String>>,
    #[serde(default)]
    pub allowed_deployments: Vec<String>,
    /// Whether this project's steps may ask for the network (`network = true`), and its
    /// Dockerfiles' `RUN` get one.
    #[serde(default)]
    pub allow_network: bool,
    /// Whether this project's Dockerfiles may run commands (`RUN`, `ONBUILD`) in the engine's
    /// build containers, which the engine cannot confine as it confines steps.
    #[serde(default)]
    pub allow_dockerfile_run: bool,
    pub status_token: Option<SecretString>,
    pub status_token_env: Option<String>,
    pub status_token_file: Option<PathBuf>,
    pub api_url: Option<String>,
    /// GitHub App authentication instead of a token (organisations that use Apps).
    pub github_app_id: Option<u64>,
    pub github_installation_id: Option<u64>,
    pub github_app_key: Option<SecretString>,
    pub github_app_key_env: Option<String>,
    pub github_app_key_file: Option<PathBuf>,
    /// The project's webhook on its forge, whose failed deliveries recovery asks to redeliver.
    pub hook_id: Option<u64>,
    /// A token that may read the hook's deliveries and redeliver them (default: status_token).
    pub hook_token: Option<SecretString>,
    pub hook_token_env: Option<String>,
    pub hook_token_file: Option<PathBuf>,
    /// The pull request events that build, in the forge's words (default: all that can).
    pub pull_request_events: Option<Vec<String>>,
    /// Whether a draft pull request builds.
    #[serde(default)]
    pub pull_request_drafts: bool,
    /// `approve` (default), `build` or `ignore`: what a pull request from a fork does.
    pub fork_pull_requests: Option<String>,
    /// Whether a fork's steps and image builds get the network (where `allow_network` gives
    /// the project's).
    #[serde(default)]
    pub fork_network: bool,
}

impl RawSettings {
    pub fn layer(sources: &Sources<'_>) -> Result<RawSettings, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
        if let Some((path, required)) = sources.file {
            if required && !path.exists() {
                return Err(ConfigError::Unreadable {
                    path: path.to_owned(),
                    reason: "no such file".into(),
                });
            }
            builder = builder.add_source(
                File::from(path.to_owned())
                    .format(FileFormat::Toml)
                    .required(required),
            );
        }
        if let Some(toml) = sources.inline_toml {
            builder = builder.add_source(File::from_str(toml, FileFormat::Toml));
        }
        // Both separators are set explicitly: their defaults differ between config releases.
        let env = Environment::with_prefix("DEPLOYBOT")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(Some(sources.env.clone().into_iter().collect()));
        let layered = builder
            .add_source(env)
            .build()
            .map_err(|e| unreadable(sources, e))?;
        layered
            .try_deserialize()
            .map_err(|e| ConfigError::Invalid(vec![deserialize_problem(e)]))
    }
}

fn unreadable(sources: &Sources<'_>, error: config::ConfigError) -> ConfigError {
    let path = sources
        .file
        .map(|(p, _)| p.to_owned())
        .unwrap_or_else(|| PathBuf::from("<inline>"));
    ConfigError::Unreadable {
        path,
        reason: error.to_string(),
    }
}

/// The `config` crate reports a bad value as "... for key `server.listen`"; turn that into
/// our `field: message` form so every problem reads the same way.
fn deserialize_problem(error: config::ConfigError) -> super::Problem {
    let text = error.to_string();
    if let Some((message, key)) = text.rsplit_once(" for key `") {
        let key = key.trim_end_matches(['`', '.', ' ']);
        return super::Problem {
            field: key.to_owned(),
            message: message.to_owned(),
        };
    }
    super::Problem {
        field: "<configuration>".into(),
        message: text,
    }
}
