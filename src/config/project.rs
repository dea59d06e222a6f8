//! `[[projects]]`: one repository each, checked field by field. Every problem names its field
//! (`projects[2].webhook_secret`), and a project with any problem is left out whole.

use std::path::Path;

use secrecy::SecretString;

use super::raw::RawProject;
use super::secret::SecretSpec;
use super::{HookAccess, Problem, Project, StatusAuth, StatusReporting};
use crate::checkout::GitCredentials;
use crate::domain::{ProjectName, RepoSlug};
use crate::forge::{ForgeKind, GivenSecrets, SigningKey, WebhookSecrets};
use crate::pipeline::Pattern;

/// What the checks of one project share: its raw form, where its secrets come from, and where
/// problems go.
struct Checker<'a> {
    index: usize,
    raw: &'a RawProject,
    lookup_env: &'a dyn Fn(&str) -> Option<String>,
    problems: &'a mut Vec<Problem>,
}

/// The project at `index`, or None (with its problems recorded) when anything is wrong.
pub fn project(
    index: usize,
    raw: &RawProject,
    clone_schemes: &[String],
    lookup_env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Project> {
    let before = problems.len();
    let mut check = Checker {
        index,
        raw,
        lookup_env,
        problems,
    };
    let name = check.required("name", "", raw.name.as_deref(), ProjectName::parse);
    let forge = check.required(
        "forge",
        " (github or gitlab)",
        raw.forge.as_deref(),
        ForgeKind::parse,
    );
    let repository = check.required(
        "repository",
        " (owner/name)",
        raw.repository.as_deref(),
        RepoSlug::parse,
    );
    let secrets = check.webhook_secrets(forge);
    let git_credentials = check.git_credentials();
    let clone_url = match (forge, &repository) {
        (Some(forge), Some(repository)) => {
            check.clone_url(forge, repository, clone_schemes, git_credentials.is_some())
        }
        _ => None,
    };
    let default_pipeline = check.default_pipeline();
    let default_images = vec![format!("{}/*", raw.name.clone().unwrap_or_default())];
    let allowed_images = check.patterns(
        "allowed_images",
        raw.allowed_images.as_deref().unwrap_or(&default_images),
    );
    let allowed_deployments = check.patterns("allowed_deployments", &raw.allowed_deployments);
    let statuses = check.statuses(forge);
    let hook = check.hook(forge, statuses.as_ref());
    let pull_requests = forge.and_then(|forge| check.pull_requests(forge));
    if check.problems.len() != before {
        return None;
    }
    Some(Project {
        name: name?,
        forge: forge?,
        repository: repository?,
        secrets: secrets?,
        clone_url: clone_url?,
        git_credentials,
        default_pipeline,
        allowed_images,
        allowed_deployments,
        allow_network: raw.allow_network,
        allow_dockerfile_run: raw.allow_dockerfile_run,
        statuses,
        hook,
        pull_requests: pull_requests?,
    })
}

impl Checker<'_> {
    fn field(&self, key: &str) -> String {
        format!("projects[{}].{key}", self.index)
    }

    fn report(&mut self, key: &str, message: String) {
        let field = self.field(key);
        self.problems.push(Problem { field, message });
    }

    /// A required value, parsed; `hint` follows "missing" when it is absent.
    fn required<T, E: std::fmt::Display>(
        &mut self,
        key: &str,
        hint: &str,
        value: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let Some(value) = value else {
            self.report(key, format!("missing{hint}"));
            return None;
        };
        parse(value)
            .map_err(|e| self.report(key, e.to_string()))
            .ok()
    }

    /// The secret `key`, given inline, as `key_env` or as `key_file` (at most one of them).
    fn secret(
        &mut self,
        key: &str,
        inline: Option<&SecretString>,
        env: Option<&String>,
        file: Option<&std::path::PathBuf>,
    ) -> (bool, Option<SecretString>) {
        let spec = SecretSpec {
            field: self.field(key),
            inline,
            env,
            file,
        };
        let resolved = spec.resolve(self.lookup_env);
        let value = resolved.map_err(|p| self.problems.push(p)).ok().flatten();
        (spec.is_given(), value)
    }

    /// What proves a delivery genuine: the secrets given, as the project's forge needs them
    /// (the forge's own rule, `ForgeKind::webhook_secrets`). None when any is wrong.
    fn webhook_secrets(&mut self, forge: Option<ForgeKind>) -> Option<WebhookSecrets> {
        let raw = self.raw;
        let before = self.problems.len();
        let (_, secret) = self.secret(
            "webhook_secret",
            raw.webhook_secret.as_ref(),
            raw.webhook_secret_env.as_ref(),
            raw.webhook_secret_file.as_ref(),
        );
        let (_, token) = self.secret(
            "signing_token",
            raw.signing_token.as_ref(),
            raw.signing_token_env.as_ref(),
            raw.signing_token_file.as_ref(),
        );
        let signing_key = token.and_then(|token| {
            SigningKey::parse(token)
                .map_err(|message| self.report(signing_token_key(raw), message))
                .ok()
        });
        if self.problems.len() != before {
            return None;
        }
        forge?
            .webhook_secrets(GivenSecrets {
                secret,
                signing_key,
            })
            .map_err(|p| self.report(p.key, p.message.to_owned()))
            .ok()
    }

    /// Credentials for a private repository: a token, and the user it goes with.
    fn git_credentials(&mut self) -> Option<GitCredentials> {
        let raw = self.raw;
        let (_, token) = self.secret(
            "git_token",
            raw.git_token.as_ref(),
            raw.git_token_env.as_ref(),
            raw.git_token_file.as_ref(),
        );
        token.map(|token| GitCredentials {
            username: raw
                .git_username
                .clone()
                .unwrap_or_else(|| "x-access-token".into()),
            token,
        })
    }

    /// Where the repository is fetched from: the operator's `clone_url`, else its URL on the
    /// forge (from `api_url` for GitHub Enterprise and self-managed GitLab). Never a URL from a
    /// payload: a leaked webhook secret must not become a fetch from anywhere, with the git
    /// token attached. The scheme must be one `worker.clone_schemes` allows, and a git token
    /// only ever goes over https.
    fn clone_url(
        &mut self,
        forge: ForgeKind,
        repository: &RepoSlug,
        schemes: &[String],
        has_token: bool,
    ) -> Option<String> {
        let (key, url) = match &self.raw.clone_url {
            Some(url) => ("clone_url", url.clone()),
            None => (
                "api_url",
                forge.repository_url(self.raw.api_url.as_deref(), repository),
            ),
        };
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        let problem = if url.contains('@') {
            Some("must not carry credentials; use git_token_env or git_token_file".to_owned())
        } else if !schemes.iter().any(|s| s == scheme) {
            Some(format!(
                "\"{url}\" is fetched over {scheme:?}, which worker.clone_schemes does not allow ({})",
                schemes.join(", ")
            ))
        } else if has_token && scheme != "https" {
            Some(format!(
                "\"{url}\" is not https: the git token is only sent over https"
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.report(key, message);
                None
            }
            None => Some(url),
        }
    }

    /// The pipeline for repositories without a `.deploybot.toml`, read and checked now.
    fn default_pipeline(&mut self) -> Option<String> {
        let path = self.raw.default_pipeline_file.as_deref()?;
        let text = read_pipeline(path)
            .map_err(|message| self.report("default_pipeline_file", message))
            .ok()?;
        Some(text)
    }

    fn patterns(&mut self, key: &str, list: &[String]) -> Vec<Pattern> {
        list.iter()
            .filter_map(|p| Pattern::parse(p).map_err(|m| self.report(key, m)).ok())
            .collect()
    }

    /// Commit statuses: a token, or a GitHub App; and the API root they go to.
    fn statuses(&mut self, forge: Option<ForgeKind>) -> Option<StatusReporting> {
        let auth = self.status_auth(forge)?;
        let api_url = self.api_root(forge, "status_token")?;
        Some(StatusReporting { api_url, auth })
    }

    /// The forge's API root: `api_url`, or GitHub's public one; a GitLab project must name
    /// its own, which `needed_by` needs.
    fn api_root(&mut self, forge: Option<ForgeKind>, needed_by: &str) -> Option<String> {
        match (&self.raw.api_url, forge) {
            (Some(api_url), _) => Some(api_url.clone()),
            (None, Some(ForgeKind::Github)) => Some("https://api.github.com".into()),
            (None, _) => {
                self.report(
                    "api_url",
                    format!("missing: a GitLab project with a {needed_by} needs its API root, e.g. https://gitlab.example.com/api/v4"),
                );
                None
            }
        }
    }

    /// The hook recovery reads: its id, and a token (`hook_token`, else a `status_token`; a
    /// GitHub App's JWT reaches only the App's own hook, which serves every installation).
    fn pull_requests(&mut self, forge: ForgeKind) -> Option<super::PullRequestPolicy> {
        let raw = self.raw;
        let policy = super::pulls::policy(
            forge,
            raw.pull_request_events.as_deref(),
            raw.pull_request_drafts,
            raw.fork_pull_requests.as_deref(),
            raw.fork_network,
        );
        policy
            .map_err(|(key, message)| self.report(key, message))
            .ok()
    }

    fn hook(
        &mut self,
        forge: Option<ForgeKind>,
        statuses: Option<&StatusReporting>,
    ) -> Option<HookAccess> {
        let raw = self.raw;
        let (_, token) = self.secret(
            "hook_token",
            raw.hook_token.as_ref(),
            raw.hook_token_env.as_ref(),
            raw.hook_token_file.as_ref(),
        );
        let id = raw.hook_id?;
        let token = match (token, statuses.map(|s| &s.auth)) {
            (Some(token), _) => token,
            (None, Some(StatusAuth::Token(token))) => token.clone(),
            (None, _) => {
                self.report(
                    "hook_id",
                    "needs hook_token (or a status_token) that may read and redeliver the hook's deliveries".into(),
                );
                return None;
            }
        };
        let api_url = self.api_root(forge, "hook_id")?;
        Some(HookAccess { id, api_url, token })
    }

    fn status_auth(&mut self, forge: Option<ForgeKind>) -> Option<StatusAuth> {
        let raw = self.raw;
        let (_, token) = self.secret(
            "status_token",
            raw.status_token.as_ref(),
            raw.status_token_env.as_ref(),
            raw.status_token_file.as_ref(),
        );
        let (_, key) = self.secret(
            "github_app_key",
            raw.github_app_key.as_ref(),
            raw.github_app_key_env.as_ref(),
            raw.github_app_key_file.as_ref(),
        );
        match (token, raw.github_app_id, raw.github_installation_id, key) {
            (None, None, None, None) => None,
            (Some(token), None, None, None) => Some(StatusAuth::Token(token)),
            (None, Some(app_id), Some(installation_id), Some(private_key)) => {
                if forge != Some(ForgeKind::Github) {
                    self.report(
                        "github_app_id",
                        "GitHub App authentication is for GitHub projects".into(),
                    );
                }
                Some(StatusAuth::GitHubApp {
                    app_id,
                    installation_id,
                    private_key,
                })
            }
            _ => {
                self.report(
                    "status_token",
                    "give either status_token, or all of github_app_id, github_installation_id and github_app_key".into(),
                );
                None
            }
        }
    }
}

fn read_pipeline(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
    crate::pipeline::definition::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text)
}

/// The signing token's field as the operator gave it (`signing_token_env` when it came from
/// the environment), so the message points at the line to fix.
fn signing_token_key(raw: &RawProject) -> &'static str {
    match (&raw.signing_token_env, &raw.signing_token_file) {
        (Some(_), _) => "signing_token_env",
        (_, Some(_)) => "signing_token_file",
        _ => "signing_token",
    }
}
