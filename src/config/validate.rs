//! Turns [`RawSettings`] into [`Settings`], collecting every problem with its field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawProject, RawSettings};
use super::secret::SecretSpec;
use super::{
    ChatChannel, ConfigError, LogSettings, Problem, Project, RegistrySettings, ReportSettings,
    RetentionSettings, ServerSettings, Settings, StatusAuth, StatusReporting, Toolchain,
    WebhookSecrets, WorkerSettings,
};
use crate::checkout::GitCredentials;
use crate::domain::{ProjectName, RepoSlug};
use crate::forge::{ForgeKind, SigningKey};
use crate::pipeline::Pattern;
use crate::store::RetentionLimits;

pub fn settings(
    raw: RawSettings,
    lookup_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let mut problems = Vec::new();
    let server = server(&raw, &mut problems);
    let mut projects = Vec::new();
    let mut names = HashSet::new();
    for (index, raw_project) in raw.projects.iter().enumerate() {
        if let Some(project) = project(index, raw_project, lookup_env, &mut problems) {
            if !names.insert(project.name.as_ref().to_owned()) {
                problems.push(Problem {
                    field: format!("projects[{index}].name"),
                    message: format!("project \"{}\" is defined twice", project.name.as_ref()),
                });
            }
            projects.push(project);
        }
    }
    let worker = worker(&raw, &mut problems);
    let registry = registry(&raw, lookup_env, &mut problems);
    let toolchains = toolchains(&raw, &mut problems);
    let report = ReportSettings {
        base_url: Some(raw.report.base_url.trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty()),
        max_attempts: u32::try_from(raw.report.max_attempts.max(1)).unwrap_or(u32::MAX),
        retry_base: Duration::from_millis(raw.report.retry_base_ms.max(1)),
        timeout: Duration::from_secs(raw.report.timeout_secs.max(1)),
    };
    let retention = retention(&raw, &mut problems);
    let chat = chat_channels(&raw, lookup_env, &mut problems);
    let environments = super::environment::environments(&raw, &mut problems);
    // An empty inline token means "no token" (the embedded default); a token given some other
    // way must not be empty (SecretSpec refuses that).
    let inline_token = raw
        .web
        .action_token
        .as_ref()
        .filter(|t| !secrecy::ExposeSecret::expose_secret(*t).is_empty());
    let action_token = SecretSpec {
        field: "web.action_token".into(),
        inline: inline_token,
        env: raw.web.action_token_env.as_ref(),
        file: raw.web.action_token_file.as_ref(),
    }
    .resolve(lookup_env)
    .map_err(|p| problems.push(p))
    .ok()
    .flatten();
    match server {
        Some(server) if problems.is_empty() => Ok(Settings {
            server,
            log: LogSettings {
                filter: raw.log.filter,
            },
            projects,
            worker,
            registry,
            toolchains,
            report,
            retention,
            chat,
            action_token,
            environments,
        }),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

fn worker(raw: &RawSettings, problems: &mut Vec<Problem>) -> WorkerSettings {
    let w = &raw.worker;
    let mut at_least_one = |field: &str, value: u64| {
        if value == 0 {
            problems.push(Problem {
                field: format!("worker.{field}"),
                message: "must be greater than 0".into(),
            });
        }
        usize::try_from(value).unwrap_or(usize::MAX)
    };
    WorkerSettings {
        enabled: w.enabled,
        concurrency: at_least_one("concurrency", w.concurrency),
        service_concurrency: at_least_one("service_concurrency", w.service_concurrency),
        step_timeout: Duration::from_secs(
            at_least_one("step_timeout_secs", w.step_timeout_secs) as u64
        ),
        lease: Duration::from_secs(at_least_one("lease_secs", w.lease_secs) as u64),
        log_limit_bytes: at_least_one("log_limit_bytes", w.log_limit_bytes),
    }
}

fn retention(raw: &RawSettings, problems: &mut Vec<Problem>) -> RetentionSettings {
    let r = &raw.retention;
    let mut positive = |field: &str, value: u64| {
        if value == 0 {
            problems.push(Problem {
                field: format!("retention.{field}"),
                message: "must be greater than 0".into(),
            });
        }
        value
    };
    let days = |n: u64| Duration::from_secs(n.saturating_mul(86_400));
    RetentionSettings {
        interval: Duration::from_secs(positive("interval_secs", r.interval_secs)),
        limits: RetentionLimits {
            rejections_max_age: days(positive(
                "rejections_max_age_days",
                r.rejections_max_age_days,
            )),
            rejections_max_count: positive("rejections_max_count", r.rejections_max_count),
            logs_max_age: days(positive("logs_max_age_days", r.logs_max_age_days)),
            bodies_max_age: days(positive("bodies_max_age_days", r.bodies_max_age_days)),
        },
    }
}

fn registry(
    raw: &RawSettings,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<RegistrySettings> {
    let r = &raw.registry;
    let spec = SecretSpec {
        field: "registry.password".into(),
        inline: r.password.as_ref(),
        env: r.password_env.as_ref(),
        file: r.password_file.as_ref(),
    };
    let password = spec
        .resolve(lookup_env)
        .map_err(|p| problems.push(p))
        .ok()
        .flatten();
    if r.address.is_empty() {
        return None;
    }
    if r.address.contains('/') || r.address.contains(' ') {
        problems.push(Problem {
            field: "registry.address".into(),
            message: format!(
                "\"{}\" should be host[:port], without scheme or path",
                r.address
            ),
        });
    }
    if password.is_some() && r.username.is_empty() {
        problems.push(Problem {
            field: "registry.username".into(),
            message: "missing: a password is set".into(),
        });
    }
    Some(RegistrySettings {
        address: r.address.clone(),
        username: r.username.clone(),
        password,
    })
}

fn toolchains(raw: &RawSettings, problems: &mut Vec<Problem>) -> Vec<Toolchain> {
    raw.toolchains
        .iter()
        .enumerate()
        .map(|(index, t)| {
            for cache in &t.caches {
                if !cache.starts_with('/') {
                    problems.push(Problem {
                        field: format!("toolchains[{index}].caches"),
                        message: format!("\"{cache}\" must be an absolute path in the container"),
                    });
                }
            }
            Toolchain {
                name: t.name.clone(),
                image: t.image.clone().unwrap_or_else(|| t.name.clone()),
                caches: t.caches.clone(),
                user: t.user.clone(),
            }
        })
        .collect()
}

fn chat_channels(
    raw: &RawSettings,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Vec<ChatChannel> {
    let mut channels = Vec::new();
    for (index, c) in raw.chat.iter().enumerate() {
        let spec = SecretSpec {
            field: format!("chat[{index}].webhook_url"),
            inline: c.webhook_url.as_ref(),
            env: c.webhook_url_env.as_ref(),
            file: c.webhook_url_file.as_ref(),
        };
        let url = match spec.resolve(lookup_env) {
            Ok(Some(url)) => url,
            Ok(None) => {
                problems.push(Problem {
                    field: format!("chat[{index}].webhook_url"),
                    message: "missing: set webhook_url, webhook_url_env or webhook_url_file".into(),
                });
                continue;
            }
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let on =
            c.on.clone()
                .unwrap_or_else(|| vec!["success".into(), "failed".into()]);
        for result in &on {
            if !["success", "failed"].contains(&result.as_str()) {
                problems.push(Problem {
                    field: format!("chat[{index}].on"),
                    message: format!("unknown result \"{result}\" (expected success or failed)"),
                });
            }
        }
        channels.push(ChatChannel {
            name: c.name.clone(),
            webhook_url: url,
            on,
            projects: c.projects.clone(),
        });
    }
    channels
}

pub fn server_only(raw: &RawSettings) -> Result<ServerSettings, ConfigError> {
    let mut problems = Vec::new();
    server(raw, &mut problems).ok_or(ConfigError::Invalid(problems))
}

fn server(raw: &RawSettings, problems: &mut Vec<Problem>) -> Option<ServerSettings> {
    let s = &raw.server;
    let before = problems.len();
    let listen = s.listen.parse::<SocketAddr>().map_err(|_| Problem {
        field: "server.listen".into(),
        message: format!("\"{}\" is not an address:port", s.listen),
    });
    let listen = listen.map_err(|p| problems.push(p)).ok();
    let mut positive = |field: &str, value: u64| {
        if value == 0 {
            problems.push(Problem {
                field: format!("server.{field}"),
                message: "must be greater than 0".into(),
            });
        }
        usize::try_from(value).unwrap_or(usize::MAX)
    };
    let max_body_bytes = positive("max_body_bytes", s.max_body_bytes);
    let max_inflight_body_bytes = positive("max_inflight_body_bytes", s.max_inflight_body_bytes);
    let max_commit_batch = positive("max_commit_batch", s.max_commit_batch);
    let body_idle_timeout = positive("body_idle_timeout_secs", s.body_idle_timeout_secs);
    let body_deadline = positive("body_deadline_secs", s.body_deadline_secs);
    let rejections_per_source = positive("rejections_per_source", s.rejections_per_source);
    positive("rejections_window_secs", s.rejections_window_secs);
    if body_idle_timeout > body_deadline {
        problems.push(Problem {
            field: "server.body_idle_timeout_secs".into(),
            message: format!("must be at most server.body_deadline_secs ({body_deadline})"),
        });
    }
    if max_inflight_body_bytes < max_body_bytes {
        problems.push(Problem {
            field: "server.max_inflight_body_bytes".into(),
            message: format!("must be at least server.max_body_bytes ({max_body_bytes})"),
        });
    }
    if s.data_dir.as_os_str().is_empty() {
        problems.push(Problem {
            field: "server.data_dir".into(),
            message: "must not be empty".into(),
        });
    }
    if problems.len() != before {
        return None;
    }
    Some(ServerSettings {
        listen: listen?,
        data_dir: s.data_dir.clone(),
        max_body_bytes,
        max_inflight_body_bytes,
        body_idle_timeout: Duration::from_secs(s.body_idle_timeout_secs),
        body_deadline: Duration::from_secs(s.body_deadline_secs),
        rejections_per_source: u32::try_from(rejections_per_source).unwrap_or(u32::MAX),
        rejections_window: Duration::from_secs(s.rejections_window_secs),
        max_commit_batch,
        shutdown_timeout: Duration::from_secs(s.shutdown_timeout_secs),
        signature_tolerance: Duration::from_secs(s.signature_tolerance_secs),
    })
}

fn project(
    index: usize,
    raw: &RawProject,
    lookup_env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Project> {
    let before = problems.len();
    let field = |name: &str| format!("projects[{index}].{name}");
    let mut report = |name: &str, message: String| {
        problems.push(Problem {
            field: field(name),
            message,
        })
    };

    let name = match &raw.name {
        None => {
            report("name", "missing".into());
            None
        }
        Some(n) => ProjectName::parse(n)
            .map_err(|e| report("name", e.to_string()))
            .ok(),
    };
    let forge = match &raw.forge {
        None => {
            report("forge", "missing (github or gitlab)".into());
            None
        }
        Some(f) => ForgeKind::parse(f)
            .map_err(|e| report("forge", e.to_string()))
            .ok(),
    };
    let repository = match &raw.repository {
        None => {
            report("repository", "missing (owner/name)".into());
            None
        }
        Some(r) => RepoSlug::parse(r)
            .map_err(|e| report("repository", e.to_string()))
            .ok(),
    };

    let secret_spec = SecretSpec {
        field: field("webhook_secret"),
        inline: raw.webhook_secret.as_ref(),
        env: raw.webhook_secret_env.as_ref(),
        file: raw.webhook_secret_file.as_ref(),
    };
    let token_spec = SecretSpec {
        field: field("signing_token"),
        inline: raw.signing_token.as_ref(),
        env: raw.signing_token_env.as_ref(),
        file: raw.signing_token_file.as_ref(),
    };
    let secret = secret_spec
        .resolve(lookup_env)
        .map_err(|p| problems.push(p))
        .ok()
        .flatten();
    let signing_key = match token_spec.resolve(lookup_env) {
        Err(p) => {
            problems.push(p);
            None
        }
        Ok(None) => None,
        Ok(Some(token)) => SigningKey::parse(token)
            .map_err(|message| {
                problems.push(Problem {
                    field: token_spec_field(&token_spec),
                    message,
                })
            })
            .ok(),
    };

    match forge {
        Some(ForgeKind::Github) if !secret_spec.is_given() => problems.push(Problem {
            field: field("webhook_secret"),
            message: "missing: GitHub deliveries are verified with it; set webhook_secret, webhook_secret_env or webhook_secret_file".into(),
        }),
        Some(ForgeKind::Github) if token_spec.is_given() => problems.push(Problem {
            field: field("signing_token"),
            message: "only GitLab projects use a signing token".into(),
        }),
        Some(ForgeKind::Gitlab) if !secret_spec.is_given() && !token_spec.is_given() => {
            problems.push(Problem {
                field: field("webhook_secret"),
                message: "missing: a GitLab project needs a webhook_secret (X-Gitlab-Token), a signing_token, or both".into(),
            })
        }
        _ => {}
    }

    let git_token = SecretSpec {
        field: field("git_token"),
        inline: raw.git_token.as_ref(),
        env: raw.git_token_env.as_ref(),
        file: raw.git_token_file.as_ref(),
    }
    .resolve(lookup_env)
    .map_err(|p| problems.push(p))
    .ok()
    .flatten();
    let git_credentials = git_token.map(|token| GitCredentials {
        username: raw
            .git_username
            .clone()
            .unwrap_or_else(|| "x-access-token".into()),
        token,
    });
    if let Some(url) = &raw.clone_url {
        if url.contains('@') {
            problems.push(Problem {
                field: field("clone_url"),
                message: "must not carry credentials; use git_token_env or git_token_file".into(),
            });
        }
    }
    let default_pipeline = match &raw.default_pipeline_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match crate::pipeline::definition::parse(&text) {
                Ok(_) => Some(text),
                Err(e) => {
                    problems.push(Problem {
                        field: field("default_pipeline_file"),
                        message: format!("{}: {e}", path.display()),
                    });
                    None
                }
            },
            Err(e) => {
                problems.push(Problem {
                    field: field("default_pipeline_file"),
                    message: format!("cannot read {}: {}", path.display(), e.kind()),
                });
                None
            }
        },
    };
    let mut patterns = |key: &str, list: &[String]| -> Vec<Pattern> {
        list.iter()
            .filter_map(|p| {
                Pattern::parse(p)
                    .map_err(|message| {
                        problems.push(Problem {
                            field: field(key),
                            message,
                        })
                    })
                    .ok()
            })
            .collect()
    };
    let default_images = vec![format!("{}/*", raw.name.clone().unwrap_or_default())];
    let allowed_images = patterns(
        "allowed_images",
        raw.allowed_images.as_deref().unwrap_or(&default_images),
    );
    let allowed_deployments = patterns("allowed_deployments", &raw.allowed_deployments);
    let status_token = SecretSpec {
        field: field("status_token"),
        inline: raw.status_token.as_ref(),
        env: raw.status_token_env.as_ref(),
        file: raw.status_token_file.as_ref(),
    }
    .resolve(lookup_env)
    .map_err(|p| problems.push(p))
    .ok()
    .flatten();
    let app_key = SecretSpec {
        field: field("github_app_key"),
        inline: raw.github_app_key.as_ref(),
        env: raw.github_app_key_env.as_ref(),
        file: raw.github_app_key_file.as_ref(),
    }
    .resolve(lookup_env)
    .map_err(|p| problems.push(p))
    .ok()
    .flatten();
    let auth = match (
        status_token,
        raw.github_app_id,
        raw.github_installation_id,
        app_key,
    ) {
        (None, None, None, None) => None,
        (Some(token), None, None, None) => Some(StatusAuth::Token(token)),
        (None, Some(app_id), Some(installation_id), Some(private_key)) => {
            if forge != Some(ForgeKind::Github) {
                problems.push(Problem {
                    field: field("github_app_id"),
                    message: "GitHub App authentication is for GitHub projects".into(),
                });
            }
            Some(StatusAuth::GitHubApp {
                app_id,
                installation_id,
                private_key,
            })
        }
        _ => {
            problems.push(Problem {
                field: field("status_token"),
                message: "give either status_token, or all of github_app_id, github_installation_id and github_app_key".into(),
            });
            None
        }
    };
    let statuses = match (auth, &raw.api_url, forge) {
        (None, _, _) => None,
        (Some(auth), Some(api_url), _) => Some(StatusReporting {
            api_url: api_url.clone(),
            auth,
        }),
        (Some(auth), None, Some(ForgeKind::Github)) => Some(StatusReporting {
            api_url: "https://api.github.com".into(),
            auth,
        }),
        (Some(_), None, _) => {
            problems.push(Problem {
                field: field("api_url"),
                message: "missing: a GitLab project with a status_token needs its API root, e.g. https://gitlab.example.com/api/v4".into(),
            });
            None
        }
    };
    if problems.len() != before {
        return None;
    }
    Some(Project {
        name: name?,
        forge: forge?,
        repository: repository?,
        secrets: WebhookSecrets {
            secret,
            signing_key,
        },
        clone_url: raw.clone_url.clone(),
        git_credentials,
        default_pipeline,
        allowed_images,
        allowed_deployments,
        statuses,
    })
}

fn token_spec_field(spec: &SecretSpec<'_>) -> String {
    let suffix = match (spec.env, spec.file) {
        (Some(_), _) => "_env",
        (_, Some(_)) => "_file",
        _ => "",
    };
    format!("{}{}", spec.field, suffix)
}

#[cfg(test)]
mod tests {
    fn problems(toml: &str) -> Vec<String> {
        let sources = super::super::Sources {
            file: None,
            inline_toml: Some(toml),
            env: Default::default(),
        };
        match super::super::Settings::from_sources(sources) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        }
    }

    #[test]
    fn body_timeouts_of_zero_are_named_by_their_field() {
        let found = problems("[server]\nbody_idle_timeout_secs = 0\nbody_deadline_secs = 0\n");

        for expected in [
            "server.body_idle_timeout_secs: must be greater than 0",
            "server.body_deadline_secs: must be greater than 0",
        ] {
            assert!(
                found.iter().any(|p| p == expected),
                "{expected:?} in {found:#?}"
            );
        }
    }

    #[test]
    fn a_rejection_budget_of_zero_is_named_by_its_field() {
        let found = problems("[server]\nrejections_per_source = 0\nrejections_window_secs = 0\n");

        for expected in [
            "server.rejections_per_source: must be greater than 0",
            "server.rejections_window_secs: must be greater than 0",
        ] {
            assert!(
                found.iter().any(|p| p == expected),
                "{expected:?} in {found:#?}"
            );
        }
    }

    #[test]
    fn every_retention_limit_of_zero_is_named_by_its_field() {
        let found = problems(
            "[retention]\ninterval_secs = 0\nrejections_max_age_days = 0\nrejections_max_count = 0\nlogs_max_age_days = 0\nbodies_max_age_days = 0\n",
        );

        for field in [
            "interval_secs",
            "rejections_max_age_days",
            "rejections_max_count",
            "logs_max_age_days",
            "bodies_max_age_days",
        ] {
            let expected = format!("retention.{field}: must be greater than 0");
            assert!(found.contains(&expected), "{expected:?} in {found:#?}");
        }
    }

    #[test]
    fn an_idle_timeout_longer_than_the_deadline_is_named_by_its_field() {
        let found = problems("[server]\nbody_idle_timeout_secs = 40\nbody_deadline_secs = 30\n");

        assert_eq!(
            found,
            ["server.body_idle_timeout_secs: must be at most server.body_deadline_secs (30)"]
        );
    }
}
