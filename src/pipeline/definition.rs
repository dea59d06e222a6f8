//! `.deploybot.toml`, the repository's own pipeline: which services to build, how to check and
//! compile each one in a toolchain container, how to build its image, and which refs push.
//!
//! ```toml
//! [push]
//! tags = ["v*"]            # tag patterns that push images (default: every tag)
//! branches = []            # branches that push too (default: none)
//!
//! [[services]]
//! name = "eventservice"    # a DNS-1123 label: it names the image and, later, the Deployment
//! context = "src/eventservice"
//! dockerfile = "Dockerfile"            # relative to context
//! image = "myevents/eventservice"      # repository under the configured registry
//! deployment = "eventservice"          # for the deploy stage
//! container = "api"
//! inputs = ["go.mod", "pkg/shared"]   # paths outside the context the build also reads
//!
//! [[services.steps]]
//! stage = "check"          # check | compile
//! image = "golang:1.19"    # or a list: a matrix of toolchain images
//! commands = ["go vet ./...", "go test ./..."]
//! network = false          # the default: hermetic
//! ```
//!
//! Errors name the file, the line and the field, e.g.
//! `.deploybot.toml:14: services[1].name: "Event_Service" is not a DNS-1123 label`.

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::glob::Pattern;
use crate::domain::DnsLabel;

pub const FILE_NAME: &str = ".deploybot.toml";

/// A pipeline definition, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub push: PushPolicy,
    pub services: Vec<Service>,
}

/// Which refs push images (and so may deploy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPolicy {
    pub tags: Vec<Pattern>,
    pub branches: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// It names the image and, often, the Deployment.
    pub name: DnsLabel,
    /// Build context, relative to the repository root (no `..`, not absolute).
    pub context: String,
    /// Dockerfile path, relative to the context.
    pub dockerfile: String,
    /// Image repository (without registry and tag), e.g. `myevents/eventservice`.
    pub image: String,
    pub deployment: Option<DnsLabel>,
    pub container: Option<DnsLabel>,
    /// Paths outside the context its build also depends on (a shared module, `go.mod`):
    /// with the context, they decide whether an unchanged service is rebuilt.
    pub inputs: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Check,
    Compile,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Check => "check",
            Stage::Compile => "compile",
        }
    }
}

impl From<Stage> for crate::domain::StageName {
    fn from(stage: Stage) -> Self {
        match stage {
            Stage::Check => crate::domain::StageName::Check,
            Stage::Compile => crate::domain::StageName::Compile,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub stage: Stage,
    /// One image, or several: the step runs once per image (a matrix).
    pub images: Vec<String>,
    pub commands: Vec<String>,
    /// Working directory, relative to the repository root (default: the service's context).
    pub workdir: String,
    pub network: bool,
    /// Files the step must leave behind (relative to `workdir`), handed to the image build.
    pub artifacts: Vec<String>,
    /// CPUs (in thousandths) and memory the step asks for (`cpus`, `memory_mb`; up to its
    /// toolchain's limits, which the policy checks); None: the toolchain's limits, and the
    /// executor's default requests.
    pub millicpus: Option<u64>,
    pub memory_mb: Option<u64>,
}

/// What is wrong with a definition: file, line (where known), field, message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{FILE_NAME}:{line}: {field}{sep}{message}", line = .line.map_or("?".into(), |l| l.to_string()), sep = if .field.is_empty() { "" } else { ": " })]
pub struct DefinitionError {
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefinition {
    #[serde(default)]
    push: Option<RawPush>,
    #[serde(default)]
    services: Vec<Spanned<RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPush {
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    branches: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    context: Option<String>,
    dockerfile: Option<String>,
    image: Option<String>,
    deployment: Option<String>,
    container: Option<String>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    stage: String,
    image: OneOrMany,
    commands: Vec<String>,
    workdir: Option<String>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    artifacts: Vec<String>,
    cpus: Option<f64>,
    memory_mb: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Parses and checks a definition; every error names its line and field.
pub fn parse(text: &str) -> Result<Definition, DefinitionError> {
    let raw: RawDefinition = toml::from_str(text).map_err(|e| DefinitionError {
        line: e.span().and_then(|s| line_of(text, s.start)),
        field: String::new(),
        message: e.message().trim_end().replace('\n', " "),
    })?;
    let push = push_policy(raw.push)?;
    if raw.services.is_empty() {
        return Err(DefinitionError {
            line: None,
            field: "services".into(),
            message: "no [[services]] defined".into(),
        });
    }
    let mut names = HashSet::new();
    let services = raw
        .services
        .into_iter()
        .enumerate()
        .map(|(index, spanned)| service(text, index, spanned, &mut names))
        .collect::<Result<_, _>>()?;
    Ok(Definition { push, services })
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> Option<usize> {
    Some(text[..offset.min(text.len())].matches('\n').count() + 1)
}

/// Without a `[push]` table every tag pushes and no branch does.
fn push_policy(raw: Option<RawPush>) -> Result<PushPolicy, DefinitionError> {
    Ok(match raw {
        None => PushPolicy {
            tags: vec![Pattern::any()],
            branches: Vec::new(),
        },
        Some(push) => PushPolicy {
            tags: patterns(push.tags.unwrap_or_else(|| vec!["*".into()]), "push.tags")?,
            branches: patterns(push.branches, "push.branches")?,
        },
    })
}

fn service(
    text: &str,
    index: usize,
    spanned: Spanned<RawService>,
    names: &mut HashSet<String>,
) -> Result<Service, DefinitionError> {
    let line = line_of(text, spanned.span().start);
    let raw = spanned.into_inner();
    let fail = |name: &str, message: String| DefinitionError {
        line,
        field: format!("services[{index}].{name}"),
        message,
    };
    let name = DnsLabel::parse(&raw.name).map_err(|e| fail("name", e.to_string()))?;
    if !names.insert(raw.name.clone()) {
        return Err(fail(
            "name",
            format!("service \"{}\" is defined twice", raw.name),
        ));
    }
    let context = relative_path(raw.context.as_deref().unwrap_or(&raw.name))
        .map_err(|m| fail("context", m))?;
    let dockerfile = relative_path(raw.dockerfile.as_deref().unwrap_or("Dockerfile"))
        .map_err(|m| fail("dockerfile", m))?;
    let image = raw.image.unwrap_or_else(|| raw.name.clone());
    if !is_image_repository(&image) {
        return Err(fail(
            "image",
            format!("\"{image}\" is not an image repository like team/service"),
        ));
    }
    let label = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| {
                DnsLabel::parse(v)
                    .map_err(|_| fail(key, format!("\"{v}\" is not a DNS-1123 label")))
            })
            .transpose()
    };
    let deployment = label("deployment", &raw.deployment)?;
    let container = label("container", &raw.container)?;
    let inputs = raw
        .inputs
        .iter()
        .map(|p| relative_path(p).map_err(|m| fail("inputs", m)))
        .collect::<Result<_, _>>()?;
    let steps = raw
        .steps
        .into_iter()
        .enumerate()
        .map(|(step_index, spanned)| step(text, (index, step_index), spanned, &context))
        .collect::<Result<_, _>>()?;
    Ok(Service {
        name,
        context,
        dockerfile,
        image,
        deployment,
        container,
        inputs,
        steps,
    })
}

/// Step `at.1` of service `at.0`; its working directory defaults to the service's context.
fn step(
    text: &str,
    at: (usize, usize),
    spanned: Spanned<RawStep>,
    context: &str,
) -> Result<Step, DefinitionError> {
    let line = line_of(text, spanned.span().start);
    let step = spanned.into_inner();
    let fail = |name: &str, message: String| DefinitionError {
        line,
        field: format!("services[{}].steps[{}].{name}", at.0, at.1),
        message,
    };
    let stage = match step.stage.as_str() {
        "check" => Stage::Check,
        "compile" => Stage::Compile,
        other => {
            return Err(fail(
                "stage",
                format!("unknown stage \"{other}\" (expected check or compile)"),
            ))
        }
    };
    let images = match step.image {
        OneOrMany::One(image) => vec![image],
        OneOrMany::Many(images) => images,
    };
    if images.is_empty() || images.iter().any(|i| i.trim().is_empty()) {
        return Err(fail("image", "give an image, or a non-empty list".into()));
    }
    if step.commands.is_empty() {
        return Err(fail("commands", "at least one command is needed".into()));
    }
    let workdir = relative_path(step.workdir.as_deref().unwrap_or(context))
        .map_err(|m| fail("workdir", m))?;
    let artifacts = step
        .artifacts
        .iter()
        .map(|a| relative_path(a).map_err(|m| fail("artifacts", m)))
        .collect::<Result<_, _>>()?;
    if let Some(cpus) = step.cpus.filter(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(fail(
            "cpus",
            format!("{cpus} is not a positive number of CPUs"),
        ));
    }
    if step.memory_mb == Some(0) {
        return Err(fail("memory_mb", "must be greater than 0".into()));
    }
    Ok(Step {
        stage,
        images,
        commands: step.commands,
        workdir,
        network: step.network,
        artifacts,
        millicpus: step.cpus.map(|c| (c * 1000.0).ceil() as u64),
        memory_mb: step.memory_mb,
    })
}

fn patterns(raw: Vec<String>, field: &str) -> Result<Vec<Pattern>, DefinitionError> {
    raw.into_iter()
        .map(|p| {
            Pattern::parse(&p).map_err(|message| DefinitionError {
                line: None,
                field: field.into(),
                message,
            })
        })
        .collect()
}

fn is_image_repository(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

/// A path inside the checkout: relative, no `..`, normalised (`./` and doubled `/` removed).
fn relative_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        return Err(format!("\"{s}\" must be relative to the repository"));
    }
    let parts: Vec<&str> = s
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("\"{s}\" must stay inside the repository (no ..)"));
    }
    Ok(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[push]
tags = ["v*"]

[[services]]
name = "eventservice"
context = "src/eventservice"
image = "myevents/eventservice"
deployment = "eventservice"
container = "api"

[[services.steps]]
stage = "check"
image = ["golang:1.19", "golang:1.20"]
commands = ["go vet ./..."]

[[services.steps]]
stage = "compile"
image = "golang:1.19"
commands = ["go build -o app ."]
artifacts = ["app"]
"#;

    #[test]
    fn a_full_definition_parses_with_defaults_filled_in() {
        let definition = parse(SAMPLE).unwrap();
        let service = &definition.services[0];
        assert_eq!(service.dockerfile, "Dockerfile");
        assert_eq!(service.steps[0].images, ["golang:1.19", "golang:1.20"]);
        assert_eq!(service.steps[0].workdir, "src/eventservice");
        assert!(!service.steps[0].network, "steps are hermetic by default");
        assert!(definition.push.tags[0].matches("v1.2.3"));
        assert!(!definition.push.tags[0].matches("release-1"));
    }

    #[test]
    fn a_bad_service_name_is_reported_with_line_and_field() {
        let text = SAMPLE.replace("name = \"eventservice\"", "name = \"Event_Service\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, Some(5));
        assert_eq!(
            err.to_string(),
            ".deploybot.toml:5: services[0].name: \"Event_Service\" is not a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
        );
    }

    #[test]
    fn a_toml_syntax_error_names_its_line() {
        let err = parse("[[services]]\nname = \n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().starts_with(".deploybot.toml:2: "), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = parse("[[services]]\nname = \"a\"\nimgae = \"x\"\n").unwrap_err();
        assert!(err.message.contains("imgae"), "{err}");
    }

    #[test]
    fn paths_may_not_leave_the_repository() {
        let text = SAMPLE.replace("context = \"src/eventservice\"", "context = \"../other\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.field, "services[0].context");
    }

    #[test]
    fn an_unknown_stage_names_the_step() {
        let text = SAMPLE.replace("stage = \"compile\"", "stage = \"deploy\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.field, "services[0].steps[1].stage");
        assert_eq!(err.line, Some(17));
    }

    #[test]
    fn a_step_may_ask_for_cpus_and_memory_and_nonsense_names_the_key() {
        let asking = SAMPLE.replace(
            "stage = \"compile\"",
            "stage = \"compile\"\ncpus = 1.5\nmemory_mb = 512",
        );
        let step = &parse(&asking).unwrap().services[0].steps[1];
        assert_eq!((step.millicpus, step.memory_mb), (Some(1500), Some(512)));
        let zero = SAMPLE.replace("stage = \"compile\"", "stage = \"compile\"\ncpus = 0.0");
        assert_eq!(parse(&zero).unwrap_err().field, "services[0].steps[1].cpus");
        let none = SAMPLE.replace("stage = \"compile\"", "stage = \"compile\"\nmemory_mb = 0");
        assert_eq!(
            parse(&none).unwrap_err().field,
            "services[0].steps[1].memory_mb"
        );
    }

    #[test]
    fn without_a_push_section_every_tag_pushes_and_no_branch_does() {
        let definition = parse("[[services]]\nname = \"web\"\n").unwrap();
        assert!(definition.push.tags[0].matches("anything"));
        assert!(definition.push.branches.is_empty());
        assert_eq!(definition.services[0].context, "web");
        assert_eq!(definition.services[0].image, "web");
    }
}
