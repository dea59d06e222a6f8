//! What recovery remembers between runs: each project's last ref listing, which pushes and
//! forge deliveries are recorded, and how often a redelivery was asked for. On a connection
//! of its own (SQLite serialises its few short writes with the intake writer). Calls block:
//! recovery runs them on a blocking thread.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::jobs::now_text;
use super::{connection::open_connection, db_path, StoreError};

pub struct RecoveryLedger {
    conn: Mutex<Connection>,
}

impl RecoveryLedger {
    pub fn open(data_dir: &Path) -> Result<RecoveryLedger, StoreError> {
        Ok(RecoveryLedger {
            conn: Mutex::new(open_connection(&db_path(data_dir))?),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite's state intact: keep going.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The project's refs (ref → sha) as the last listing saw them, or None if its refs were
    /// never listed.
    pub fn known_refs(
        &self,
        project: &str,
    ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let conn = self.conn();
        let listed: Option<String> = conn
            .query_row(
                "SELECT listed_at FROM ref_listings WHERE project = ?1",
                [project],
                |row| row.get(0),
            )
            .optional()?;
        if listed.is_none() {
            return Ok(None);
        }
        let mut statement =
            conn.prepare_cached("SELECT git_ref, sha FROM known_refs WHERE project = ?1")?;
        let rows = statement.query_map([project], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok(Some(rows.collect::<Result<_, _>>()?))
    }

    /// Replaces the project's known refs with `refs`, in one transaction.
    pub fn remember_refs(
        &self,
        project: &str,
        refs: &BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO ref_listings (project, listed_at) VALUES (?1, ?2)
             ON CONFLICT (project) DO UPDATE SET listed_at = excluded.listed_at",
            params![project, now_text()],
        )?;
        tx.execute("DELETE FROM known_refs WHERE project = ?1", [project])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO known_refs (project, git_ref, sha) VALUES (?1, ?2, ?3)",
            )?;
            for (git_ref, sha) in refs {
                insert.execute(params![project, git_ref, sha])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Whether a push of `sha` to `git_ref` was queued for the project (by any delivery).
    pub fn push_recorded(
        &self,
        project: &str,
        git_ref: &str,
        sha: &str,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT 1 FROM deliveries
             WHERE project = ?1 AND git_ref = ?2 AND sha = ?3 AND outcome = 'queued' LIMIT 1",
        )?;
        Ok(statement.exists(params![project, git_ref, sha])?)
    }

    /// Which of `ids` the project recorded as accepted deliveries (not rejections).
    pub fn recorded_deliveries(
        &self,
        project: &str,
        ids: &[String],
    ) -> Result<HashSet<String>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT 1 FROM deliveries
             WHERE project = ?1 AND delivery_id = ?2 AND outcome <> 'rejected'",
        )?;
        let mut recorded = HashSet::new();
        for id in ids {
            if statement.exists(params![project, id])? {
                recorded.insert(id.clone());
            }
        }
        Ok(recorded)
    }

    /// How often deploybot asked the forge to redeliver `forge_delivery`.
    pub fn redelivery_asks(&self, project: &str, forge_delivery: &str) -> Result<u32, StoreError> {
        let conn = self.conn();
        let asks: Option<u32> = conn
            .query_row(
                "SELECT asks FROM redelivery_asks WHERE project = ?1 AND forge_delivery = ?2",
                params![project, forge_delivery],
                |row| row.get(0),
            )
            .optional()?;
        Ok(asks.unwrap_or(0))
    }

    /// Counts one more ask for `forge_delivery`.
    pub fn note_redelivery_ask(
        &self,
        project: &str,
        forge_delivery: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO redelivery_asks (project, forge_delivery, asks, last_asked_at)
             VALUES (?1, ?2, 1, ?3)
             ON CONFLICT (project, forge_delivery)
             DO UPDATE SET asks = asks + 1, last_asked_at = excluded.last_asked_at",
            params![project, forge_delivery, now_text()],
        )?;
        Ok(())
    }
}
