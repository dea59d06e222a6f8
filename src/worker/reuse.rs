//! Reusing an unchanged service's image instead of rebuilding it.
//!
//! A service's image is decided by its own inputs, not by the commit it came with: the
//! project and whether the ref is a release (tags and branches build with separate dependency
//! caches, so a branch's build never stands in for a tag's), the repository, what the
//! service's build reads from it — its context directory (Dockerfile included), the paths its
//! definition lists as `inputs`, any step's working directory outside the context — by git
//! object id, the service's definition (steps, commands, images, Dockerfile path), the
//! toolchain images as they are here (resolved to image ids, with the user, caches and limits
//! they run with) and the images the Dockerfile builds `FROM` (also resolved to ids). So a
//! commit that touches only one service rebuilds only that one. deploybot records the image it
//! built from each digest of those inputs, per project, in its store (`built_images`); a
//! later job whose inputs digest to the same value tags that recorded image instead of running
//! the steps again. An image's own labels are never trusted for this: a Dockerfile can set any
//! label. Anything that cannot be resolved (a path not in the commit, a `FROM` it cannot read,
//! a missing image) means no digest, and so a full build.

use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::executor::Executor;
use crate::pipeline::dockerfile::Dockerfile;
use crate::pipeline::Service;

/// What a service's build reads besides its definition and images.
pub struct Inputs<'a> {
    pub project: &'a str,
    /// `tags` or `branches`: the dependency caches the steps ran with.
    pub caches: &'a str,
    pub source: &'a str,
    /// Each path the build reads (context, `inputs`, outside working directories) with the
    /// git object id it has at the commit.
    pub paths: Vec<(String, String)>,
}

/// The paths of the repository `service`'s build reads: its context, its declared `inputs`,
/// and the working directory of any step outside the context.
pub fn paths_read(service: &Service) -> Vec<String> {
    let inside = |path: &str| {
        service.context == "."
            || path == service.context
            || path.starts_with(&format!("{}/", service.context))
    };
    let mut paths = vec![service.context.clone()];
    paths.extend(service.inputs.iter().cloned());
    for step in &service.steps {
        if !inside(&step.workdir) && !paths.contains(&step.workdir) {
            paths.push(step.workdir.clone());
        }
    }
    paths
}

/// The digest of everything that decides `service`'s image, or None if some input could not
/// be pinned down.
pub async fn build_input<E: Executor>(
    executor: &E,
    settings: &Settings,
    inputs: &Inputs<'_>,
    service: &Service,
    dockerfile: &str,
) -> Option<String> {
    let mut hasher = Sha256::new();
    hasher.update(b"deploybot build input v3\n");
    hasher.update(format!(
        "project {}\ncaches {}\nsource {}\nservice {service:?}\n",
        inputs.project, inputs.caches, inputs.source
    ));
    for (path, id) in &inputs.paths {
        hasher.update(format!("path {path} {id}\n"));
    }
    for step in &service.steps {
        for image in &step.images {
            let toolchain = settings.toolchain(image)?;
            let id = executor.pin(&toolchain.image).await.ok()??;
            hasher.update(format!("toolchain {toolchain:?} {id}\n"));
        }
    }
    for base in Dockerfile::parse(dockerfile).base_images()? {
        let id = executor.pin(&base).await.ok()??;
        hasher.update(format!("from {base} {id}\n"));
    }
    Some(hex::encode(hasher.finalize()))
}
