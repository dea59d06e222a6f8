//! How every connection to the store is opened: WAL, `synchronous=FULL` (a commit is on disk
//! when it returns, the promise behind every 2xx), foreign keys, and a busy timeout so the
//! writer, the worker and the readers take turns instead of failing.
//!
//! Every transaction begins `IMMEDIATE`: it takes the write lock first, waiting its turn. A
//! deferred one that reads before it writes (a lease check, then the stage) cannot wait: when
//! another connection wrote since its read began, SQLite fails its write at once with
//! "database is locked", whatever the busy timeout (the chaos drill lost pushes' records so).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.set_transaction_behavior(TransactionBehavior::Immediate);
    Ok(conn)
}
