//! Turns [`RawSettings`] into [`Settings`], collecting every problem with its field.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::RawSettings;
use super::secret::SecretSpec;
use super::{
    ChatChannel, ConfigError, LogSettings, Problem, RecoverySettings, RegistrySettings,
    ReportSettings, RetentionSettings, ServerSettings, Settings,
};
use crate::store::RetentionLimits;

pub fn settings(
    raw: RawSettings,
    lookup_env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let mut problems = Vec::new();
    let server = server(&raw, &mut problems);
    let worker = super::worker::worker(&raw, &mut problems);
    let mut projects = Vec::new();
    let mut names = HashSet::new();
    for (index, raw_project) in raw.projects.iter().enumerate() {
        let schemes = &worker.clone_schemes;
        if let Some(project) =
            super::project::project(index, raw_project, schemes, lookup_env, &mut problems)
        {
            if !names.insert(project.name.as_ref().to_owned()) {
                problems.push(Problem {
                    field: format!("projects[{index}].name"),
                    message: format!("project \"{}\" is defined twice", project.name.as_ref()),
                });
            }
            projects.push(project);
        }
    }
    let registry = registry(&raw, lookup_env, &mut problems);
    let toolchains = super::worker::toolchains(&raw, &worker, &mut problems);
    let report = ReportSettings {
        base_url: Some(raw.report.base_url.trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty()),
        max_attempts: u32::try_from(raw.report.max_attempts.max(1)).unwrap_or(u32::MAX),
        retry_base: Duration::from_millis(raw.report.retry_base_ms.max(1)),
        timeout: Duration::from_secs(raw.report.timeout_secs.max(1)),
    };
    let retention = retention(&raw, &mut problems);
    let recovery = recovery(&raw, &mut problems);
    let chat = chat_channels(&raw, lookup_env, &mut problems);
    let environments = super::environment::environments(&raw, &mut problems);
    let executor = super::executor::executor(&raw, &worker, &toolchains, &mut problems);
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
            recovery,
            chat,
            action_token,
            environments,
            executor,
        }),
        _ => Err(ConfigError::Invalid(problems)),
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

fn recovery(raw: &RawSettings, problems: &mut Vec<Problem>) -> RecoverySettings {
    let r = &raw.recovery;
    let mut positive = |field: &str, value: u64| {
        if value == 0 {
            problems.push(Problem {
                field: format!("recovery.{field}"),
                message: "must be greater than 0".into(),
            });
        }
        value
    };
    let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    RecoverySettings {
        enabled: r.enabled,
        interval: Duration::from_secs(positive("interval_secs", r.interval_secs)),
        max_pages: small(positive("max_pages", r.max_pages.into())),
        max_redeliveries: small(positive("max_redeliveries", r.max_redeliveries.into())),
        max_asks: small(positive("max_asks", r.max_asks.into())),
        max_recovered: small(positive("max_recovered", r.max_recovered.into())),
        list_timeout: Duration::from_secs(positive("list_timeout_secs", r.list_timeout_secs)),
        max_listing_bytes: positive("max_listing_bytes", r.max_listing_bytes),
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

#[cfg(test)]
mod tests {
    use super::super::{Settings, Sources};

    const PROJECT: &str = "[[projects]]\nname = \"p\"\nforge = \"github\"\nrepository = \"team/app\"\nwebhook_secret = \"s3cret-value\"\n";

    fn load(toml: &str) -> Result<Settings, Vec<String>> {
        Settings::from_sources(Sources {
            file: None,
            inline_toml: Some(toml),
            env: Default::default(),
        })
        .map_err(|e| e.problems())
    }

    #[test]
    fn without_a_clone_url_a_project_fetches_from_its_forge() {
        let settings = load(PROJECT).unwrap();
        assert_eq!(
            settings.projects[0].clone_url,
            "https://github.com/team/app.git"
        );
        let enterprise = format!("{PROJECT}api_url = \"https://ghe.example/api/v3\"\n");
        assert_eq!(
            load(&enterprise).unwrap().projects[0].clone_url,
            "https://ghe.example/team/app.git"
        );
    }

    #[test]
    fn a_repository_url_derived_from_an_http_api_root_is_still_https() {
        let toml = format!("{PROJECT}api_url = \"http://127.0.0.1:9\"\n");
        assert_eq!(
            load(&toml).unwrap().projects[0].clone_url,
            "https://127.0.0.1:9/team/app.git"
        );
    }

    #[test]
    fn a_clone_url_over_a_scheme_the_worker_does_not_allow_is_refused() {
        let toml = format!("{PROJECT}clone_url = \"git://git.example/app.git\"\n");
        let problems = load(&toml).err().unwrap();
        assert_eq!(
            problems,
            ["projects[0].clone_url: \"git://git.example/app.git\" is fetched over \"git\", which worker.clone_schemes does not allow (https)"]
        );
        let allowed = format!("[worker]\nclone_schemes = [\"https\", \"git\"]\n\n{toml}");
        assert!(load(&allowed).is_ok());
    }

    #[test]
    fn a_git_token_is_only_ever_sent_over_https() {
        let toml = format!(
            "[worker]\nclone_schemes = [\"https\", \"http\"]\n\n{PROJECT}clone_url = \"http://git.example/app.git\"\ngit_token = \"t0ken-value\"\n"
        );
        let problems = load(&toml).err().unwrap();
        assert_eq!(
            problems,
            ["projects[0].clone_url: \"http://git.example/app.git\" is not https: the git token is only sent over https"]
        );
    }

    use super::super::problems;

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
    fn every_recovery_bound_of_zero_is_named_by_its_field() {
        let found = problems(
            "[recovery]\ninterval_secs = 0\nmax_pages = 0\nmax_redeliveries = 0\nmax_asks = 0\nmax_recovered = 0\nlist_timeout_secs = 0\nmax_listing_bytes = 0\n",
        );
        for field in [
            "interval_secs",
            "max_pages",
            "max_redeliveries",
            "max_asks",
            "max_recovered",
            "list_timeout_secs",
            "max_listing_bytes",
        ] {
            let expected = format!("recovery.{field}: must be greater than 0");
            assert!(found.contains(&expected), "{expected:?} in {found:#?}");
        }
    }

    #[test]
    fn a_hook_id_needs_a_token_and_on_gitlab_an_api_root() {
        let github = problems(
            "[[projects]]\nname = \"a\"\nforge = \"github\"\nrepository = \"o/a\"\nwebhook_secret = \"s\"\nhook_id = 1\n",
        );
        assert!(
            github
                .iter()
                .any(|p| p.starts_with("projects[0].hook_id: needs hook_token")),
            "{github:#?}"
        );
        let gitlab = problems(
            "[[projects]]\nname = \"b\"\nforge = \"gitlab\"\nrepository = \"g/b\"\nwebhook_secret = \"s\"\nhook_id = 1\nhook_token = \"t\"\n",
        );
        assert!(
            gitlab
                .iter()
                .any(|p| p
                    .starts_with("projects[0].api_url: missing: a GitLab project with a hook_id")),
            "{gitlab:#?}"
        );
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

    /// A project that loads, for cases about one of its keys.
    const OK_PROJECT: &str = "[[projects]]\nname = \"p\"\nforge = \"github\"\nrepository = \"team/app\"\nwebhook_secret = \"s3cret-value\"\n";

    #[test]
    fn every_invalid_value_is_named_by_its_field() {
        // (what is wrong, the TOML, the one problem it gives)
        let cases: &[(&str, String, &str)] = &[
            ("listen address", "[server]\nlisten = \"nowhere\"\n".into(), "server.listen: \"nowhere\" is not an address:port"),
            ("in-flight below one body", "[server]\nmax_body_bytes = 100\nmax_inflight_body_bytes = 10\n".into(), "server.max_inflight_body_bytes: must be at least server.max_body_bytes (100)"),
            ("zero jobs", "[worker]\nconcurrency = 0\n".into(), "worker.concurrency: must be greater than 0"),
            ("negative CPUs", "[worker]\nstep_cpus = -1.0\n".into(), "worker.step_cpus: -1 is not a positive number of CPUs"),
            ("unknown scheme", "[worker]\nclone_schemes = [\"ftp\"]\n".into(), "worker.clone_schemes: unknown scheme \"ftp\" (https, http, git, ssh or file)"),
            ("root toolchain", "[[toolchains]]\nname = \"t\"\nuser = \"0:0\"\n".into(), "toolchains[0].user: \"0:0\" is root: steps run as a non-root user"),
            ("relative cache", "[[toolchains]]\nname = \"t\"\nuser = \"1000\"\ncaches = [\"go\"]\n".into(), "toolchains[0].caches: \"go\" must be an absolute path in the container"),
            ("registry URL", "[registry]\naddress = \"https://r.example\"\n".into(), "registry.address: \"https://r.example\" should be host[:port], without scheme or path"),
            ("password without user", "[registry]\naddress = \"r.example\"\npassword = \"pw-value\"\n".into(), "registry.username: missing: a password is set"),
            ("no name", "[[projects]]\nforge = \"github\"\nrepository = \"a/b\"\nwebhook_secret = \"s3cret\"\n".into(), "projects[0].name: missing"),
            ("unknown forge", "[[projects]]\nname = \"p\"\nforge = \"gitea\"\nrepository = \"a/b\"\nwebhook_secret = \"s3cret\"\n".into(), "projects[0].forge: unknown forge \"gitea\" (expected github or gitlab)"),
            ("GitHub without secret", "[[projects]]\nname = \"p\"\nforge = \"github\"\nrepository = \"a/b\"\n".into(), "projects[0].webhook_secret: missing: GitHub deliveries are verified with it; set webhook_secret, webhook_secret_env or webhook_secret_file"),
            ("GitLab without either", "[[projects]]\nname = \"p\"\nforge = \"gitlab\"\nrepository = \"a/b\"\n".into(), "projects[0].webhook_secret: missing: a GitLab project needs a webhook_secret (X-Gitlab-Token), a signing_token, or both"),
            ("credentials in the URL", format!("[worker]\nclone_schemes = [\"https\"]\n{OK_PROJECT}clone_url = \"https://u:p@git.example/a.git\"\n"), "projects[0].clone_url: must not carry credentials; use git_token_env or git_token_file"),
            ("GitLab status without API", "[[projects]]\nname = \"p\"\nforge = \"gitlab\"\nrepository = \"a/b\"\nwebhook_secret = \"s3cret\"\nstatus_token = \"t0ken-value\"\n".into(), "projects[0].api_url: missing: a GitLab project with a status_token needs its API root, e.g. https://gitlab.example.com/api/v4"),
            ("half a GitHub App", format!("{OK_PROJECT}github_app_id = 1\n"), "projects[0].status_token: give either status_token, or all of github_app_id, github_installation_id and github_app_key"),
            ("chat without URL", "[[chat]]\nname = \"c\"\n".into(), "chat[0].webhook_url: missing: set webhook_url, webhook_url_env or webhook_url_file"),
            ("chat on what", "[[chat]]\nname = \"c\"\nwebhook_url = \"https://chat.example/x\"\non = [\"sometimes\"]\n".into(), "chat[0].on: unknown result \"sometimes\" (expected success or failed)"),
        ];
        for (what, toml, expected) in cases {
            assert_eq!(problems(toml), [*expected], "{what}");
        }
    }

    #[test]
    fn valid_values_load() {
        let cases: &[(&str, String)] = &[
            ("the embedded defaults", String::new()),
            ("a GitHub project", OK_PROJECT.into()),
            ("a GitLab project with a token", "[[projects]]\nname = \"p\"\nforge = \"gitlab\"\nrepository = \"group/sub/app\"\nwebhook_secret = \"s3cret\"\n".into()),
            ("a tightened toolchain", "[[toolchains]]\nname = \"t\"\nuser = \"1000:1000\"\nmemory_mb = 512\ncpus = 0.5\npids = 64\n".into()),
            ("a test git server", format!("[worker]\nclone_schemes = [\"https\", \"git\"]\n{OK_PROJECT}clone_url = \"git://127.0.0.1:9418/app.git\"\n")),
        ];
        for (what, toml) in cases {
            assert_eq!(problems(toml), Vec::<String>::new(), "{what}");
        }
    }
}
