//! deploybot's integration suite: one test binary (it links once), one module per concern.
//! Every test drives the real HTTP app on a random port or the real binary.

// Tests may panic on what they did not expect; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod binary;
mod browser;
mod cluster_builds;
mod deploy;
mod durability;
mod github_intake;
mod gitlab_intake;
mod idempotency;
mod in_cluster;
mod intake_limits;
mod operations;
mod pipeline;
mod pull_requests;
mod recovery;
mod registry;
mod report;
mod retention;
mod trust;
mod web;
