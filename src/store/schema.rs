//! The schema, as an ordered list of migrations keyed by `PRAGMA user_version`.

use rusqlite::Connection;

use super::StoreError;

/// Each entry moves the schema one version forward; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: deliveries and the jobs they queue.
    "CREATE TABLE deliveries (
        id            INTEGER PRIMARY KEY,
        delivery_id   TEXT,
        project       TEXT NOT NULL,
        forge         TEXT,
        event         TEXT,
        repository    TEXT,
        git_ref       TEXT,
        sha           TEXT,
        outcome       TEXT NOT NULL CHECK (outcome IN ('queued', 'ignored', 'pong', 'rejected')),
        reason        TEXT,
        received_at   TEXT NOT NULL,
        headers       TEXT NOT NULL DEFAULT '{}',
        event_json    TEXT,
        body_segment  INTEGER,
        body_offset   INTEGER,
        body_len      INTEGER,
        body_crc32    INTEGER
    );
    -- A delivery id is accepted once per project; rejected attempts do not hold it, so a
    -- redelivery after fixing a secret still goes through.
    CREATE UNIQUE INDEX deliveries_once ON deliveries (project, delivery_id)
        WHERE outcome <> 'rejected';
    CREATE TABLE jobs (
        id          INTEGER PRIMARY KEY,
        delivery    INTEGER NOT NULL UNIQUE REFERENCES deliveries (id),
        project     TEXT NOT NULL,
        git_ref     TEXT NOT NULL,
        ref_kind    TEXT NOT NULL CHECK (ref_kind IN ('branch', 'tag')),
        ref_name    TEXT NOT NULL,
        sha         TEXT NOT NULL,
        state       TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    CREATE INDEX jobs_by_state ON jobs (state, id);",
    // 2: running jobs: leases and attempts, per-service stages, build logs.
    "ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT;
    ALTER TABLE jobs ADD COLUMN lease_until INTEGER;
    ALTER TABLE jobs ADD COLUMN started_at TEXT;
    ALTER TABLE jobs ADD COLUMN finished_at TEXT;
    ALTER TABLE jobs ADD COLUMN error TEXT;
    CREATE TABLE stages (
        id          INTEGER PRIMARY KEY,
        job         INTEGER NOT NULL REFERENCES jobs (id),
        service     TEXT NOT NULL,
        stage       TEXT NOT NULL,
        state       TEXT NOT NULL,
        exit_code   INTEGER,
        detail      TEXT,
        started_at  TEXT,
        finished_at TEXT,
        UNIQUE (job, service, stage)
    );
    CREATE TABLE images (
        job         INTEGER NOT NULL REFERENCES jobs (id),
        service     TEXT NOT NULL,
        reference   TEXT NOT NULL,
        digest      TEXT,
        pushed_at   TEXT,
        PRIMARY KEY (job, service)
    );
    CREATE TABLE log_chunks (
        id          INTEGER PRIMARY KEY,
        job         INTEGER NOT NULL REFERENCES jobs (id),
        service     TEXT NOT NULL,
        stage       TEXT NOT NULL,
        text        TEXT NOT NULL,
        at          TEXT NOT NULL
    );
    CREATE INDEX log_chunks_by_job ON log_chunks (job, service, id);",
    // 3: the outbox of reports (commit statuses, chat messages).
    "CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY,
        project     TEXT NOT NULL,
        channel     TEXT NOT NULL,
        key         TEXT NOT NULL,
        payload     TEXT NOT NULL,
        job         INTEGER,
        state       TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sent', 'superseded', 'failed')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        created_at  TEXT NOT NULL,
        done_at     TEXT
    );
    CREATE INDEX outbox_due ON outbox (state, next_at, id);
    CREATE INDEX outbox_by_key ON outbox (project, channel, key, id);",
    // 4: deploys: one row per (job, service, environment) rollout, or per hand rollback.
    "CREATE TABLE deploys (
        id             INTEGER PRIMARY KEY,
        job            INTEGER REFERENCES jobs (id),
        project        TEXT NOT NULL,
        service        TEXT NOT NULL,
        environment    TEXT NOT NULL,
        namespace      TEXT NOT NULL,
        deployment     TEXT NOT NULL,
        container      TEXT NOT NULL,
        tag            TEXT NOT NULL,
        pushed_at      TEXT NOT NULL,
        image          TEXT NOT NULL,
        previous_image TEXT,
        generation     INTEGER,
        kind           TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
        state          TEXT NOT NULL CHECK (state IN ('planned', 'patched', 'deployed',
                           'rolling_back', 'rolled_back', 'failed', 'skipped')),
        reason         TEXT,
        retired        INTEGER NOT NULL DEFAULT 0,
        created_at     TEXT NOT NULL,
        patched_at     TEXT,
        finished_at    TEXT
    );
    -- One live rollout per job, service and environment: a resumed job finds it.
    CREATE UNIQUE INDEX deploys_once ON deploys (job, service, environment)
        WHERE job IS NOT NULL AND retired = 0;
    CREATE INDEX deploys_by_target ON deploys (environment, namespace, deployment, state);",
    // 5: whose turn it is to roll out a Deployment, across processes (the server and
    // `deploybot rollback`): one row while a rollout runs.
    "CREATE TABLE deploy_turns (
        environment TEXT NOT NULL,
        namespace   TEXT NOT NULL,
        deployment  TEXT NOT NULL,
        holder      TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        what        TEXT NOT NULL,
        held_until  INTEGER NOT NULL,
        PRIMARY KEY (environment, namespace, deployment)
    );",
    // 6: what deploybot itself built (reuse trusts this record, never an image's labels) and
    // pushed (a tag keeps its first digest through re-runs and resumes), and a lease epoch
    // every write of a running job is checked against.
    "CREATE TABLE built_images (
        project     TEXT NOT NULL,
        input       TEXT NOT NULL,
        image_id    TEXT NOT NULL,
        job         INTEGER NOT NULL REFERENCES jobs (id),
        built_at    TEXT NOT NULL,
        PRIMARY KEY (project, input)
    );
    CREATE TABLE pushed_tags (
        reference   TEXT PRIMARY KEY,
        digest      TEXT NOT NULL,
        sha         TEXT NOT NULL,
        job         INTEGER NOT NULL REFERENCES jobs (id),
        pushed_at   TEXT NOT NULL
    );
    INSERT OR IGNORE INTO pushed_tags (reference, digest, sha, job, pushed_at)
        SELECT i.reference, i.digest, j.sha, i.job, i.pushed_at
        FROM images i JOIN jobs j ON j.id = i.job
        WHERE i.digest IS NOT NULL ORDER BY i.pushed_at;
    ALTER TABLE jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;",
    // 7: bounded rejections and retention; see BOUNDED_REJECTIONS.
    BOUNDED_REJECTIONS,
    // 8: a rollout may end `unchanged`; see UNCHANGED_ROLLOUTS.
    UNCHANGED_ROLLOUTS,
    // 9: where an image deploybot built was pushed (`repository@digest`), so that a later
    // release of the same inputs copies its manifest in the registry instead of pushing again.
    "ALTER TABLE built_images ADD COLUMN pushed TEXT;",
    // 10: recovery of missed pushes; see RECOVERY.
    RECOVERY,
    // 11: where a job's current run starts in the outbox: the reports of a job with a greater
    // id are this run's (a re-run starts a new one), so a job taken back after a crash knows
    // which of its commit statuses already reached a result.
    "ALTER TABLE jobs ADD COLUMN run_from INTEGER NOT NULL DEFAULT 0;",
    // 12: pull requests; see PULL_REQUESTS.
    PULL_REQUESTS,
];

/// A job may build a pull request's head (`ref_kind = 'pull'`), and `pull_requests` keeps
/// what its pages show of the request. SQLite cannot change a CHECK in place, so `jobs` is
/// rebuilt as its documentation says (a new table with the same columns in the same order,
/// every row copied, the old one dropped, the new one renamed, its index made again); the
/// tables that reference `jobs` name it, not its copy, so they point at the new one. The
/// migration runs with foreign keys off and is checked before it commits (`migrate_to`).
const PULL_REQUESTS: &str = "
    CREATE TABLE jobs_new (
        id          INTEGER PRIMARY KEY,
        delivery    INTEGER NOT NULL UNIQUE REFERENCES deliveries (id),
        project     TEXT NOT NULL,
        git_ref     TEXT NOT NULL,
        ref_kind    TEXT NOT NULL CHECK (ref_kind IN ('branch', 'tag', 'pull')),
        ref_name    TEXT NOT NULL,
        sha         TEXT NOT NULL,
        state       TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        attempt     INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_until INTEGER,
        started_at  TEXT,
        finished_at TEXT,
        error       TEXT,
        lease_epoch INTEGER NOT NULL DEFAULT 0,
        run_from    INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO jobs_new (id, delivery, project, git_ref, ref_kind, ref_name, sha, state,
            created_at, updated_at, attempt, lease_owner, lease_until, started_at, finished_at,
            error, lease_epoch, run_from)
        SELECT id, delivery, project, git_ref, ref_kind, ref_name, sha, state,
            created_at, updated_at, attempt, lease_owner, lease_until, started_at, finished_at,
            error, lease_epoch, run_from
        FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_new RENAME TO jobs;
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE TABLE pull_requests (
        job             INTEGER PRIMARY KEY REFERENCES jobs (id),
        number          INTEGER NOT NULL,
        title           TEXT NOT NULL,
        author          TEXT NOT NULL,
        source_branch   TEXT NOT NULL,
        target_branch   TEXT NOT NULL,
        from_fork       INTEGER NOT NULL
    );";

/// A delivery's `origin`: `webhook` (the forge called, or redelivered through its API) or
/// `recovered` (deploybot found a ref with no recorded push and recorded one itself). A push is
/// found by project, ref and sha, so a late real delivery of a recovered push is known for
/// what it is. `known_refs` is the last listing of each project's refs that recovery compared
/// against (`ref_listings` says a project has one); `redelivery_asks` counts how often
/// deploybot asked its forge to redeliver a delivery, so no delivery is asked for forever.
const RECOVERY: &str = "
    ALTER TABLE deliveries ADD COLUMN origin TEXT NOT NULL DEFAULT 'webhook'
        CHECK (origin IN ('webhook', 'recovered'));
    CREATE INDEX deliveries_by_push ON deliveries (project, git_ref, sha)
        WHERE outcome = 'queued';
    CREATE TABLE ref_listings (
        project     TEXT PRIMARY KEY,
        listed_at   TEXT NOT NULL
    );
    CREATE TABLE known_refs (
        project     TEXT NOT NULL REFERENCES ref_listings (project) ON DELETE CASCADE,
        git_ref     TEXT NOT NULL,
        sha         TEXT NOT NULL,
        PRIMARY KEY (project, git_ref)
    );
    CREATE TABLE redelivery_asks (
        project        TEXT NOT NULL,
        forge_delivery TEXT NOT NULL,
        asks           INTEGER NOT NULL,
        last_asked_at  TEXT NOT NULL,
        PRIMARY KEY (project, forge_delivery)
    );";

/// A rejection keeps the source it came from (the client address, or its IPv6 /64), and
/// `repeats` counts the further rejections from that source that were counted on it instead
/// of recorded one by one. The indexes serve the count's update and the retention sweeps.
/// Touches only `deliveries` and `log_chunks`; independent of any other migration.
const BOUNDED_REJECTIONS: &str = "
    ALTER TABLE deliveries ADD COLUMN source TEXT;
    ALTER TABLE deliveries ADD COLUMN repeats INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX deliveries_rejected_by_source ON deliveries (source, id)
        WHERE outcome = 'rejected';
    CREATE INDEX deliveries_rejected_by_time ON deliveries (received_at)
        WHERE outcome = 'rejected';
    CREATE INDEX deliveries_by_body_segment ON deliveries (body_segment)
        WHERE body_segment IS NOT NULL;
    CREATE INDEX log_chunks_by_time ON log_chunks (at);";

/// `deploys.state` may be `unchanged` (the Deployment already ran the digest). SQLite cannot
/// change a CHECK in place, so the table is rebuilt as its documentation says: a new table
/// with the new CHECK and the same columns in the same order, every row copied, the old one
/// dropped, the new one renamed, its indexes made again. Nothing references `deploys`, so
/// foreign keys (on for every connection) have nothing to object to.
const UNCHANGED_ROLLOUTS: &str = "
    CREATE TABLE deploys_new (
        id             INTEGER PRIMARY KEY,
        job            INTEGER REFERENCES jobs (id),
        project        TEXT NOT NULL,
        service        TEXT NOT NULL,
        environment    TEXT NOT NULL,
        namespace      TEXT NOT NULL,
        deployment     TEXT NOT NULL,
        container      TEXT NOT NULL,
        tag            TEXT NOT NULL,
        pushed_at      TEXT NOT NULL,
        image          TEXT NOT NULL,
        previous_image TEXT,
        generation     INTEGER,
        kind           TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
        state          TEXT NOT NULL CHECK (state IN ('planned', 'patched', 'deployed',
                           'rolling_back', 'rolled_back', 'failed', 'skipped', 'unchanged')),
        reason         TEXT,
        retired        INTEGER NOT NULL DEFAULT 0,
        created_at     TEXT NOT NULL,
        patched_at     TEXT,
        finished_at    TEXT
    );
    INSERT INTO deploys_new (id, job, project, service, environment, namespace, deployment,
            container, tag, pushed_at, image, previous_image, generation, kind, state, reason,
            retired, created_at, patched_at, finished_at)
        SELECT id, job, project, service, environment, namespace, deployment,
            container, tag, pushed_at, image, previous_image, generation, kind, state, reason,
            retired, created_at, patched_at, finished_at
        FROM deploys;
    DROP TABLE deploys;
    ALTER TABLE deploys_new RENAME TO deploys;
    CREATE UNIQUE INDEX deploys_once ON deploys (job, service, environment)
        WHERE job IS NOT NULL AND retired = 0;
    CREATE INDEX deploys_by_target ON deploys (environment, namespace, deployment, state);";

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Moves the schema up to version `target` (tests start from an older store this way).
fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), StoreError> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {current} is newer than this deploybot knows ({}); refusing to touch it",
            MIGRATIONS.len()
        )));
    }
    // A table rebuilt under its references (SQLite's way to change a CHECK) needs foreign keys
    // off while it runs (they cannot change inside a transaction); every migration is checked
    // for a broken reference before it commits instead.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    let migrated = (|| {
        for (index, sql) in MIGRATIONS.iter().enumerate().take(target).skip(current) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            if let Some(broken) = broken_reference(&tx)? {
                return Err(StoreError::Corrupt(format!(
                    "migration {} would leave {broken}",
                    index + 1
                )));
            }
            tx.pragma_update(None, "user_version", index + 1)?;
            tx.commit()?;
        }
        Ok(())
    })();
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrated
}

/// The first row whose reference points nowhere, as `table row N referencing parent`.
fn broken_reference(conn: &Connection) -> Result<Option<String>, StoreError> {
    let mut statement = conn.prepare("PRAGMA foreign_key_check")?;
    let mut rows = statement.query([])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let (table, rowid, parent): (String, Option<i64>, String) =
        (row.get(0)?, row.get(1)?, row.get(2)?);
    Ok(Some(format!(
        "{table} row {} referencing a missing {parent}",
        rowid.unwrap_or_default()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::Value;

    /// A store as deploybot left it before rollouts could end `unchanged` (version 7): a job
    /// and three rollouts (a release, a retired one, a rollback by hand).
    fn store_at_version_7(path: &std::path::Path) -> Connection {
        let mut conn = super::super::connection::open_connection(path).unwrap();
        migrate_to(&mut conn, 7).unwrap();
        conn.execute_batch(
            "INSERT INTO deliveries (id, project, outcome, received_at)
                 VALUES (1, 'myevents', 'queued', '2026-01-01T00:00:00Z');
             INSERT INTO jobs (id, delivery, project, git_ref, ref_kind, ref_name, sha, state,
                     created_at, updated_at)
                 VALUES (1, 1, 'myevents', 'refs/tags/v2', 'tag', 'v2', 'abc', 'deployed',
                     '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z');
             INSERT INTO deploys (id, job, project, service, environment, namespace, deployment,
                     container, tag, pushed_at, image, previous_image, generation, kind, state,
                     reason, retired, created_at, patched_at, finished_at)
                 VALUES
                 (1, 1, 'myevents', 'web', 'production', 'default', 'web', 'api', 'v1', 't0',
                  'web:1', 'init', 2, 'deploy', 'rolled_back', 'stalled', 1, 't1', 't2', 't3'),
                 (2, 1, 'myevents', 'web', 'production', 'default', 'web', 'api', 'v2', 't0',
                  'web:2', 'web:1', 3, 'deploy', 'deployed', NULL, 0, 't4', 't5', 't6'),
                 (3, NULL, 'myevents', 'web', 'production', 'default', 'web', 'api', 'v1', 't7',
                  'web:1', 'web:2', 4, 'rollback', 'deployed', NULL, 0, 't7', 't8', 't9');",
        )
        .unwrap();
        conn
    }

    /// Every row of `table`, every column, by id.
    fn every_row(conn: &Connection, table: &str) -> Vec<Vec<Value>> {
        let mut statement = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY id"))
            .unwrap();
        let width = statement.column_count();
        statement
            .query_map([], |row| (0..width).map(|i| row.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn every_deploy(conn: &Connection) -> Vec<Vec<Value>> {
        every_row(conn, "deploys")
    }

    #[test]
    fn a_store_from_before_unchanged_rollouts_migrates_keeping_every_deploy_and_its_indexes() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let mut conn = store_at_version_7(&dir.path().join("store.db"));
        let before = every_deploy(&conn);

        // Act
        migrate(&mut conn).unwrap();

        // Assert
        assert_eq!(every_deploy(&conn), before, "every row, every column");
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deploys' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(indexes, ["deploys_by_target", "deploys_once"]);
        let broken: Vec<String> = conn
            .prepare("PRAGMA foreign_key_check")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(broken.is_empty(), "no row lost its job: {broken:?}");
    }

    #[test]
    fn a_store_from_before_pull_requests_keeps_every_job_and_reference_and_takes_a_pull_job() {
        // Arrange
        let dir = tempfile::tempdir().unwrap();
        let mut conn = store_at_version_7(&dir.path().join("store.db"));
        migrate_to(&mut conn, 11).unwrap();
        let deploys_before = every_deploy(&conn);
        // A delivery (id) and its job (same id) of a pull request.
        let pull_job = |conn: &Connection, id: i64, kind: &str| {
            conn.execute_batch(&format!(
                "INSERT INTO deliveries (id, project, outcome, received_at)
                     VALUES ({id}, 'myevents', 'queued', 't');
                 INSERT INTO jobs (id, delivery, project, git_ref, ref_kind, ref_name, sha, state,
                         created_at, updated_at)
                     VALUES ({id}, {id}, 'myevents', 'refs/pull/3/head', '{kind}', '3', 'abc',
                         'queued', 't', 't');"
            ))
        };
        assert!(pull_job(&conn, 2, "pull").is_err(), "refused before");
        let jobs_before = every_row(&conn, "jobs");

        // Act
        migrate(&mut conn).unwrap();

        // Assert
        assert_eq!(
            every_row(&conn, "jobs"),
            jobs_before,
            "every job, every column"
        );
        assert_eq!(every_deploy(&conn), deploys_before);
        assert!(
            pull_job(&conn, 3, "note").is_err(),
            "the kind is still checked"
        );
        pull_job(&conn, 4, "pull").unwrap();
        let dangling = conn.execute(
            "INSERT INTO stages (job, service, stage, state) VALUES (99, 'web', 'check', 'pending')",
            [],
        );
        assert!(dangling.is_err(), "foreign keys are on again");
    }

    #[test]
    fn after_the_migration_a_rollout_may_end_unchanged_and_the_state_is_still_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = store_at_version_7(&dir.path().join("store.db"));
        let set_state = |conn: &Connection, state: &str| {
            conn.execute("UPDATE deploys SET state = ?1 WHERE id = 2", [state])
        };
        assert!(set_state(&conn, "unchanged").is_err(), "refused before");

        migrate(&mut conn).unwrap();

        set_state(&conn, "unchanged").unwrap();
        assert!(set_state(&conn, "paused").is_err(), "still checked");
    }

    #[test]
    fn after_the_migration_a_job_still_has_one_live_rollout_per_service_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = store_at_version_7(&dir.path().join("store.db"));

        migrate(&mut conn).unwrap();

        let again = conn.execute(
            "INSERT INTO deploys (job, project, service, environment, namespace, deployment,
                 container, tag, pushed_at, image, kind, state, created_at)
             SELECT job, project, service, environment, namespace, deployment, container, tag,
                 pushed_at, image, kind, state, created_at FROM deploys WHERE id = 2",
            [],
        );
        assert!(again.is_err(), "deploys_once still holds");
    }
}
