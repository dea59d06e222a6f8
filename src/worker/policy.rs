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

/// The repository's `.deploybot.toml` (read inside the checkout only), else the project's
/// default, checked against what the project and this deploybot allow.
pub fn read_definition(
    tree: &Tree,
    project: &Project,
    settings: &Settings,
) -> Result<Definition, String> {
    let name = pipeline::definition::FILE_NAME;
    let text = match tree
        .read_text(name, MAX_DEFINITION_BYTES)
        .map_err(|e| e.to_string())?
    {
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
        check_service(service, project, settings)?;
    }
    Ok(definition)
}

fn check_service(service: &Service, project: &Project, settings: &Settings) -> Result<(), String> {
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
        if step.network && !project.allow_network {
            return Err(format!(
                "service \"{name}\": {step_name} asks for network = true, which project {} may not use (allow_network)",
                project.name
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
