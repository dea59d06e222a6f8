//! Reusing an unchanged service's image instead of rebuilding it.
//!
//! A build's output is decided by its inputs: the commit (its id and root tree; the image's
//! OCI labels name the revision and source, so another commit with the same tree is built
//! afresh), the service's definition (steps, commands, images,
//! Dockerfile path), the toolchain images as they are here (resolved to image ids, with the
//! user and caches they run with) and the images the Dockerfile builds `FROM` (also resolved to
//! ids). Their digest labels every image deploybot builds; a later job whose inputs digest to
//! the same value tags that image instead of running the steps again. Anything that cannot be
//! resolved (a `FROM` it cannot read, a missing image) means no digest, and so a full build.

use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::docker::Executor;
use crate::pipeline::Service;

/// What a build is built from.
pub struct Commit<'a> {
    pub source: &'a str,
    pub sha: &'a str,
    pub tree: &'a str,
}

/// The digest of everything that decides `service`'s image, or None if some input could not
/// be pinned down.
pub async fn build_input<E: Executor>(
    executor: &E,
    settings: &Settings,
    commit: &Commit<'_>,
    service: &Service,
    dockerfile: &str,
) -> Option<String> {
    let mut hasher = Sha256::new();
    hasher.update(b"deploybot build input v1\n");
    hasher.update(format!(
        "source {}\ncommit {}\ntree {}\nservice {service:?}\n",
        commit.source, commit.sha, commit.tree
    ));
    for step in &service.steps {
        for image in &step.images {
            let toolchain = settings.toolchain(image);
            let id = executor.image_id(&toolchain.image).await.ok()??;
            hasher.update(format!("toolchain {toolchain:?} {id}\n"));
        }
    }
    for base in from_images(dockerfile)? {
        let id = executor.image_id(&base).await.ok()??;
        hasher.update(format!("from {base} {id}\n"));
    }
    Some(hex::encode(hasher.finalize()))
}

/// The images a Dockerfile builds `FROM`, with `ARG` defaults substituted; earlier stages
/// (`AS name`) and `scratch` are not images. None when a reference cannot be resolved.
fn from_images(dockerfile: &str) -> Option<Vec<String>> {
    let mut args: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    for line in dockerfile.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("ARG") => {
                if let Some((name, value)) = words.next().and_then(|w| w.split_once('=')) {
                    args.push((name.to_owned(), value.trim_matches('"').to_owned()));
                }
            }
            Some("FROM") => {
                let mut reference = words.find(|w| !w.starts_with("--"))?.to_owned();
                for (name, value) in &args {
                    reference = reference
                        .replace(&format!("${{{name}}}"), value)
                        .replace(&format!("${name}"), value);
                }
                if reference.contains('$') {
                    return None;
                }
                let is_stage = stages.contains(&reference.to_ascii_lowercase());
                if reference != "scratch" && !is_stage {
                    images.push(reference);
                }
                let rest: Vec<&str> = words.collect();
                if let [keyword, alias] = rest.as_slice() {
                    if keyword.eq_ignore_ascii_case("as") {
                        stages.push(alias.to_ascii_lowercase());
                    }
                }
            }
            _ => {}
        }
    }
    Some(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines_resolve_arg_defaults_and_skip_stages_and_scratch() {
        let dockerfile = "ARG BASE=deploybot-local/static:latest\nFROM golang:1.19 AS build\nRUN go build\nFROM scratch\nFROM ${BASE}\nCOPY --from=build /app /app\nFROM build\n";
        assert_eq!(
            from_images(dockerfile).unwrap(),
            ["golang:1.19", "deploybot-local/static:latest"]
        );
    }

    #[test]
    fn an_unresolvable_from_gives_no_digest() {
        assert_eq!(from_images("FROM ${UNSET}\n"), None);
    }
}
