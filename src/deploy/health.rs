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

/// `since_generation` is the generation deploybot's own change produced: status for an older
/// spec says nothing about this rollout.
pub fn assess(deployment: &Observed, since_generation: i64) -> Health {
    let d = deployment;
    if d.observed_generation < d.generation.max(since_generation) {
        return Health::Waiting("waiting for the deployment controller to see the change".into());
    }
    if let Some((_, reason, message)) = &d.progressing {
        if reason == "ProgressDeadlineExceeded" {
            return Health::Failed {
                reason: reason.clone(),
                message: message.clone(),
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

    #[test]
    fn a_change_the_controller_has_not_seen_is_still_waiting() {
        assert!(matches!(
            assess(&observed(3, 2, 2, 2, 2), 3),
            Health::Waiting(_)
        ));
        assert!(matches!(
            assess(&observed(2, 2, 2, 2, 2), 3),
            Health::Waiting(_)
        ));
    }

    #[test]
    fn a_rollout_is_complete_when_every_replica_is_updated_and_available() {
        assert_eq!(assess(&observed(3, 3, 2, 2, 2), 3), Health::Complete);
    }

    #[test]
    fn old_replicas_still_running_or_new_ones_not_ready_keep_it_waiting() {
        assert_eq!(
            assess(&observed(3, 3, 2, 3, 2), 3),
            Health::Waiting("1 old replicas pending termination".into())
        );
        assert_eq!(
            assess(&observed(3, 3, 2, 2, 1), 3),
            Health::Waiting("1 of 2 updated replicas available".into())
        );
        assert_eq!(
            assess(&observed(3, 3, 1, 3, 2), 3),
            Health::Waiting("1 of 2 new replicas updated".into())
        );
    }

    #[test]
    fn a_progress_deadline_exceeded_fails_with_the_conditions_message() {
        let mut d = observed(3, 3, 1, 3, 2);
        d.progressing = Some((
            "False".into(),
            "ProgressDeadlineExceeded".into(),
            "ReplicaSet \"web-5d\" has timed out progressing.".into(),
        ));
        assert_eq!(
            assess(&d, 3),
            Health::Failed {
                reason: "ProgressDeadlineExceeded".into(),
                message: "ReplicaSet \"web-5d\" has timed out progressing.".into()
            }
        );
    }
}
