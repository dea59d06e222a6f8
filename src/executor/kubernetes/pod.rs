//! The objects a service's build is made of, built from its [`ServicePlan`] without talking to
//! the cluster: a Secret (the git header, the registry auth file, the registries the builder
//! may pull from, the checked Dockerfile), the pod (fetch → steps → image → push, one
//! container each, all but the last as init containers, so they run in order and stop at the
//! first failure), and, for builds without network, a NetworkPolicy that lets the pod reach
//! only DNS, the git server and the registries.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use secrecy::ExposeSecret;

use super::super::lines::script;
use super::super::{Limits, ServicePlan, StepSpec, INSTANCE_LABEL, JOB_LABEL, SERVICE_LABEL};
use crate::config::KubernetesExecutor;

pub(super) const FETCH: &str = "fetch";
pub(super) const IMAGE: &str = "image";
pub(super) const PUSH: &str = "push";
const WORKSPACE: &str = "/workspace";
const FILES: &str = "/run/deploybot";
/// A step's own check failed (an artifact it did not leave): the termination message says why.
pub(super) const STEP_CHECK_EXIT: i32 = 97;

pub(super) fn step_container_name(index: usize) -> String {
    format!("step-{index}")
}

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
}

pub(super) fn pod(
    name: &str,
    labels: &BTreeMap<String, String>,
    plan: &ServicePlan,
    settings: &PodSettings<'_>,
) -> Pod {
    let k = settings.executor;
    let mut containers = vec![fetch_container(name, plan, k)];
    containers.extend(plan.steps.iter().map(|step| step_container(step, k)));
    containers.push(image_container(plan, k));
    if let Some(push) = &plan.push {
        containers.push(push_container(&push.reference, k));
    }
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
    Pod {
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
    }
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
fn cache_volume_name(cache: &str) -> String {
    let digest = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(cache.as_bytes())[..6])
    };
    format!("cache-{digest}")
}

fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// Steps and the fetch: no capability, no privilege escalation, the runtime's seccomp profile.
fn confined(user: Option<(i64, i64)>) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        run_as_user: user.map(|(uid, _)| uid),
        run_as_group: user.map(|(_, gid)| gid),
        run_as_non_root: user.map(|_| true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn resources(limits: &Limits, k: &KubernetesExecutor) -> ResourceRequirements {
    let millicpus = u64::try_from(limits.nano_cpus / 1_000_000)
        .unwrap_or(1)
        .max(1);
    let memory = u64::try_from(limits.memory_bytes).unwrap_or(u64::MAX);
    let quantities = |cpu: u64, memory: u64| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(format!("{cpu}m"))),
            ("memory".to_owned(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        limits: Some(quantities(millicpus, memory)),
        requests: Some(quantities(
            k.request_millicpus.min(millicpus),
            k.request_memory_bytes.min(memory),
        )),
        ..Default::default()
    }
}

/// Shell single quotes around `text`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Fetches the ref, checks it is the job's commit, and opens the workspace to the steps' users
/// (it is this pod's alone). The credentials come from the Secret, as git's environment.
fn fetch_container(secret: &str, plan: &ServicePlan, k: &KubernetesExecutor) -> Container {
    let source = &plan.source;
    let fetch = format!(
        "set -e\ngit init -q {WORKSPACE}\ncd {WORKSPACE}\n\
         git fetch -q --update-head-ok --depth 1 \"$DEPLOYBOT_REPOSITORY\" \"+$DEPLOYBOT_REF:$DEPLOYBOT_REF\"\n\
         got=$(git rev-parse \"$DEPLOYBOT_REF^{{commit}}\")\n\
         if [ \"$got\" != \"$DEPLOYBOT_SHA\" ]; then echo \"$DEPLOYBOT_REF is now $got, not $DEPLOYBOT_SHA\" > /dev/termination-log; exit 1; fi\n\
         git checkout -q --detach \"$DEPLOYBOT_SHA\"\nchmod -R a+rwX {WORKSPACE}\n"
    );
    let mut fetch = fetch;
    let mut mounts = vec![mount("workspace", WORKSPACE)];
    if k.cache_claim.is_some() {
        // The steps mount their caches as sub-paths of the claim, as their own users: the
        // sub-paths must exist and be theirs to write.
        let mut caches: Vec<&String> = plan.steps.iter().flat_map(|s| s.volumes.keys()).collect();
        caches.sort();
        caches.dedup();
        for cache in caches {
            let dir = quote(&format!("/caches/{cache}"));
            fetch.push_str(&format!("mkdir -p {dir} && chmod 0777 {dir}\n"));
        }
        mounts.push(mount("caches", "/caches"));
    }
    let mut vars = vec![
        env("HOME", "/tmp"),
        env("GIT_TERMINAL_PROMPT", "0"),
        env("DEPLOYBOT_REPOSITORY", &source.url),
        env("DEPLOYBOT_REF", &source.git_ref),
        env("DEPLOYBOT_SHA", &source.sha),
    ];
    if source.auth_header.is_some() {
        vars.extend([
            env("GIT_CONFIG_COUNT", "1"),
            env("GIT_CONFIG_KEY_0", "http.extraHeader"),
            EnvVar {
                name: "GIT_CONFIG_VALUE_0".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.into(),
                        key: "git-header".into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]);
    }
    Container {
        name: FETCH.into(),
        image: Some(k.builder_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["sh".into(), "-c".into(), fetch]),
        env: Some(vars),
        volume_mounts: Some(mounts),
        security_context: Some(confined(None)),
        resources: Some(resources(&plan.image.limits, k)),
        ..Default::default()
    }
}

/// A step: its commands echoed and run by `sh -e` in the toolchain's image as its user, then
/// the artifacts it must leave checked (regular files, not links).
fn step_container(step: &StepSpec, k: &KubernetesExecutor) -> Container {
    let mut run = script(&step.commands);
    for artifact in &step.artifacts {
        let missing = format!("the step did not produce {artifact} in {}", step.workdir);
        run.push_str(&format!(
            "if [ ! -f {a} ] || [ -L {a} ]; then printf '%s\\n' {m} > /dev/termination-log; exit {STEP_CHECK_EXIT}; fi\n",
            a = quote(artifact),
            m = quote(&missing),
        ));
    }
    let mut mounts = vec![mount("workspace", WORKSPACE)];
    mounts.extend(
        step.volumes
            .iter()
            .map(|(cache, path)| match &k.cache_claim {
                Some(_) => VolumeMount {
                    sub_path: Some(cache.clone()),
                    ..mount("caches", path)
                },
                None => mount(&cache_volume_name(cache), path),
            }),
    );
    let workdir = match step.workdir.trim_matches('/') {
        "" | "." => WORKSPACE.to_owned(),
        dir => format!("{WORKSPACE}/{dir}"),
    };
    Container {
        name: step_container_name(step.index),
        image: Some(step.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["sh".into(), "-c".into(), run]),
        working_dir: Some(workdir),
        env: Some(step.env.iter().map(|(n, v)| env(n, v)).collect()),
        volume_mounts: Some(mounts),
        security_context: Some(confined(Some(uid_gid(&step.user)))),
        resources: Some(resources(&step.limits, k)),
        ..Default::default()
    }
}

/// `uid[:gid]` (checked numeric and non-root by the configuration) as numbers.
fn uid_gid(user: &str) -> (i64, i64) {
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let number = |text: &str| text.parse().unwrap_or(65534);
    (number(uid), number(gid))
}

/// The builder: root inside its container (buildah needs it), seccomp left to the node's
/// default (buildah's user namespace is refused by the runtime's profile).
fn builder(name: &str, script: String, k: &KubernetesExecutor, limits: &Limits) -> Container {
    Container {
        name: name.into(),
        image: Some(k.builder_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["sh".into(), "-c".into(), script]),
        env: Some(vec![
            env("STORAGE_DRIVER", "vfs"),
            env("BUILDAH_ISOLATION", "chroot"),
            env(
                "CONTAINERS_REGISTRIES_CONF",
                &format!("{FILES}/registries.conf"),
            ),
            env("REGISTRY_AUTH_FILE", &format!("{FILES}/auth.json")),
            env("HOME", "/tmp"),
        ]),
        volume_mounts: Some(vec![
            mount("workspace", WORKSPACE),
            mount("containers", "/var/lib/containers"),
            VolumeMount {
                read_only: Some(true),
                ..mount("files", FILES)
            },
        ]),
        resources: Some(resources(limits, k)),
        ..Default::default()
    }
}

/// Clears set-id bits the steps left, refuses a context with a link out of the checkout
/// (naming it), builds with the checked Dockerfile and hands the image id back.
fn image_container(plan: &ServicePlan, k: &KubernetesExecutor) -> Container {
    let image = &plan.image;
    let context = match image.context.trim_matches('/') {
        "" | "." => WORKSPACE.to_owned(),
        dir => format!("{WORKSPACE}/{dir}"),
    };
    let labels: String = image
        .labels
        .iter()
        .map(|(k, v)| format!(" --label {}", quote(&format!("{k}={v}"))))
        .collect();
    let script = format!(
        "set -e\nfind {WORKSPACE} -type f -perm /6000 -exec chmod ug-s {{}} +\ncd {context}\n\
         find . -type l | while read -r link; do\n  target=$(realpath -m \"$link\")\n  \
         case \"$target\" in {WORKSPACE}|{WORKSPACE}/*) ;; *) echo \"build context {ctx}: ${{link#./}} points outside the checkout\" > /dev/termination-log; exit {STEP_CHECK_EXIT} ;; esac\ndone\n\
         buildah bud --pull=missing --layers=false -f {FILES}/Dockerfile{labels} --iidfile /tmp/iid -t {tag} .\n\
         cat /tmp/iid > /dev/termination-log\n",
        ctx = quote(&image.context),
        tag = quote(&image.tag),
    );
    builder(IMAGE, script, k, &image.limits)
}

/// Pushes the built image and hands its digest back.
fn push_container(reference: &str, k: &KubernetesExecutor) -> Container {
    let tls = if is_loopback(reference.split('/').next().unwrap_or("")) {
        " --tls-verify=false"
    } else {
        ""
    };
    let script = format!(
        "set -e\nbuildah push{tls} --digestfile /tmp/digest {r} docker://{r}\ncat /tmp/digest > /dev/termination-log\n",
        r = quote(reference)
    );
    let limits = Limits {
        memory_bytes: 512 * 1024 * 1024,
        nano_cpus: 1_000_000_000,
        pids: 0,
    };
    builder(PUSH, script, k, &limits)
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
