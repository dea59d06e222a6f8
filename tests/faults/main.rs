//! The fault drill: deploybot with a real part failing under it — the data directory full, the
//! registry down at push time, dockerd restarted mid-build, the API server stopped
//! mid-rollout — and chaos (`kill -9` again and again under a stream of pushes). These faults disturb what other
//! tests share (restarting dockerd also restarts the local cluster's pods), so they are a test
//! binary of their own, run after the suite by `scripts/test.sh`, one test at a time. (The
//! forge down is `report::a_status_waits_out_a_forge_outage_across_a_restart` in the suite: a
//! double going down disturbs nobody.)

// Tests may panic on what they did not expect; that is how they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod apiserver;
mod chaos;
mod disk;
mod dockerd;
mod registry;
