//! How every connection to the store is opened: WAL, `synchronous=FULL` (a commit is on disk
//! when it returns, the promise behind every 2xx), foreign keys, and a busy timeout so the
//! writer, the worker and the readers take turns instead of failing.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

pub(crate) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}
