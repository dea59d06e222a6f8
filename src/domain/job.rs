//! Where a job and its stages are, as types: the rules that matter most (what may run again,
//! what ended, what a status says) match on these, never on text. Each has one text form,
//! `as_str`, which the store writes and the API and pages show; reading stored text back is
//! the store's (`store/states.rs`), where an unknown value is an error naming its column.

use serde::Serialize;

/// Defines an enum of unit variants with one text form each, `ALL` in order, and comparison
/// with that text (so `state == "success"` reads as it always did).
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value whose text this is, if any.
            pub fn from_text(text: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
    };
}

text_enum! {
    /// A job, from queued to how it ended.
    JobState {
        /// A pull request from a fork: nothing runs until an operator approves it.
        Waiting = "waiting",
        Queued = "queued",
        Running = "running",
        /// Built (and pushed, where the ref pushes); nothing deploys.
        Success = "success",
        Failed = "failed",
        /// A newer push to the same branch replaced it.
        Superseded = "superseded",
        Canceled = "canceled",
        /// Built, pushed and rolled out everywhere it deploys.
        Deployed = "deployed",
        /// A rollout failed and the previous image was put back.
        RolledBack = "rolled_back",
    }
}

impl JobState {
    /// Waiting, queued or running: not over yet.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Waiting | JobState::Queued | JobState::Running
        )
    }
}

text_enum! {
    /// One stage of a service (or of the whole job, for checkout and the pipeline check).
    StageName {
        Checkout = "checkout",
        Pipeline = "pipeline",
        Check = "check",
        Compile = "compile",
        Image = "image",
        Push = "push",
        Deploy = "deploy",
    }
}

impl StageName {
    /// A service's stages, in the order they run.
    pub const OF_A_SERVICE: [StageName; 5] = [
        StageName::Check,
        StageName::Compile,
        StageName::Image,
        StageName::Push,
        StageName::Deploy,
    ];
}

text_enum! {
    /// Where a stage is.
    StageState {
        Pending = "pending",
        Running = "running",
        Success = "success",
        Failed = "failed",
        Skipped = "skipped",
        /// A deploy stage whose rollout was rolled back.
        RolledBack = "rolled_back",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_text() {
        for state in JobState::ALL {
            assert_eq!(JobState::from_text(state.as_str()), Some(*state));
        }
        for stage in StageName::ALL {
            assert_eq!(StageName::from_text(stage.as_str()), Some(*stage));
        }
        for state in StageState::ALL {
            assert_eq!(StageState::from_text(state.as_str()), Some(*state));
        }
        assert_eq!(JobState::from_text("done"), None);
    }

    #[test]
    fn a_state_serializes_as_its_text_and_compares_with_it() {
        assert_eq!(
            serde_json::to_string(&JobState::RolledBack).unwrap(),
            "\"rolled_back\""
        );
        assert_eq!(StageState::Skipped, "skipped");
        assert!(JobState::Queued.is_active() && !JobState::Canceled.is_active());
    }
}
