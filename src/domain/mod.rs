//! Parsed values shared by every layer. Each type has a private field and one way in:
//! `parse`, which says what is wrong with the input. Past the edge (intake, config), code
//! works with these types and never re-checks a raw string.

mod delivery_id;
mod git;
mod job;
mod names;

pub use delivery_id::DeliveryId;
pub use git::{CommitSha, GitRef, RefKind};
pub use job::{JobState, StageName, StageState};
pub use names::{tag_safe, DnsLabel, ProjectName, RepoSlug};

/// Why a value did not parse; the caller adds which field or header it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub(crate) String);
