//! Reusing an unchanged service's image instead of rebuilding it.
//!
//! A build's output is decided by its inputs: the project and whether the ref is a release
//! (tags and branches build with separate dependency caches, so a branch's build never stands
//! in for a tag's), the commit (its id and root tree; the image's OCI labels name the revision
//! and source, so another commit with the same tree is built afresh), the service's definition
//! (steps, commands, images, Dockerfile path), the toolchain images as they are here (resolved
//! to image ids, with the user, caches and limits they run with) and the images the Dockerfile
//! builds `FROM` (also resolved to ids). deploybot records the image it built from each digest
//! of those inputs, per project, in its store (`built_images`); a later job whose inputs
//! digest to the same value tags that recorded image instead of running the steps again. An
//! image's own labels are never trusted for this: a Dockerfile can set any label. Anything
//! that cannot be resolved (a `FROM` it cannot read, a missing image) means no digest, and so
//! a full build.

use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::docker::Executor;
use crate::pipeline::dockerfile::Dockerfile;
use crate::pipeline::Service;

/// What a build is built from, besides the service and its Dockerfile.
pub struct Commit<'a> {
    pub project: &'a str,
    /// `tag` or `branch`: the dependency caches the steps ran with.
    pub caches: &'a str,
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
    hasher.update(b"deploybot build input v2\n");
    hasher.update(format!(
        "project {}\ncaches {}\nsource {}\ncommit {}\ntree {}\nservice {service:?}\n",
        commit.project, commit.caches, commit.source, commit.sha, commit.tree
    ));
    for step in &service.steps {
        for image in &step.images {
            let toolchain = settings.toolchain(image)?;
            let id = executor.image_id(&toolchain.image).await.ok()??;
            hasher.update(format!("toolchain {toolchain:?} {id}\n"));
        }
    }
    for base in Dockerfile::parse(dockerfile).base_images()? {
        let id = executor.image_id(&base).await.ok()??;
        hasher.update(format!("from {base} {id}\n"));
    }
    Some(hex::encode(hasher.finalize()))
}
