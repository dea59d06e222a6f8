//! `[executor]`: where builds run. `docker` (the default) runs each step and image build on the
//! Docker engine beside deploybot; `kubernetes` runs each service's build as a pod in a
//! namespace of its own on a cluster, reached the same three ways `[[environments]]` are.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use secrecy::SecretString;

use super::environment::{reach, AccessKeys};
use super::raw::{RawExecutor, RawSettings};
use super::{ClusterAccess, Problem, Toolchain, WorkerSettings};
use crate::domain::DnsLabel;

const MIB: u64 = 1024 * 1024;
const DEFAULT_BUILDER: &str = "deploybot-local/builder:1";
const DEFAULT_NAMESPACE: &str = "deploybot-builds";
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub enum ExecutorSettings {
    #[default]
    Docker,
    Kubernetes(Box<KubernetesExecutor>),
}

/// Builds as pods: one per service of a job, in `namespace`.
#[derive(Debug, Clone)]
pub struct KubernetesExecutor {
    pub namespace: DnsLabel,
    pub cluster: ClusterAccess,
    /// The cluster tokens this access uses, kept only so they are masked wherever text shows.
    pub tokens: Vec<SecretString>,
    /// Fetches the commit and builds and pushes the image (buildah and git).
    pub builder_image: String,
    pub service_account: Option<String>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// What each container asks the scheduler for; its limits are the step's own.
    pub request_millicpus: u64,
    pub request_memory_bytes: u64,
    /// Only for single-node development clusters, where pods reach the registry and git on
    /// 127.0.0.1 through the node's network.
    pub host_network: bool,
    /// One existing claim holding every project's dependency caches, a sub-path each; without
    /// it, steps start with empty caches.
    pub cache_claim: Option<DnsLabel>,
    /// Where a `FROM` without a registry host is looked up (default: deploybot's registry).
    pub search_registries: Vec<String>,
    /// How long a pod may wait to be scheduled and to start its first container.
    pub start_timeout: Duration,
}

pub fn executor(
    raw: &RawSettings,
    worker: &WorkerSettings,
    toolchains: &[Toolchain],
    problems: &mut Vec<Problem>,
) -> ExecutorSettings {
    let e = &raw.executor;
    let mut problem = |key: &str, message: String| {
        problems.push(Problem {
            field: format!("executor.{key}"),
            message,
        })
    };
    match e.kind.as_deref() {
        None | Some("docker") => ExecutorSettings::Docker,
        Some("kubernetes") => kubernetes(e, raw, (worker, toolchains), &mut problem)
            .map(|k| ExecutorSettings::Kubernetes(Box::new(k)))
            .unwrap_or_default(),
        Some(other) => {
            problem(
                "kind",
                format!("unknown executor \"{other}\" (expected docker or kubernetes)"),
            );
            ExecutorSettings::Docker
        }
    }
}

fn kubernetes(
    e: &RawExecutor,
    raw: &RawSettings,
    limits: (&WorkerSettings, &[Toolchain]),
    problem: &mut dyn FnMut(&str, String),
) -> Option<KubernetesExecutor> {
    let label = |key: &str, text: &str, problem: &mut dyn FnMut(&str, String)| {
        DnsLabel::parse(text)
            .map_err(|_| problem(key, format!("\"{text}\" is not a Kubernetes name")))
            .ok()
    };
    let namespace = label(
        "namespace",
        e.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
        problem,
    );
    let cache_claim = e
        .cache_claim
        .as_deref()
        .map(|claim| label("cache_claim", claim, problem));
    let keys = AccessKeys {
        kubeconfig: e.kubeconfig.as_ref(),
        context: e.context.as_ref(),
        in_cluster: e.in_cluster,
        api_server: e.api_server.as_ref(),
        ca_file: e.ca_file.as_ref(),
        token_file: e.token_file.as_ref(),
    };
    let reached = reach(&keys).map_err(|keys| {
        for (key, message) in keys {
            problem(key, message);
        }
    });
    let request_cpus = e.request_cpus.unwrap_or(0.1);
    if !(request_cpus.is_finite() && request_cpus > 0.0) {
        problem(
            "request_cpus",
            format!("{request_cpus} is not a positive number of CPUs"),
        );
    }
    let request_memory_mb = e.request_memory_mb.unwrap_or(64);
    if request_memory_mb == 0 {
        problem("request_memory_mb", "must be greater than 0".into());
    }
    check_maxima(e, limits, problem);
    let search_registries = e.search_registries.clone().unwrap_or_else(|| {
        Some(raw.registry.address.clone())
            .filter(|a| !a.is_empty())
            .into_iter()
            .collect()
    });
    let start_timeout = match e.start_timeout_secs {
        Some(0) => {
            problem("start_timeout_secs", "must be greater than 0".into());
            DEFAULT_START_TIMEOUT
        }
        Some(secs) => Duration::from_secs(secs),
        None => DEFAULT_START_TIMEOUT,
    };
    let (cluster, tokens) = reached.ok()?;
    let cache_claim = match cache_claim {
        Some(claim) => Some(claim?),
        None => None,
    };
    Some(KubernetesExecutor {
        namespace: namespace?,
        cluster,
        tokens,
        builder_image: e
            .builder_image
            .clone()
            .unwrap_or_else(|| DEFAULT_BUILDER.to_owned()),
        service_account: e.service_account.clone(),
        node_selector: e.node_selector.clone(),
        tolerations: e.tolerations.clone(),
        request_millicpus: (request_cpus * 1000.0).ceil().max(1.0) as u64,
        request_memory_bytes: request_memory_mb * MIB,
        host_network: e.host_network.unwrap_or(false),
        cache_claim,
        search_registries,
        start_timeout,
    })
}

/// The operator's maxima: no toolchain (nor the `[worker]` default) may let a step use more.
fn check_maxima(
    e: &RawExecutor,
    (worker, toolchains): (&WorkerSettings, &[Toolchain]),
    problem: &mut dyn FnMut(&str, String),
) {
    let mut limited = vec![("[worker]".to_owned(), worker.limits)];
    limited.extend(
        toolchains
            .iter()
            .map(|t| (format!("toolchain \"{}\"", t.name), t.limits)),
    );
    for (what, limits) in limited {
        if let Some(max) = e.max_cpus {
            let cpus = limits.nano_cpus as f64 / 1e9;
            if cpus > max {
                problem(
                    "max_cpus",
                    format!("{what} lets a step use {cpus} CPUs, more than {max}"),
                );
            }
        }
        if let Some(max) = e.max_memory_mb {
            let mb = u64::try_from(limits.memory_bytes).unwrap_or(0) / MIB;
            if mb > max {
                problem(
                    "max_memory_mb",
                    format!("{what} lets a step use {mb} MB, more than {max}"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::problems;

    #[test]
    fn an_unknown_executor_kind_is_named() {
        let found = problems("[executor]\nkind = \"podman\"\n");
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("executor.kind: unknown executor \"podman\"")),
            "{found:?}"
        );
    }

    #[test]
    fn every_bad_kubernetes_executor_key_is_named() {
        let found = problems(
            "[executor]\nkind = \"kubernetes\"\nnamespace = \"Builds\"\nrequest_cpus = -1.0\nrequest_memory_mb = 0\nmax_memory_mb = 1\nstart_timeout_secs = 0\ncache_claim = \"No_Claim\"\n",
        );
        for expected in [
            "executor.namespace: \"Builds\" is not a Kubernetes name",
            "executor.kubeconfig: give exactly one of",
            "executor.request_cpus: -1 is not a positive number of CPUs",
            "executor.request_memory_mb: must be greater than 0",
            "executor.max_memory_mb: [worker] lets a step use",
            "executor.start_timeout_secs: must be greater than 0",
            "executor.cache_claim: \"No_Claim\" is not a Kubernetes name",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(expected)),
                "no {expected:?} in {found:?}"
            );
        }
    }
}
