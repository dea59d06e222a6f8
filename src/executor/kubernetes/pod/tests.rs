use std::time::Duration;

use secrecy::SecretString;

use super::*;
use crate::executor::{ImagePlan, PushPlan, RegistryAuth, Source};
use crate::executor::{Limits, StepSpec};
use k8s_openapi::api::core::v1::Container;

const TOKEN: &str = "git-token-value-1234";
const PASSWORD: &str = "registry-password-5678";

fn executor() -> KubernetesExecutor {
    KubernetesExecutor {
        namespace: crate::domain::DnsLabel::parse("builds").unwrap(),
        cluster: crate::config::ClusterAccess::InCluster,
        tokens: Vec::new(),
        builder_image: "deploybot-local/builder:1".into(),
        service_account: None,
        node_selector: BTreeMap::new(),
        tolerations: Vec::new(),
        request_millicpus: 100,
        request_memory_bytes: 64 << 20,
        host_network: false,
        cache_claim: None,
        search_registries: vec!["127.0.0.1:5000".into()],
        start_timeout: Duration::from_secs(60),
    }
}

fn plan() -> ServicePlan {
    let limits = Limits {
        memory_bytes: 1 << 30,
        nano_cpus: 2_000_000_000,
        pids: 256,
    };
    let step = |index: usize, image: &str| StepSpec {
        job: 7,
        service: "eventservice".into(),
        image: image.into(),
        commands: vec!["go vet ./...".into()],
        workspace: "/unused".into(),
        workdir: "src/eventservice".into(),
        network: false,
        user: "1000:1000".into(),
        volumes: BTreeMap::from([("deploybot-cache-p-tags-go".into(), "/go".into())]),
        env: vec![("CI".into(), "true".into())],
        limits,
        reserve: false,
        timeout: Duration::from_secs(600),
        index,
        artifacts: vec!["eventservice".into()],
    };
    ServicePlan {
        job: 7,
        service: "eventservice".into(),
        source: Source {
            url: "https://git.example/team/app.git".into(),
            git_ref: "refs/tags/v1.0.0".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            auth_header: Some(SecretString::from(format!("Authorization: Basic {TOKEN}"))),
        },
        steps: vec![
            step(0, "deploybot-local/golang:1.19"),
            step(1, "deploybot-local/golang:1.19"),
        ],
        image: ImagePlan {
            context: "src/eventservice".into(),
            dockerfile: "FROM deploybot-local/static:latest\nCOPY eventservice /\n".into(),
            tag: "127.0.0.1:5000/myevents/eventservice:v1.0.0".into(),
            labels: BTreeMap::from([("org.opencontainers.image.revision".into(), "0123".into())]),
            network: false,
            limits,
        },
        push: Some(PushPlan {
            reference: "127.0.0.1:5000/myevents/eventservice:v1.0.0".into(),
        }),
        registry_auth: Some(RegistryAuth {
            server: "127.0.0.1:5000".into(),
            username: "deploybot".into(),
            password: SecretString::from(PASSWORD.to_owned()),
        }),
    }
}

fn built() -> Pod {
    let k = executor();
    let settings = PodSettings {
        executor: &k,
        deadline_secs: 3600,
        nonce: "n0nce",
    };
    pod("p", &labels("abc", 7, "eventservice"), &plan(), &settings).0
}

fn names(containers: &[Container]) -> Vec<&str> {
    containers.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn the_build_pod_fetches_then_runs_the_steps_then_builds_and_pushes() {
    let spec = built().spec.unwrap();
    let init = spec.init_containers.unwrap();
    // Both steps run alike (same toolchain, user, limits, caches): one container.
    assert_eq!(names(&init), ["fetch", "steps-0"]);
    assert_eq!(names(&spec.containers), ["image"]);
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
}

#[test]
fn a_build_pod_gets_no_cluster_token_no_host_network_and_no_privilege() {
    let spec = built().spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.host_network, None);
    let all = spec
        .init_containers
        .unwrap()
        .into_iter()
        .chain(spec.containers);
    for container in all {
        let privileged = container
            .security_context
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        assert!(!privileged, "{}", container.name);
    }
    assert!(spec.volumes.unwrap().iter().all(|v| v.host_path.is_none()));
}

#[test]
fn steps_run_as_the_toolchains_user_with_every_capability_dropped() {
    let init = built().spec.unwrap().init_containers.unwrap();
    let step = &init[1];
    let security = step.security_context.clone().unwrap();
    assert_eq!(security.run_as_user, Some(1000));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    let script = &step.command.as_ref().unwrap()[2];
    assert!(
        script.contains("cd '/workspace/src/eventservice' || exit 1"),
        "{script}"
    );
    assert!(script.contains("go vet ./..."), "{script}");
    assert!(
        script.contains("[ ! -f '/workspace/src/eventservice/eventservice' ]"),
        "{script}"
    );
}

#[test]
fn no_credential_is_in_the_pod_spec_only_in_its_secret() {
    let pod = serde_json::to_string(&built()).unwrap();
    for secret in [TOKEN, PASSWORD, "ZGVwbG95Ym90"] {
        assert!(!pod.contains(secret), "{secret} is in the pod spec");
    }
    let made = secret(
        "p",
        &labels("abc", 7, "eventservice"),
        &plan(),
        &["127.0.0.1:5000".into()],
    );
    let data = made.data.unwrap();
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    assert!(text("git-header").contains(TOKEN));
    assert!(text("auth.json").contains("127.0.0.1:5000"));
    assert!(text("registries.conf").contains("insecure = true"));
    assert!(text("Dockerfile").starts_with("FROM deploybot-local/static:latest"));
}

#[test]
fn a_build_without_network_may_reach_only_dns_and_the_named_hosts() {
    let allowed = ["127.0.0.1".parse().unwrap()];
    let policy = network_policy("p", &labels("abc", 7, "eventservice"), &allowed);
    let spec = policy.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Egress"]);
    let egress = spec.egress.unwrap();
    assert_eq!(egress.len(), 2);
    let cidrs: Vec<String> = egress[1]
        .to
        .iter()
        .flatten()
        .filter_map(|peer| peer.ip_block.as_ref().map(|b| b.cidr.clone()))
        .collect();
    assert_eq!(cidrs, ["127.0.0.1/32"]);
}

#[test]
fn object_names_are_dns_labels_even_for_long_service_names() {
    let name = object_name("0123456789ab", 123456, &"Very_Long-service".repeat(5));
    assert!(name.len() <= 63, "{name}");
    assert!(name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    assert!(!name.ends_with('-'));
}

#[test]
fn loopback_registries_are_spoken_to_over_plain_http() {
    assert!(is_loopback("127.0.0.1:5000"));
    assert!(is_loopback("localhost:5000"));
    assert!(!is_loopback("registry.example:443"));
}

#[test]
fn with_a_cache_claim_each_step_mounts_its_caches_sub_path_which_the_fetch_prepares() {
    let mut k = executor();
    k.cache_claim = Some(crate::domain::DnsLabel::parse("caches").unwrap());
    let settings = PodSettings {
        executor: &k,
        deadline_secs: 3600,
        nonce: "n0nce",
    };
    let spec = pod("p", &labels("abc", 7, "eventservice"), &plan(), &settings)
        .0
        .spec
        .unwrap();
    let init = spec.init_containers.unwrap();
    let cache = init[1]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/go")
        .unwrap();
    assert_eq!(cache.name, "caches");
    assert_eq!(cache.sub_path.as_deref(), Some("deploybot-cache-p-tags-go"));
    let fetch = &init[0].command.as_ref().unwrap()[2];
    assert!(
        fetch.contains("mkdir -p '/caches/deploybot-cache-p-tags-go'"),
        "{fetch}"
    );
    let claim = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "caches")
        .unwrap();
    assert_eq!(claim.persistent_volume_claim.unwrap().claim_name, "caches");
}

#[test]
fn a_step_that_asked_for_resources_has_them_reserved_and_others_get_the_default_requests() {
    let k = executor();
    let settings = PodSettings {
        executor: &k,
        deadline_secs: 3600,
        nonce: "n0nce",
    };
    let mut asked = plan();
    asked.steps[1].reserve = true;
    asked.steps[1].image = "deploybot-local/other:1".into();
    let (pod, _) = pod("p", &labels("abc", 7, "eventservice"), &asked, &settings);
    let init = pod.spec.unwrap().init_containers.unwrap();
    let requests = |c: &Container| c.resources.clone().unwrap().requests.unwrap();
    let limits = |c: &Container| c.resources.clone().unwrap().limits.unwrap();
    assert_eq!(requests(&init[1])["cpu"].0, "100m", "the default request");
    assert_eq!(
        requests(&init[2]),
        limits(&init[2]),
        "reserved: requests = limits"
    );
}

#[test]
fn a_context_path_reaches_the_builders_shell_quoted() {
    let k = executor();
    let settings = PodSettings {
        executor: &k,
        deadline_secs: 3600,
        nonce: "n0nce",
    };
    let mut hostile = plan();
    hostile.image.context = "a b;touch /tmp/pwned".into();
    let (pod, _) = pod("p", &labels("abc", 7, "eventservice"), &hostile, &settings);
    let builder = &pod.spec.unwrap().containers[0];
    let script = &builder.command.as_ref().unwrap()[2];
    assert!(
        script.contains("cd '/workspace/a b;touch /tmp/pwned'"),
        "{script}"
    );
    assert!(!script.contains("cd /workspace/a b"), "{script}");
}
