//! What a repository's pipeline may do here. The repository writes `.deploybot.toml` and its
//! Dockerfiles; the operator's configuration says what they may ask for: which images they may
//! build, which Deployments they may name, which toolchains steps run in, whether steps get the
//! network and whether Dockerfiles may run commands. Everything is checked before anything
//! runs, and a pipeline asking for more fails the job naming the service and what it asked.

use crate::checkout::Tree;
use crate::config::{Project, Settings};
use crate::pipeline::dockerfile::Dockerfile;
use crate::pipeline::{self, Definition, Service};

/// The largest `.deploybot.toml` or Dockerfile deploybot reads.
pub const MAX_DEFINITION_BYTES: u64 = 1024 * 1024;

/// Whether a job's steps and image builds may have the network, and the key that says so
/// (named when a step asks for more).
#[derive(Debug, Clone, Copy)]
pub struct Network {
    pub allowed: bool,
    pub key: &'static str,
}

impl Network {
    /// Where the project allows it; for a fork's pull request only where `fork_network` does
    /// too.
    pub fn for_job(project: &Project, fork: bool) -> Network {
        if fork {
            Network {
                allowed: project.allow_network && project.pull_requests.fork_network,
                key: "allow_network and fork_network",
            }
        } else {
            Network {
                allowed: project.allow_network,
                key: "allow_network",
            }
        }
    }
}

/// The repository's `.deploybot.toml` as read inside the checkout only (None: it has none).
pub fn repository_definition(tree: &Tree) -> Result<Option<String>, String> {
    tree.read_text(pipeline::definition::FILE_NAME, MAX_DEFINITION_BYTES)
        .map_err(|e| e.to_string())
}

/// The pipeline `text` (else the project's default), checked against what the project and
/// this deploybot allow.
pub fn read_definition(
    text: Option<String>,
    project: &Project,
    settings: &Settings,
    network: Network,
) -> Result<Definition, String> {
    let name = pipeline::definition::FILE_NAME;
    let text = match text {
        Some(text) => text,
        None => project.default_pipeline.clone().ok_or_else(|| {
            format!(
                "no {name} in the repository and no default_pipeline_file for project {}",
                project.name
            )
        })?,
    };
    let definition = pipeline::definition::parse(&text).map_err(|e| e.to_string())?;
    for service in &definition.services {
        check_service(service, project, settings, network)?;
    }
    Ok(definition)
}

fn check_service(
    service: &Service,
    project: &Project,
    settings: &Settings,
    network: Network,
) -> Result<(), String> {
    let name = &service.name;
    if !project
        .allowed_images
        .iter()
        .any(|p| p.matches(&service.image))
    {
        return Err(format!(
            "service \"{name}\": image \"{}\" is not allowed for project {} (allowed_images)",
            service.image, project.name
        ));
    }
    if let Some(deployment) = &service.deployment {
        if !project
            .allowed_deployments
            .iter()
            .any(|p| p.matches(deployment))
        {
            return Err(format!(
                "service \"{name}\": Deployment \"{deployment}\" is not allowed for project {} (allowed_deployments)",
                project.name
            ));
        }
    }
    for (index, step) in service.steps.iter().enumerate() {
        let step_name = format!("step {} ({})", index + 1, step.stage.as_str());
        for image in &step.images {
            if let Some(toolchain) = settings.toolchain(image) {
                check_ask(step, toolchain)
                    .map_err(|m| format!("service \"{name}\": {step_name} {m}"))?;
            }
            if settings.toolchain(image).is_none() {
                let known: Vec<&str> = settings
                    .toolchains
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect();
                return Err(format!(
                    "service \"{name}\": {step_name} runs in \"{image}\", which is not a toolchain of this deploybot (toolchains: {})",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ));
            }
        }
        if step.network && !network.allowed {
            return Err(format!(
                "service \"{name}\": {step_name} asks for network = true, which project {} may not use ({})",
                project.name, network.key
            ));
        }
    }
    Ok(())
}

/// What a step asks for, within what its toolchain allows (the operator's ceiling).
fn check_ask(step: &pipeline::Step, toolchain: &crate::config::Toolchain) -> Result<(), String> {
    let limits = &toolchain.limits;
    if let Some(millicpus) = step.millicpus {
        let most = u64::try_from(limits.nano_cpus / 1_000_000).unwrap_or(0);
        if millicpus > most {
            return Err(format!(
                "asks for cpus = {}, more than toolchain \"{}\" allows ({})",
                millicpus as f64 / 1000.0,
                toolchain.name,
                most as f64 / 1000.0
            ));
        }
    }
    if let Some(memory_mb) = step.memory_mb {
        let most = u64::try_from(limits.memory_bytes / (1024 * 1024)).unwrap_or(0);
        if memory_mb > most {
            return Err(format!(
                "asks for memory_mb = {memory_mb}, more than toolchain \"{}\" allows ({most})",
                toolchain.name
            ));
        }
    }
    Ok(())
}

/// A Dockerfile that runs commands (`RUN`, `ONBUILD`) is built only for projects allowed to:
/// the engine runs them in its own build containers, which deploybot cannot confine the way
/// it confines steps (capabilities, pids).
pub fn check_dockerfile(
    dockerfile: &Dockerfile,
    path: &str,
    project: &Project,
) -> Result<(), String> {
    match dockerfile.first_command() {
        Some(command) if !project.allow_dockerfile_run => Err(format!(
            "{path}:{}: {} runs commands in the image build, which project {} may not do (allow_dockerfile_run); build in a compile step and COPY its artifacts instead",
            command.line, command.keyword, project.name
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toolchain() -> crate::config::Toolchain {
        crate::config::Toolchain {
            name: "golang:1.19".into(),
            image: "deploybot-local/golang:1.19".into(),
            caches: Vec::new(),
            user: "1000:1000".into(),
            limits: crate::executor::Limits {
                memory_bytes: 2048 * 1024 * 1024,
                nano_cpus: 2_000_000_000,
                pids: 512,
            },
        }
    }

    fn step(millicpus: Option<u64>, memory_mb: Option<u64>) -> pipeline::Step {
        let text = "[[services]]\nname = \"web\"\n[[services.steps]]\nstage = \"check\"\nimage = \"golang:1.19\"\ncommands = [\"true\"]\n";
        let mut step = pipeline::definition::parse(text).unwrap().services[0].steps[0].clone();
        step.millicpus = millicpus;
        step.memory_mb = memory_mb;
        step
    }

    #[test]
    fn a_step_may_ask_for_up_to_its_toolchains_limits_and_no_more() {
        assert!(check_ask(&step(Some(2000), Some(2048)), &toolchain()).is_ok());
        let cpus = check_ask(&step(Some(2500), None), &toolchain()).unwrap_err();
        assert_eq!(
            cpus,
            "asks for cpus = 2.5, more than toolchain \"golang:1.19\" allows (2)"
        );
        let memory = check_ask(&step(None, Some(4096)), &toolchain()).unwrap_err();
        assert!(memory.starts_with("asks for memory_mb = 4096"), "{memory}");
    }
}
