//! `[worker]` and `[[toolchains]]`: how many jobs run, what each step may use, and which images
//! steps may run in (only the toolchains named here, as their non-root users).

use std::time::Duration;

use super::raw::{RawSettings, RawToolchain};
use super::{Problem, Toolchain, WorkerSettings};
use crate::executor::Limits;

const MIB: i64 = 1024 * 1024;
const NANOS_PER_CPU: f64 = 1e9;

pub fn worker(raw: &RawSettings, problems: &mut Vec<Problem>) -> WorkerSettings {
    let w = &raw.worker;
    let mut report = |field: &str, message: String| {
        problems.push(Problem {
            field: format!("worker.{field}"),
            message,
        })
    };
    let mut positive = |field: &str, value: u64| {
        if value == 0 {
            report(field, "must be greater than 0".into());
        }
        value
    };
    let concurrency = positive("concurrency", w.concurrency);
    let service_concurrency = positive("service_concurrency", w.service_concurrency);
    let step_timeout = positive("step_timeout_secs", w.step_timeout_secs);
    let lease = positive("lease_secs", w.lease_secs);
    let log_limit = positive("log_limit_bytes", w.log_limit_bytes);
    let memory_mb = positive("step_memory_mb", w.step_memory_mb);
    let pids = positive("step_pids", w.step_pids);
    let max_context_bytes = positive("max_context_bytes", w.max_context_bytes);
    let max_attempts = positive("max_attempts", w.max_attempts);
    let nano_cpus = cpus_to_nanos(w.step_cpus).unwrap_or_else(|| {
        report(
            "step_cpus",
            format!("{} is not a positive number of CPUs", w.step_cpus),
        );
        0
    });
    for scheme in &w.clone_schemes {
        if !["https", "http", "git", "ssh", "file"].contains(&scheme.as_str()) {
            report(
                "clone_schemes",
                format!("unknown scheme \"{scheme}\" (https, http, git, ssh or file)"),
            );
        }
    }
    WorkerSettings {
        enabled: w.enabled,
        concurrency: to_usize(concurrency),
        service_concurrency: to_usize(service_concurrency),
        step_timeout: Duration::from_secs(step_timeout),
        lease: Duration::from_secs(lease),
        log_limit_bytes: to_usize(log_limit),
        limits: Limits {
            memory_bytes: to_i64(memory_mb).saturating_mul(MIB),
            nano_cpus,
            pids: to_i64(pids),
        },
        max_context_bytes,
        max_attempts: u32::try_from(max_attempts).unwrap_or(u32::MAX),
        clone_schemes: w.clone_schemes.clone(),
    }
}

/// The toolchains, each within the worker's limits. `worker` is what [`worker`] returned.
pub fn toolchains(
    raw: &RawSettings,
    worker: &WorkerSettings,
    problems: &mut Vec<Problem>,
) -> Vec<Toolchain> {
    let mut names = std::collections::HashSet::new();
    raw.toolchains
        .iter()
        .enumerate()
        .filter_map(|(index, t)| {
            let mut report = |key: &str, message: String| {
                problems.push(Problem {
                    field: format!("toolchains[{index}].{key}"),
                    message,
                })
            };
            if !names.insert(t.name.clone()) {
                report("name", format!("toolchain \"{}\" is defined twice", t.name));
            }
            for cache in &t.caches {
                if !cache.starts_with('/') {
                    report(
                        "caches",
                        format!("\"{cache}\" must be an absolute path in the container"),
                    );
                }
            }
            let user = match t.user.as_deref().map(non_root_user) {
                Some(Ok(user)) => Some(user),
                Some(Err(message)) => {
                    report("user", message);
                    None
                }
                None => {
                    report(
                        "user",
                        "missing: steps run as this non-root uid[:gid], e.g. \"1000:1000\"".into(),
                    );
                    None
                }
            };
            let limits = tightened(t, &worker.limits, &mut report);
            Some(Toolchain {
                name: t.name.clone(),
                image: t.image.clone().unwrap_or_else(|| t.name.clone()),
                caches: t.caches.clone(),
                user: user?,
                limits,
            })
        })
        .collect()
}

/// A toolchain's limits: the worker's, or tighter where the toolchain says so.
fn tightened(t: &RawToolchain, worker: &Limits, report: &mut impl FnMut(&str, String)) -> Limits {
    let mut limits = *worker;
    let mut tighten = |key: &str, asked: Option<i64>, ceiling: i64, shown: &str| match asked {
        None => ceiling,
        Some(value) if value > 0 && value <= ceiling => value,
        Some(_) => {
            report(
                key,
                format!("must be above 0 and at most worker.{shown}: a toolchain only tightens the worker's limits"),
            );
            ceiling
        }
    };
    limits.memory_bytes = tighten(
        "memory_mb",
        t.memory_mb.map(|mb| to_i64(mb).saturating_mul(MIB)),
        worker.memory_bytes,
        "step_memory_mb",
    );
    limits.nano_cpus = tighten(
        "cpus",
        t.cpus.map(|c| cpus_to_nanos(c).unwrap_or(0)),
        worker.nano_cpus,
        "step_cpus",
    );
    limits.pids = tighten("pids", t.pids.map(to_i64), worker.pids, "step_pids");
    limits
}

/// `uid` or `uid:gid`, numeric (no passwd lookup in an image deploybot does not control), and
/// not root.
fn non_root_user(user: &str) -> Result<String, String> {
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(uid) || gid.is_some_and(|g| !numeric(g)) {
        return Err(format!("\"{user}\" must be a numeric uid or uid:gid"));
    }
    if uid.trim_start_matches('0').is_empty() {
        return Err(format!("\"{user}\" is root: steps run as a non-root user"));
    }
    Ok(user.to_owned())
}

fn cpus_to_nanos(cpus: f64) -> Option<i64> {
    (cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0).then_some((cpus * NANOS_PER_CPU) as i64)
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_user_must_be_numeric_and_not_root() {
        assert_eq!(non_root_user("1000:1000").unwrap(), "1000:1000");
        assert_eq!(non_root_user("65534").unwrap(), "65534");
        for root in ["0", "0:0", "00:1000"] {
            assert!(
                non_root_user(root).unwrap_err().contains("is root"),
                "{root}"
            );
        }
        for bad in ["root", "builder:1000", "1000:", ""] {
            assert!(non_root_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_become_nanos_and_nonsense_is_refused() {
        assert_eq!(cpus_to_nanos(1.5), Some(1_500_000_000));
        assert_eq!(cpus_to_nanos(0.0), None);
        assert_eq!(cpus_to_nanos(f64::NAN), None);
    }

    use super::super::problems;

    #[test]
    fn a_toolchain_without_a_user_is_refused_naming_its_field() {
        let found = problems("[[toolchains]]\nname = \"golang:1.19\"\n");
        assert_eq!(
            found,
            ["toolchains[0].user: missing: steps run as this non-root uid[:gid], e.g. \"1000:1000\""]
        );
    }

    #[test]
    fn a_toolchain_may_tighten_the_workers_limits_but_never_loosen_them() {
        let base = "[worker]\nstep_pids = 100\n\n[[toolchains]]\nname = \"t\"\nuser = \"1000\"\n";
        assert!(problems(&format!("{base}pids = 50\n")).is_empty());
        assert_eq!(
            problems(&format!("{base}pids = 500\n")),
            ["toolchains[0].pids: must be above 0 and at most worker.step_pids: a toolchain only tightens the worker's limits"]
        );
    }
}
