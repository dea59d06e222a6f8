//! The containers of a build pod and what each runs, without talking to the cluster. A
//! container runs one or more *segments* in order (a step, the image build, the push), each
//! ending with a marker line on its output, `::deploybot:: <nonce> <segment> <exit code>
//! [<result>]`, so that deploybot follows several segments through one container: the kubelet
//! takes about a second to notice that a container ended and start the next, so consecutive
//! steps in the same toolchain share a container, and the push shares the image build's. The
//! last segment of a container is also checked against how the container really ended (its exit
//! code and termination message), so output that imitates a marker can move a failure between a
//! container's segments but never turn it into a success.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::super::lines::script;
use super::super::{Limits, ServicePlan, StepSpec};
use super::pod::is_loopback;
use crate::config::KubernetesExecutor;

pub(super) const FETCH: &str = "fetch";
const BUILDER: &str = "image";
pub(super) const WORKSPACE: &str = "/workspace";
pub(super) const FILES: &str = "/run/deploybot";
/// A step's own check failed (an artifact it did not leave): the marker's result says why.
pub(super) const STEP_CHECK_EXIT: i64 = 97;
/// The build context has a link out of the checkout: the marker's result names it.
pub(super) const CONTEXT_EXIT: i64 = 98;
const MARKER: &str = "::deploybot::";

/// What deploybot follows through the pod, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Segment {
    Step(usize),
    Image,
    Push,
}

impl Segment {
    fn name(&self) -> String {
        match self {
            Segment::Step(index) => format!("step-{index}"),
            Segment::Image => "image".into(),
            Segment::Push => "push".into(),
        }
    }
}

/// Where a segment runs: its container, and whether it is that container's last.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Place {
    pub(super) container: String,
    pub(super) last: bool,
}

/// Which container runs each segment.
#[derive(Debug, Default)]
pub(super) struct Layout(HashMap<Segment, Place>);

impl Layout {
    pub(super) fn place(&self, segment: &Segment) -> Option<&Place> {
        self.0.get(segment)
    }

    fn add(&mut self, container: &str, segments: Vec<Segment>) {
        let count = segments.len();
        for (i, segment) in segments.into_iter().enumerate() {
            let place = Place {
                container: container.to_owned(),
                last: i + 1 == count,
            };
            self.0.insert(segment, place);
        }
    }
}

/// A segment's end as its marker says.
#[derive(Debug, PartialEq)]
pub(super) struct Marker {
    pub(super) segment: String,
    pub(super) code: i64,
    pub(super) result: String,
}

/// The marker in `line`, if it is one with this pod's nonce.
pub(super) fn marker(line: &str, nonce: &str) -> Option<Marker> {
    let rest = line.strip_prefix(MARKER)?.strip_prefix(' ')?;
    let rest = rest.strip_prefix(nonce)?.strip_prefix(' ')?;
    let mut parts = rest.splitn(3, ' ');
    let segment = parts.next()?.to_owned();
    let code = parts.next()?.parse().ok()?;
    let result = parts.next().unwrap_or("").trim().to_owned();
    Some(Marker {
        segment,
        code,
        result,
    })
}

pub(super) fn segment_name(segment: &Segment) -> String {
    segment.name()
}

/// The shell line that prints a segment's marker: `$code`, and `$result` (may be empty).
fn print_marker(nonce: &str, segment: &Segment) -> String {
    format!(
        "printf '%s %s %s %s %s\\n' '{MARKER}' '{nonce}' '{}' \"$code\" \"$result\"\n",
        segment.name()
    )
}

/// The pod's containers in order (fetch, the steps, the builder) and where each segment runs.
pub(super) fn containers(
    secret: &str,
    plan: &ServicePlan,
    k: &KubernetesExecutor,
    nonce: &str,
) -> (Vec<Container>, Layout) {
    let mut layout = Layout::default();
    let mut containers = vec![fetch_container(secret, plan, k)];
    for group in step_groups(&plan.steps) {
        let name = format!("steps-{}", group[0].index);
        layout.add(
            &name,
            group.iter().map(|s| Segment::Step(s.index)).collect(),
        );
        containers.push(steps_container(&name, &group, k, nonce));
    }
    let mut segments = vec![Segment::Image];
    segments.extend(plan.push.as_ref().map(|_| Segment::Push));
    layout.add(BUILDER, segments);
    containers.push(builder_container(plan, k, nonce));
    (containers, layout)
}

/// Consecutive steps that run alike (image, user, limits, caches, environment) share a
/// container.
fn step_groups(steps: &[StepSpec]) -> Vec<Vec<&StepSpec>> {
    let mut groups: Vec<Vec<&StepSpec>> = Vec::new();
    for step in steps {
        match groups.last_mut() {
            Some(group) if alike(group[0], step) => group.push(step),
            _ => groups.push(vec![step]),
        }
    }
    groups
}

fn alike(a: &StepSpec, b: &StepSpec) -> bool {
    a.image == b.image
        && a.user == b.user
        && a.limits == b.limits
        && a.reserve == b.reserve
        && a.volumes == b.volumes
        && a.env == b.env
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

/// A container's limits, and what it asks the scheduler for: the executor's default requests,
/// or (`reserve`) its limits.
fn resources(limits: &Limits, reserve: bool, k: &KubernetesExecutor) -> ResourceRequirements {
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
        requests: Some(if reserve {
            quantities(millicpus, memory)
        } else {
            quantities(
                k.request_millicpus.min(millicpus),
                k.request_memory_bytes.min(memory),
            )
        }),
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
        resources: Some(resources(&plan.image.limits, false, k)),
        ..Default::default()
    }
}

/// Steps in one toolchain image as its user: each in a subshell in its working directory, its
/// commands echoed and run by `sh -e`, then the artifacts it must leave checked (regular files,
/// not links), then its marker; the container stops at the first step that fails.
fn steps_container(
    name: &str,
    group: &[&StepSpec],
    k: &KubernetesExecutor,
    nonce: &str,
) -> Container {
    let first = group[0];
    let mut run = String::new();
    for step in group {
        let dir = match step.workdir.trim_matches('/') {
            "" | "." => WORKSPACE.to_owned(),
            dir => format!("{WORKSPACE}/{dir}"),
        };
        run.push_str(&format!(
            "(\ncd {} || exit 1\n{})\ncode=$?\nresult=\n",
            quote(&dir),
            script(&step.commands)
        ));
        for artifact in &step.artifacts {
            let missing = format!("the step did not produce {artifact} in {}", step.workdir);
            run.push_str(&format!(
                "if [ $code -eq 0 ] && {{ [ ! -f {a} ] || [ -L {a} ]; }}; then code={STEP_CHECK_EXIT}; result={m}; fi\n",
                a = quote(&format!("{dir}/{artifact}")),
                m = quote(&missing),
            ));
        }
        run.push_str(&print_marker(nonce, &Segment::Step(step.index)));
        run.push_str("[ $code -eq 0 ] || exit $code\n");
    }
    let mut mounts = vec![mount("workspace", WORKSPACE)];
    mounts.extend(
        first
            .volumes
            .iter()
            .map(|(cache, path)| match &k.cache_claim {
                Some(_) => VolumeMount {
                    sub_path: Some(cache.clone()),
                    ..mount("caches", path)
                },
                None => mount(&super::pod::cache_volume_name(cache), path),
            }),
    );
    Container {
        name: name.into(),
        image: Some(first.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["sh".into(), "-c".into(), run]),
        working_dir: Some(WORKSPACE.into()),
        env: Some(first.env.iter().map(|(n, v)| env(n, v)).collect()),
        volume_mounts: Some(mounts),
        security_context: Some(confined(Some(uid_gid(&first.user)))),
        resources: Some(resources(&first.limits, first.reserve, k)),
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
/// default (buildah's user namespace is refused by the runtime's profile). It clears set-id bits
/// the steps left, refuses a context with a link out of the checkout (naming it), builds the
/// checked Dockerfile, and pushes when the job pushes this tag; the image id, then the digest,
/// come back in markers, the last one also as the termination message.
fn builder_container(plan: &ServicePlan, k: &KubernetesExecutor, nonce: &str) -> Container {
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
    let last = if plan.push.is_some() {
        ""
    } else {
        " > /dev/termination-log"
    };
    let mut script = format!(
        "find {WORKSPACE} -type f -perm /6000 -exec chmod ug-s {{}} +\n\
         inside() {{ case \"$(realpath -m \"$1\")\" in {WORKSPACE}|{WORKSPACE}/*) return 0 ;; esac; return 1; }}\n\
         code=0; result=; link=; name={ctx}\n\
         if ! inside {dir}; then link={ctx}; else cd {dir} || exit 1\n\
         link=$(find . -type l | while read -r l; do inside \"$l\" || {{ echo \"${{l#./}}\"; break; }}; done); fi\n\
         if [ -n \"$link\" ]; then code={CONTEXT_EXIT}; result=\"build context $name: $link points outside the checkout\"; else\n\
         buildah bud --pull=missing --layers=false -f {FILES}/Dockerfile{labels} --iidfile /tmp/iid -t {tag} . || code=$?\n\
         [ $code -ne 0 ] || {{ result=$(cat /tmp/iid); printf '%s' \"$result\"{last}; }}\nfi\n",
        dir = quote(&context),
        ctx = quote(&image.context),
        tag = quote(&image.tag),
    );
    script.push_str(&print_marker(nonce, &Segment::Image));
    script.push_str("[ $code -eq 0 ] || exit $code\n");
    if let Some(push) = &plan.push {
        let tls = if is_loopback(push.reference.split('/').next().unwrap_or("")) {
            " --tls-verify=false"
        } else {
            ""
        };
        // Tried again with backoff (buildah 1.28 has no --retry), unless the registry refused
        // the credentials: the same policy as the Docker executor's.
        script.push_str(&format!(
            "code=0; result=; wait={first}; try=1\n\
             while :; do code=0; buildah push{tls} --digestfile /tmp/digest {r} docker://{r} 2>/tmp/push.err || code=$?\n\
             cat /tmp/push.err >&2\n\
             [ $code -ne 0 ] && [ $try -lt {attempts} ] && ! grep -qiE '{refused}' /tmp/push.err || break\n\
             echo \"push failed; trying again in $wait s (attempt $((try + 1)) of {attempts})\"; sleep $wait; wait=$((wait * 2)); try=$((try + 1)); done\n\
             [ $code -ne 0 ] || {{ result=$(cat /tmp/digest); printf '%s' \"$result\" > /dev/termination-log; }}\n",
            r = quote(&push.reference),
            first = crate::executor::PUSH_RETRY_FIRST_SECS,
            attempts = crate::executor::PUSH_ATTEMPTS,
            refused = crate::executor::PUSH_REFUSED.join("|"),
        ));
        script.push_str(&print_marker(nonce, &Segment::Push));
        script.push_str("exit $code\n");
    }
    Container {
        name: BUILDER.into(),
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
        resources: Some(resources(&image.limits, false, k)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
