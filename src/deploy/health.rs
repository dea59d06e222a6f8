//! When is a rollout done? The same answer `kubectl rollout status` gives, so deploybot and a
//! person at a terminal never disagree.

use super::cluster::Observed;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Still rolling out; the text says what it waits for.
    Waiting(String),
    Complete,
    /// The deployment controller gave up: the condition's reason and message.
    Failed {
        reason: String,
        message: String,
    },
}

/// What a rollout is measured against: the generation deploybot's own change produced (status
/// for an older spec says nothing about this rollout), and the `Progressing` condition's
/// `lastUpdateTime` when the change was sent. The controller keeps a `ProgressDeadlineExceeded`
/// verdict until it sees progress, so right after a rollback of a stalled rollout the old
/// verdict is still there; only a verdict given after the change counts.
#[derive(Debug, Clone, Default)]
pub struct Since {
    pub generation: i64,
    pub stale_verdict: Option<String>,
}

impl Since {
    pub fn change(after: &Observed) -> Since {
        Since {
            generation: after.generation,
            stale_verdict: after
                .progressing
                .as_ref()
                .filter(|c| c.reason == DEADLINE_EXCEEDED)
                .map(|c| c.last_update.clone()),
        }
    }
}

const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

pub fn assess(deployment: &Observed, since: &Since) -> Health {
    let d = deployment;
    if d.observed_generation < d.generation.max(since.generation) {
        return Health::Waiting("waiting for the deployment controller to see the change".into());
    }
    if let Some(condition) = &d.progressing {
        let stale = since.stale_verdict.as_deref() == Some(condition.last_update.as_str());
        if condition.reason == DEADLINE_EXCEEDED && !stale {
            return Health::Failed {
                reason: condition.reason.clone(),
                message: condition.message.clone(),
            };
        }
    }
    if d.updated < d.desired {
        return Health::Waiting(format!(
            "{} of {} new replicas updated",
            d.updated, d.desired
        ));
    }
    if d.total > d.updated {
        return Health::Waiting(format!(
            "{} old replicas pending termination",
            d.total - d.updated
        ));
    }
    if d.available < d.updated {
        return Health::Waiting(format!(
            "{} of {} updated replicas available",
            d.available, d.updated
        ));
    }
    Health::Complete
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::cluster::Condition;

    fn observed(
        generation: i64,
        observed: i64,
        updated: i32,
        total: i32,
        available: i32,
    ) -> Observed {
        Observed {
            generation,
            observed_generation: observed,
            desired: 2,
            total,
            updated,
            available,
            ..Observed::default()
        }
    }

    fn since(generation: i64) -> Since {
        Since {
            generation,
            stale_verdict: None,
        }
    }

    fn timed_out(at: &str) -> Condition {
        Condition {
            status: "False".into(),
            reason: "ProgressDeadlineExceeded".into(),
            message: "ReplicaSet \"web-5d\" has timed out progressing.".into(),
            last_update: at.into(),
        }
    }

    #[test]
    fn a_change_the_controller_has_not_seen_is_still_waiting() {
        assert!(matches!(
            assess(&observed(3, 2, 2, 2, 2), &since(3)),
            Health::Waiting(_)
        ));
        assert!(matches!(
            assess(&observed(2, 2, 2, 2, 2), &since(3)),
            Health::Waiting(_)
        ));
    }

    #[test]
    fn a_rollout_is_complete_when_every_replica_is_updated_and_available() {
        assert_eq!(
            assess(&observed(3, 3, 2, 2, 2), &since(3)),
            Health::Complete
        );
    }

    #[test]
    fn old_replicas_still_running_or_new_ones_not_ready_keep_it_waiting() {
        assert_eq!(
            assess(&observed(3, 3, 2, 3, 2), &since(3)),
            Health::Waiting("1 old replicas pending termination".into())
        );
        assert_eq!(
            assess(&observed(3, 3, 2, 2, 1), &since(3)),
            Health::Waiting("1 of 2 updated replicas available".into())
        );
        assert_eq!(
            assess(&observed(3, 3, 1, 3, 2), &since(3)),
            Health::Waiting("1 of 2 new replicas updated".into())
        );
    }

    #[test]
    fn a_progress_deadline_exceeded_fails_with_the_conditions_message() {
        let mut d = observed(3, 3, 1, 3, 2);
        d.progressing = Some(timed_out("2026-01-01T00:00:09Z"));
        assert_eq!(
            assess(&d, &since(3)),
            Health::Failed {
                reason: "ProgressDeadlineExceeded".into(),
                message: "ReplicaSet \"web-5d\" has timed out progressing.".into()
            }
        );
    }

    #[test]
    fn a_verdict_left_over_from_before_the_change_does_not_fail_it() {
        let mut d = observed(4, 4, 1, 2, 1);
        d.progressing = Some(timed_out("2026-01-01T00:00:09Z"));
        let since = Since {
            generation: 4,
            stale_verdict: Some("2026-01-01T00:00:09Z".into()),
        };
        assert!(matches!(assess(&d, &since), Health::Waiting(_)));
        d.progressing = Some(timed_out("2026-01-01T00:01:00Z"));
        assert!(matches!(assess(&d, &since), Health::Failed { .. }));
    }
}
