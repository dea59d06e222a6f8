//! `[[environments]]`: where images roll out. Each names a cluster, a namespace, and the refs
//! that deploy there (default: every tag). Cluster credentials are only ever paths here; the
//! token's value is read once so it can be masked wherever text is shown.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::raw::{RawEnvironment, RawSettings};
use super::Problem;
use crate::domain::{DnsLabel, GitRef, RefKind};
use crate::pipeline::Pattern;

/// How long a rollout may take when the environment does not say.
const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Environment {
    pub name: String,
    pub namespace: DnsLabel,
    pub tags: Vec<Pattern>,
    pub branches: Vec<Pattern>,
    pub projects: Vec<String>,
    pub order: DeployOrder,
    /// deploybot's own deadline for a rollout, beside the Deployment's progressDeadlineSeconds.
    pub rollout_timeout: Duration,
    pub cluster: ClusterAccess,
    /// The bearer tokens this access uses (token file, kubeconfig users), kept only so that
    /// they can be masked wherever text is shown.
    pub tokens: Vec<SecretString>,
}

/// Which of two deploys of one Deployment is the newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployOrder {
    /// By semantic version where both tags are one (a leading `v` allowed), else by push time.
    Semver,
    /// By the time the push was received.
    PushTime,
}

#[derive(Debug, Clone)]
pub enum ClusterAccess {
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// The pod's service account (`/var/run/secrets/kubernetes.io/serviceaccount`).
    InCluster,
    Explicit {
        api_server: String,
        ca_file: Option<PathBuf>,
        token_file: PathBuf,
    },
}

impl Environment {
    /// Whether a push of `git_ref` to `project` deploys here (a pull request never does).
    pub fn takes(&self, project: &str, git_ref: &GitRef) -> bool {
        let ref_name = git_ref.name();
        let patterns = match git_ref.kind() {
            RefKind::Tag => &self.tags,
            RefKind::Branch => &self.branches,
            RefKind::Pull => return false,
        };
        (self.projects.is_empty() || self.projects.iter().any(|p| p == project))
            && patterns.iter().any(|p| p.matches(ref_name))
    }
}

pub fn environments(raw: &RawSettings, problems: &mut Vec<Problem>) -> Vec<Environment> {
    let mut names = HashSet::new();
    raw.environments
        .iter()
        .enumerate()
        .filter_map(|(index, raw)| {
            let environment = environment(index, raw, problems)?;
            if !names.insert(environment.name.clone()) {
                problems.push(Problem {
                    field: format!("environments[{index}].name"),
                    message: format!("environment \"{}\" is defined twice", environment.name),
                });
            }
            Some(environment)
        })
        .collect()
}

fn environment(
    index: usize,
    raw: &RawEnvironment,
    problems: &mut Vec<Problem>,
) -> Option<Environment> {
    let before = problems.len();
    let mut problem = |(name, message): (&str, String)| {
        problems.push(Problem {
            field: format!("environments[{index}].{name}"),
            message,
        })
    };
    let name = raw.name.clone().unwrap_or_default();
    if name.is_empty() {
        problem(("name", "missing (e.g. production)".into()));
    }
    let namespace_text = raw.namespace.as_deref().unwrap_or("default");
    let namespace = DnsLabel::parse(namespace_text)
        .map_err(|_| {
            problem((
                "namespace",
                format!("\"{namespace_text}\" is not a Kubernetes namespace name"),
            ))
        })
        .ok();
    let order = order(raw)
        .map_err(&mut problem)
        .unwrap_or(DeployOrder::Semver);
    let rollout_timeout = match raw.rollout_timeout_secs {
        Some(0) => {
            problem(("rollout_timeout_secs", "must be greater than 0".into()));
            DEFAULT_ROLLOUT_TIMEOUT
        }
        Some(secs) => Duration::from_secs(secs),
        None => DEFAULT_ROLLOUT_TIMEOUT,
    };
    let (cluster, tokens) = match reach(&raw.access()) {
        Ok((cluster, tokens)) => (Some(cluster), tokens),
        Err(keys) => {
            keys.into_iter().for_each(&mut problem);
            (None, Vec::new())
        }
    };
    let mut patterns = |key: &'static str, list: &[String]| -> Vec<Pattern> {
        list.iter()
            .filter_map(|p| Pattern::parse(p).map_err(|m| problem((key, m))).ok())
            .collect()
    };
    let default_tags = if raw.branches.is_empty() {
        vec!["*".to_owned()]
    } else {
        Vec::new()
    };
    let tags = patterns("tags", raw.tags.as_deref().unwrap_or(&default_tags));
    let branches = patterns("branches", &raw.branches);
    if problems.len() != before {
        return None;
    }
    Some(Environment {
        name,
        namespace: namespace?,
        tags,
        branches,
        projects: raw.projects.clone(),
        order,
        rollout_timeout,
        cluster: cluster?,
        tokens,
    })
}

/// A problem with one key of an environment, and why.
pub(super) type KeyProblem = (&'static str, String);

fn order(raw: &RawEnvironment) -> Result<DeployOrder, KeyProblem> {
    match raw.order.as_deref() {
        None | Some("semver") => Ok(DeployOrder::Semver),
        Some("push-time") => Ok(DeployOrder::PushTime),
        Some(other) => Err((
            "order",
            format!("unknown order \"{other}\" (expected semver or push-time)"),
        )),
    }
}

/// The keys that say how to reach a cluster, as `[[environments]]` and `[executor]` both have
/// them.
pub(super) struct AccessKeys<'a> {
    pub kubeconfig: Option<&'a PathBuf>,
    pub context: Option<&'a String>,
    pub in_cluster: Option<bool>,
    pub api_server: Option<&'a String>,
    pub ca_file: Option<&'a PathBuf>,
    pub token_file: Option<&'a PathBuf>,
}

impl RawEnvironment {
    fn access(&self) -> AccessKeys<'_> {
        AccessKeys {
            kubeconfig: self.kubeconfig.as_ref(),
            context: self.context.as_ref(),
            in_cluster: self.in_cluster,
            api_server: self.api_server.as_ref(),
            ca_file: self.ca_file.as_ref(),
            token_file: self.token_file.as_ref(),
        }
    }
}

/// How to reach a cluster and the tokens that must be masked, or every key that is wrong.
pub(super) fn reach(
    keys: &AccessKeys<'_>,
) -> Result<(ClusterAccess, Vec<SecretString>), Vec<KeyProblem>> {
    let mut wrong = Vec::new();
    let cluster = cluster_access(keys).map_err(|p| wrong.push(p)).ok();
    let tokens = match &cluster {
        Some(cluster) => cluster_tokens(cluster)
            .map_err(|p| wrong.push(p))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    for (key, path) in [("ca_file", keys.ca_file), ("kubeconfig", keys.kubeconfig)] {
        if let Some(path) = path.filter(|p| !p.exists()) {
            wrong.push((key, format!("{} does not exist", path.display())));
        }
    }
    match cluster {
        Some(cluster) if wrong.is_empty() => Ok((cluster, tokens)),
        _ => Err(wrong),
    }
}

/// Exactly one way to reach the cluster: a kubeconfig, the pod's service account, or an API
/// server with a bearer token file.
fn cluster_access(raw: &AccessKeys<'_>) -> Result<ClusterAccess, KeyProblem> {
    let in_cluster = raw.in_cluster.unwrap_or(false);
    match (raw.kubeconfig, in_cluster, raw.api_server, raw.token_file) {
        (Some(path), false, None, _) => Ok(ClusterAccess::Kubeconfig {
            path: path.clone(),
            context: raw.context.cloned(),
        }),
        (None, true, None, _) => Ok(ClusterAccess::InCluster),
        (None, false, Some(api_server), Some(token_file)) if api_server.starts_with("https://") => {
            Ok(ClusterAccess::Explicit {
                api_server: api_server.clone(),
                ca_file: raw.ca_file.cloned(),
                token_file: token_file.clone(),
            })
        }
        (None, false, Some(api_server), Some(_)) => Err((
            "api_server",
            format!("\"{api_server}\" must be an https:// URL"),
        )),
        (None, false, Some(_), None) => Err((
            "token_file",
            "missing: an api_server needs a bearer token file".into(),
        )),
        _ => Err((
            "kubeconfig",
            "give exactly one of kubeconfig (with optional context), in_cluster = true, or api_server with token_file (and ca_file)".into(),
        )),
    }
}

/// The cluster tokens this access uses, read only so that they can be masked.
fn cluster_tokens(cluster: &ClusterAccess) -> Result<Vec<SecretString>, KeyProblem> {
    match cluster {
        ClusterAccess::Explicit { token_file, .. } => match std::fs::read_to_string(token_file) {
            Ok(text) if !text.trim().is_empty() => {
                Ok(vec![SecretString::from(text.trim().to_owned())])
            }
            Ok(_) => Err(("token_file", format!("{} is empty", token_file.display()))),
            Err(e) => Err((
                "token_file",
                format!("cannot read {}: {}", token_file.display(), e.kind()),
            )),
        },
        ClusterAccess::Kubeconfig { path, .. } => Ok(kubeconfig_tokens(path)),
        ClusterAccess::InCluster => Ok(Vec::new()),
    }
}

/// The tokens a kubeconfig's users carry, inline or in files (unreadable ones are kube's to
/// report when it connects).
fn kubeconfig_tokens(path: &std::path::Path) -> Vec<SecretString> {
    let Ok(kubeconfig) = kube::config::Kubeconfig::read_from(path) else {
        return Vec::new();
    };
    kubeconfig
        .auth_infos
        .into_iter()
        .filter_map(|named| named.auth_info)
        .flat_map(|user| {
            // A relative tokenFile is relative to the kubeconfig, as kubectl reads it.
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            let from_file = user
                .token_file
                .and_then(|file| std::fs::read_to_string(base.join(file)).ok())
                .map(|text| SecretString::from(text.trim().to_owned()));
            [user.token, from_file]
        })
        .flatten()
        .filter(|token| !secrecy::ExposeSecret::expose_secret(token).is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    use super::super::problems;

    #[test]
    fn every_environment_problem_is_named_by_its_field() {
        let found = problems(
            "[[environments]]\nnamespace = \"Not_A_Name\"\norder = \"newest\"\napi_server = \"http://10.0.0.1\"\ntoken_file = \"/nonexistent\"\n\n[[environments]]\nname = \"staging\"\nin_cluster = true\nkubeconfig = \"/etc/k\"\n",
        );
        for expected in [
            "environments[0].name: missing",
            "environments[0].namespace: \"Not_A_Name\" is not a Kubernetes namespace name",
            "environments[0].order: unknown order \"newest\"",
            "environments[0].api_server: \"http://10.0.0.1\" must be an https:// URL",
            "environments[1].kubeconfig: give exactly one of",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "{expected:?} in {found:#?}"
            );
        }
    }

    #[test]
    fn tags_deploy_by_default_and_a_branch_environment_takes_only_its_branches() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let toml = format!(
            "[[environments]]\nname = \"production\"\nin_cluster = true\n\n[[environments]]\nname = \"staging\"\nbranches = [\"main\"]\napi_server = \"https://k\"\ntoken_file = \"{}\"\n",
            token.display()
        );
        let sources = super::super::Sources {
            file: None,
            inline_toml: Some(&toml),
            env: Default::default(),
        };
        let settings = super::super::Settings::from_sources(sources).unwrap();
        let (production, staging) = (&settings.environments[0], &settings.environments[1]);
        let (tag, main) = (
            GitRef::parse("refs/tags/v1.0.0").unwrap(),
            GitRef::parse("refs/heads/main").unwrap(),
        );
        assert!(production.takes("p", &tag));
        assert!(!production.takes("p", &main));
        assert!(staging.takes("p", &main));
        assert!(!staging.takes("p", &tag));
        assert!(settings.secret_values().contains(&"t".to_owned()));
    }

    #[test]
    fn a_kubeconfigs_tokens_inline_and_in_files_are_known_for_masking() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "file-token-value\n").unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers:\n- name: a\n  user: {token: inline-token-value}\n- name: b\n  user: {tokenFile: token}\n",
        )
        .unwrap();
        let tokens: Vec<String> = kubeconfig_tokens(&kubeconfig)
            .iter()
            .map(|t| t.expose_secret().to_owned())
            .collect();
        assert_eq!(tokens, ["inline-token-value", "file-token-value"]);
    }
}
