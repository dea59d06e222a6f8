//! The objects a service's build is made of, built from its [`ServicePlan`] without talking to
//! the cluster: a Secret (the git header, the registry auth file, the registries the builder
//! may pull from, the checked Dockerfile), the pod (its containers from `containers.rs`: fetch,
//! the steps, the builder; all but the last as init containers, so they run in order and stop
//! at the first failure), and, for builds without network, a NetworkPolicy that lets the pod reach
//! only DNS, the git server and the registries.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, KeyToPath, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Secret,
    SecretVolumeSource, Volume,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use secrecy::ExposeSecret;

use super::super::{ServicePlan, INSTANCE_LABEL, JOB_LABEL, SERVICE_LABEL};
use super::containers::Layout;
use crate::config::KubernetesExecutor;

/// The name of a service's pod (and its Secret and NetworkPolicy): unique per deploybot, job
/// and service, a DNS label.
pub(super) fn object_name(instance: &str, job: i64, service: &str) -> String {
    let service: String = service
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = format!("deploybot-{instance}-{job}-{service}");
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

pub(super) fn labels(instance: &str, job: i64, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE_LABEL.to_owned(), instance.to_owned()),
        (JOB_LABEL.to_owned(), job.to_string()),
        // Label values allow `[A-Za-z0-9_.-]`, up to 63 characters.
        (
            SERVICE_LABEL.to_owned(),
            crate::domain::tag_safe(service, 63),
        ),
    ])
}

fn meta(name: &str, labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(labels.clone()),
        ..Default::default()
    }
}

/// The Secret: everything the build needs that must not be in the pod spec.
pub(super) fn secret(
    name: &str,
    labels: &BTreeMap<String, String>,
    plan: &ServicePlan,
    registries: &[String],
) -> Secret {
    let mut data = BTreeMap::new();
    let mut put = |key: &str, value: String| {
        data.insert(key.to_owned(), ByteString(value.into_bytes()));
    };
    if let Some(header) = &plan.source.auth_header {
        put("git-header", header.expose_secret().to_owned());
    }
    put("Dockerfile", plan.image.dockerfile.clone());
    put("registries.conf", registries_conf(registries));
    put("auth.json", auth_file(plan));
    Secret {
        metadata: meta(name, labels),
        data: Some(data),
        ..Default::default()
    }
}

/// containers/image's registries.conf: a `FROM` without a host is looked up in `registries`;
/// loopback registries are spoken to over plain HTTP, as Docker does.
fn registries_conf(registries: &[String]) -> String {
    let quoted: Vec<String> = registries.iter().map(|r| format!("{r:?}")).collect();
    let mut conf = format!(
        "unqualified-search-registries = [{}]\nshort-name-mode = \"permissive\"\n",
        quoted.join(", ")
    );
    for registry in registries.iter().filter(|r| is_loopback(r)) {
        conf.push_str(&format!(
            "\n[[registry]]\nlocation = {registry:?}\ninsecure = true\n"
        ));
    }
    conf
}

pub(super) fn is_loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(host, _)| host);
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The registry credentials as containers-auth.json.
fn auth_file(plan: &ServicePlan) -> String {
    use base64::Engine;
    let auths: serde_json::Map<String, serde_json::Value> = plan
        .registry_auth
        .as_ref()
        .map(|auth| {
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                auth.username,
                auth.password.expose_secret()
            ));
            (auth.server.clone(), serde_json::json!({ "auth": basic }))
        })
        .into_iter()
        .collect();
    serde_json::json!({ "auths": auths }).to_string()
}

/// What the pod spec takes from the executor's settings.
pub(super) struct PodSettings<'a> {
    pub(super) executor: &'a KubernetesExecutor,
    /// A backstop for the whole pod; deploybot stops each step at its own timeout.
    pub(super) deadline_secs: i64,
    /// Marks this pod's segment ends in its output (see `containers.rs`).
    pub(super) nonce: &'a str,
}

/// The build pod, and which of its containers runs each segment (see `containers.rs`).
pub(super) fn pod(
    name: &str,
    labels: &BTreeMap<String, String>,
    plan: &ServicePlan,
    settings: &PodSettings<'_>,
) -> (Pod, Layout) {
    let k = settings.executor;
    let (mut containers, layout) = super::containers::containers(name, plan, k, settings.nonce);
    let main = containers.pop().into_iter().collect();
    let mut volumes = vec![
        empty_dir("workspace"),
        empty_dir("containers"),
        Volume {
            name: "files".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.to_owned()),
                items: Some(
                    ["Dockerfile", "registries.conf", "auth.json"]
                        .into_iter()
                        .map(|key| KeyToPath {
                            key: key.into(),
                            path: key.into(),
                            mode: Some(0o400),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    volumes.extend(cache_volumes(plan, k));
    let pod = Pod {
        metadata: meta(name, labels),
        spec: Some(PodSpec {
            init_containers: Some(containers),
            containers: main,
            volumes: Some(volumes),
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(settings.deadline_secs),
            // A build gets no token for the cluster it runs on.
            automount_service_account_token: Some(false),
            service_account_name: k.service_account.clone(),
            enable_service_links: Some(false),
            host_network: k.host_network.then_some(true),
            dns_policy: k.host_network.then(|| "ClusterFirstWithHostNet".into()),
            node_selector: Some(k.node_selector.clone()).filter(|s| !s.is_empty()),
            tolerations: Some(k.tolerations.clone()).filter(|t| !t.is_empty()),
            ..Default::default()
        }),
        ..Default::default()
    };
    (pod, layout)
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// The dependency caches: sub-paths of the operator's claim, or empty directories.
fn cache_volumes(plan: &ServicePlan, k: &KubernetesExecutor) -> Vec<Volume> {
    let mut names: Vec<&String> = plan.steps.iter().flat_map(|s| s.volumes.keys()).collect();
    names.sort();
    names.dedup();
    match &k.cache_claim {
        Some(claim) if !names.is_empty() => vec![Volume {
            name: "caches".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_string(),
                read_only: Some(false),
            }),
            ..Default::default()
        }],
        Some(_) => Vec::new(),
        None => names
            .into_iter()
            .map(|cache| empty_dir(&cache_volume_name(cache)))
            .collect(),
    }
}

/// A volume name for a cache without a claim (a DNS label).
pub(super) fn cache_volume_name(cache: &str) -> String {
    let digest = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(cache.as_bytes())[..6])
    };
    format!("cache-{digest}")
}

/// Egress only to DNS and to `allowed` (the git server and the registries), for a build whose
/// steps may not use the network.
pub(super) fn network_policy(
    name: &str,
    labels: &BTreeMap<String, String>,
    allowed: &[IpAddr],
) -> NetworkPolicy {
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port)),
        ..Default::default()
    };
    let dns = NetworkPolicyEgressRule {
        ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        to: None,
    };
    let hosts = NetworkPolicyEgressRule {
        ports: None,
        to: Some(
            allowed
                .iter()
                .map(|ip| NetworkPolicyPeer {
                    ip_block: Some(IPBlock {
                        cidr: match ip {
                            IpAddr::V4(_) => format!("{ip}/32"),
                            IpAddr::V6(_) => format!("{ip}/128"),
                        },
                        except: None,
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
    };
    NetworkPolicy {
        metadata: meta(name, labels),
        spec: Some(NetworkPolicySpec {
            pod_selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(if allowed.is_empty() {
                vec![dns]
            } else {
                vec![dns, hosts]
            }),
            ingress: None,
        }),
    }
}

#[cfg(test)]
mod tests;
