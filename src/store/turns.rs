//! Whose turn it is to roll out a Deployment, across processes: the server and a
//! `deploybot rollback` run side by side on one store, and their rollouts of one Deployment
//! must not interleave. A turn is a row held by one process until it ends the turn, its
//! process is gone, or its lease lapses (renewed while held). Calls block: use [`Jobs::call`].

use std::time::Duration;

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::jobs::{now_unix, Jobs};
use super::StoreError;

/// A turn on one Deployment, as one holder asks for it.
#[derive(Debug, Clone)]
pub struct TurnClaim {
    pub environment: String,
    pub namespace: String,
    pub deployment: String,
    /// Unique per process start: a restarted process is a new holder.
    pub holder: String,
    pub pid: u32,
    /// What the turn is for, as another holder's waiting note shows it.
    pub what: String,
}

impl Jobs {
    /// Takes the turn for `claim`, for `lease`, unless another live holder has it: then
    /// answers what that holder is doing. A holder whose process is gone (killed, restarted)
    /// or whose lease has lapsed has lost the turn.
    pub fn take_turn(
        &self,
        claim: &TurnClaim,
        lease: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn();
        // Immediate: the read and the write below are one step for every other process.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_unix();
        let held: Option<(String, u32, String, i64)> = tx
            .query_row(
                "SELECT holder, pid, what, held_until FROM deploy_turns
                 WHERE environment = ?1 AND namespace = ?2 AND deployment = ?3",
                params![claim.environment, claim.namespace, claim.deployment],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        if let Some((holder, pid, what, until)) = held {
            let theirs = holder != claim.holder;
            if theirs && until >= now && holder_alive(pid, claim.pid) {
                return Ok(Some(format!("{what} (pid {pid})")));
            }
        }
        tx.execute(
            "INSERT INTO deploy_turns (environment, namespace, deployment, holder, pid, what, held_until)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (environment, namespace, deployment) DO UPDATE SET
                holder = excluded.holder, pid = excluded.pid, what = excluded.what,
                held_until = excluded.held_until",
            params![
                claim.environment,
                claim.namespace,
                claim.deployment,
                claim.holder,
                claim.pid,
                claim.what,
                now + lease.as_secs() as i64
            ],
        )?;
        tx.commit()?;
        Ok(None)
    }

    /// Extends a turn still held by `claim`'s holder; false if it was lost meanwhile.
    pub fn renew_turn(&self, claim: &TurnClaim, lease: Duration) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "UPDATE deploy_turns SET held_until = ?1
             WHERE environment = ?2 AND namespace = ?3 AND deployment = ?4 AND holder = ?5",
            params![
                now_unix() + lease.as_secs() as i64,
                claim.environment,
                claim.namespace,
                claim.deployment,
                claim.holder
            ],
        )?;
        Ok(changed == 1)
    }

    /// Gives the turn up (if `claim`'s holder still has it).
    pub fn end_turn(&self, claim: &TurnClaim) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM deploy_turns
             WHERE environment = ?1 AND namespace = ?2 AND deployment = ?3 AND holder = ?4",
            params![
                claim.environment,
                claim.namespace,
                claim.deployment,
                claim.holder
            ],
        )?;
        Ok(())
    }
}

/// Whether the process `pid` that holds a turn still runs. The store is local to one host
/// (SQLite), so its process ids are this host's. Our own pid under another holder name is an
/// earlier start of this process number (a container's pid 1 after a restart): gone. Without
/// `/proc` to ask, a holder counts as alive and only its lease decides.
fn holder_alive(pid: u32, ours: u32) -> bool {
    if pid == ours {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses; a zombie (Z) or dead (X)
        // process holds nothing.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => !std::path::Path::new("/proc/self").exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(holder: &str, pid: u32) -> TurnClaim {
        TurnClaim {
            environment: "production".into(),
            namespace: "default".into(),
            deployment: "web".into(),
            holder: holder.into(),
            pid,
            what: format!("{holder}'s rollout"),
        }
    }

    fn store() -> (tempfile::TempDir, Jobs) {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open_migrated(dir.path()).unwrap();
        (dir, jobs)
    }

    const LEASE: Duration = Duration::from_secs(30);

    /// A live process other than this test: the parent (cargo's test runner or a shell).
    fn live_pid() -> u32 {
        std::os::unix::process::parent_id()
    }

    #[test]
    fn a_turn_held_by_a_live_process_is_refused_naming_what_it_does() {
        let (_dir, jobs) = store();
        assert_eq!(
            jobs.take_turn(&claim("server", live_pid()), LEASE).unwrap(),
            None
        );

        let answer = jobs
            .take_turn(&claim("cli", std::process::id()), LEASE)
            .unwrap();

        assert_eq!(
            answer,
            Some(format!("server's rollout (pid {})", live_pid()))
        );
    }

    #[test]
    fn an_ended_turn_is_free_for_the_next_holder() {
        let (_dir, jobs) = store();
        let server = claim("server", live_pid());
        jobs.take_turn(&server, LEASE).unwrap();
        jobs.end_turn(&server).unwrap();

        assert_eq!(
            jobs.take_turn(&claim("cli", std::process::id()), LEASE)
                .unwrap(),
            None
        );
        assert!(
            !jobs.renew_turn(&server, LEASE).unwrap(),
            "the server's turn is over"
        );
    }

    #[test]
    fn a_turn_whose_process_is_gone_is_taken_over() {
        let (_dir, jobs) = store();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        jobs.take_turn(&claim("killed", gone), LEASE).unwrap();

        assert_eq!(
            jobs.take_turn(&claim("restarted", live_pid()), LEASE)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_turn_under_our_own_pid_but_another_holder_is_an_earlier_start_of_ours() {
        let (_dir, jobs) = store();
        jobs.take_turn(&claim("before the restart", std::process::id()), LEASE)
            .unwrap();

        assert_eq!(
            jobs.take_turn(&claim("after the restart", std::process::id()), LEASE)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_lapsed_lease_is_taken_over_even_from_a_live_process() {
        let (_dir, jobs) = store();
        jobs.take_turn(&claim("stuck", live_pid()), Duration::ZERO)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));

        assert_eq!(
            jobs.take_turn(&claim("next", std::process::id()), LEASE)
                .unwrap(),
            None
        );
    }

    #[test]
    fn the_holder_takes_its_own_turn_again() {
        let (_dir, jobs) = store();
        let server = claim("server", live_pid());
        jobs.take_turn(&server, LEASE).unwrap();

        assert_eq!(jobs.take_turn(&server, LEASE).unwrap(), None);
        assert!(jobs.renew_turn(&server, LEASE).unwrap());
    }
}
