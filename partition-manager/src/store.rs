//! The persistent partition registry: one SQLite database under the state
//! directory (`<state-dir>/partitions.db`).
//!
//! Why SQLite through rusqlite with the `bundled` feature: transactions with
//! `synchronous=FULL` make each write durable (fsync'd) before the manager
//! answers; the database survives a `kill -9` of the manager at any point
//! (WAL journal); operators can inspect it with the `sqlite3` tool; and
//! `bundled` compiles the one SQLite version rusqlite was tested with into
//! the binary, so nothing has to be installed on the host and CI and
//! developers build the same thing.
//!
//! The manager keeps the rows in memory too and writes through: every change
//! of a record goes to [`Store::put`] before anyone is told about it.

use parvm_config::Definition;
use parvm_protocol::{DoorbellInfo, GrantInfo, PartitionState, RestartPolicy, SegmentInfo};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};

/// Version of the table layout below.
const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("partition store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("partition store {path}: schema version {found} is newer than this manager's ({SCHEMA_VERSION})")]
    Schema { path: PathBuf, found: i64 },
    #[error("partition store {path}: row `{name}`: {message}")]
    Corrupt {
        path: PathBuf,
        name: String,
        message: String,
    },
}

/// One partition as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: String,
    /// The partition or VIOS definition (absolute paths), stored as JSON.
    pub definition: Definition,
    pub restart: RestartPolicy,
    pub state: PartitionState,
    pub last_exit: Option<String>,
    /// The VMM's pid while one runs.
    pub pid: Option<u32>,
    /// The VMM's start time (clock ticks after boot, /proc/PID/stat field
    /// 22), so a recycled pid is not mistaken for the VMM.
    pub pid_start: Option<u64>,
    /// The token the running VMM re-attaches with.
    pub token: Option<String>,
    pub restarts: u32,
    /// Unix time of the last state change.
    pub since: u64,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Order of grant writes: a row is only replaced by a later one, so
    /// the background writer never overwrites a newer state.
    grant_seq: AtomicU64,
    /// The background writer of relaxed grant rows.
    background: Option<Sender<GrantRow>>,
}

/// A grant row for the background writer: id, order, JSON.
type GrantRow = (u64, u64, String);

impl Store {
    /// Opens (creating if needed) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("partitions.db");
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS meta (
                 key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS partitions (
                 name TEXT PRIMARY KEY,
                 definition TEXT NOT NULL,
                 restart TEXT NOT NULL,
                 state TEXT NOT NULL,
                 last_exit TEXT,
                 pid INTEGER,
                 pid_start INTEGER,
                 token TEXT,
                 restarts INTEGER NOT NULL DEFAULT 0,
                 since INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS segments (
                 name TEXT PRIMARY KEY, info TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS grants (
                 id INTEGER PRIMARY KEY, info TEXT NOT NULL,
                 seq INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS doorbells (
                 id TEXT PRIMARY KEY, info TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS pool (
                 id TEXT PRIMARY KEY, info TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS workload (
                 id TEXT PRIMARY KEY, info TEXT NOT NULL);",
        )
        .map_err(err)?;
        let found: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    params![SCHEMA_VERSION],
                )
                .map_err(err)?;
            }
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Schema { path, found: v }),
            Some(_) => {}
        }
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM grants", [], |r| r.get(0))
            .map_err(err)?;
        let background = spawn_grant_writer(&path);
        Ok(Store {
            conn,
            path,
            grant_seq: AtomicU64::new(last as u64),
            background,
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Inserts or replaces a record; durable when this returns.
    pub fn put(&self, r: &Record) -> Result<(), StoreError> {
        let definition = serde_json::to_string(&r.definition).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            name: r.name.clone(),
            message: e.to_string(),
        })?;
        self.conn
            .execute(
                "INSERT INTO partitions
                    (name, definition, restart, state, last_exit, pid, pid_start, token, restarts, since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(name) DO UPDATE SET
                    definition = excluded.definition, restart = excluded.restart,
                    state = excluded.state, last_exit = excluded.last_exit,
                    pid = excluded.pid, pid_start = excluded.pid_start,
                    token = excluded.token, restarts = excluded.restarts,
                    since = excluded.since",
                params![
                    r.name,
                    definition,
                    r.restart.as_str(),
                    r.state.as_str(),
                    r.last_exit,
                    r.pid,
                    r.pid_start.map(|v| v as i64),
                    r.token,
                    r.restarts,
                    r.since as i64,
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes a record; durable when this returns.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM partitions WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every record, by name.
    pub fn all(&self) -> Result<Vec<Record>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, definition, restart, state, last_exit, pid, pid_start, token, restarts, since
                 FROM partitions ORDER BY name",
            )
            .map_err(|e| self.err(e))?;
        type Row = (
            String,
            String,
            String,
            String,
            Option<String>,
            Option<u32>,
            Option<i64>,
            Option<String>,
            u32,
            i64,
        );
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, def, restart, state, last_exit, pid, pid_start, token, restarts, since): Row =
                row.map_err(|e| self.err(e))?;
            let corrupt = |message: String| StoreError::Corrupt {
                path: self.path.clone(),
                name: name.clone(),
                message,
            };
            out.push(Record {
                definition: serde_json::from_str(&def).map_err(|e| corrupt(e.to_string()))?,
                restart: restart.parse().map_err(corrupt)?,
                state: state.parse().map_err(corrupt)?,
                last_exit,
                pid,
                pid_start: pid_start.map(|v| v as u64),
                token,
                restarts,
                since: since as u64,
                name,
            });
        }
        Ok(out)
    }
}

/// Inserts or replaces grant row `id` unless a later write (`seq`) is there.
fn upsert_grant(conn: &Connection, id: u64, seq: u64, text: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO grants (id, info, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET info = excluded.info, seq = excluded.seq
         WHERE excluded.seq > grants.seq",
        params![id as i64, text, seq as i64],
    )?;
    Ok(())
}

/// The background writer of relaxed grant rows: its own connection to the
/// same database, one transaction per batch of queued rows. `None` if it
/// cannot start (rows are then written on the caller's thread).
fn spawn_grant_writer(path: &Path) -> Option<Sender<GrantRow>> {
    let conn = Connection::open(path)
        .and_then(|c| {
            c.execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;",
            )?;
            Ok(c)
        })
        .map_err(|e| tracing::warn!(error = %e, "no background grant writer"))
        .ok()?;
    let (tx, rx) = channel::<GrantRow>();
    std::thread::Builder::new()
        .name("grant-writer".into())
        .stack_size(256 << 10)
        .spawn(move || write_grants(conn, rx))
        .map_err(|e| tracing::warn!(error = %e, "no background grant writer"))
        .ok()?;
    Some(tx)
}

fn write_grants(mut conn: Connection, rx: Receiver<GrantRow>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = conn.transaction().and_then(|tx| {
            for (id, seq, text) in &batch {
                upsert_grant(&tx, *id, *seq, text)?;
            }
            tx.commit()
        });
        if let Err(e) = result {
            tracing::error!(error = %e, rows = batch.len(), "cannot record grants");
        }
    }
}

/// Segments and grants: one JSON row each (the shapes of
/// `parctl grants --json`), written through like partition records.
impl Store {
    pub fn put_segment(&self, s: &SegmentInfo) -> Result<(), StoreError> {
        self.put_json("segments", "name", &s.name, s)
    }

    pub fn remove_segment(&self, name: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM segments WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Writes a grant durably (fsync'd before this returns).
    pub fn put_grant(&self, g: &GrantInfo) -> Result<(), StoreError> {
        let (id, seq, text) = self.grant_row(g)?;
        upsert_grant(&self.conn, id, seq, &text).map_err(|e| self.err(e))
    }

    fn grant_row(&self, g: &GrantInfo) -> Result<GrantRow, StoreError> {
        let text = serde_json::to_string(g).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            name: format!("grant {}", g.id),
            message: e.to_string(),
        })?;
        let seq = self.grant_seq.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((g.id, seq, text))
    }

    /// Writes a grant off the request path (a background thread, WAL with
    /// `synchronous=NORMAL`): minting, accepting, fault counts. Such a row
    /// may be lost to a crash of the manager or the machine, which is
    /// fail-safe: a lost mint is a cookie that no longer works; a lost
    /// accept is corrected when the grantee's VMM re-attaches and reports
    /// what it maps (docs/manager.md). Ending a grant (revoke, release)
    /// always uses the durable writes; rows carry their order, so a late
    /// background write never replaces a newer state.
    pub fn put_grant_relaxed(&self, g: &GrantInfo) -> Result<(), StoreError> {
        let row = self.grant_row(g)?;
        match &self.background {
            Some(tx) => match tx.send(row) {
                Ok(()) => Ok(()),
                Err(std::sync::mpsc::SendError((id, seq, text))) => {
                    upsert_grant(&self.conn, id, seq, &text).map_err(|e| self.err(e))
                }
            },
            None => upsert_grant(&self.conn, row.0, row.1, &row.2).map_err(|e| self.err(e)),
        }
    }

    /// Writes several grants in one durable transaction.
    pub fn put_grants(&self, grants: &[GrantInfo]) -> Result<(), StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))?;
        for g in grants {
            if let Err(e) = self.put_grant(g) {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn put_doorbell(&self, d: &DoorbellInfo) -> Result<(), StoreError> {
        self.put_json("doorbells", "id", &d.id, d)
    }

    /// The shared memory pool's row (its size, paging devices and their
    /// assignments: docs/ams.md), written through like partition records.
    pub fn put_pool<T: serde::Serialize>(&self, pool: &T) -> Result<(), StoreError> {
        self.put_json("pool", "id", "pool", pool)
    }

    /// The pool's row, if a pool was created.
    pub fn pool<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        Ok(self.all_json("pool", "id")?.into_iter().next())
    }

    /// The workload policy's row (docs/workload.md), written through.
    pub fn put_policy<T: serde::Serialize>(&self, policy: &T) -> Result<(), StoreError> {
        self.put_json("workload", "id", "policy", policy)
    }

    /// The workload policy, if one was set.
    pub fn policy<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        Ok(self.all_json("workload", "id")?.into_iter().next())
    }

    pub fn all_doorbells(&self) -> Result<Vec<DoorbellInfo>, StoreError> {
        self.all_json("doorbells", "id")
    }

    pub fn all_segments(&self) -> Result<Vec<SegmentInfo>, StoreError> {
        self.all_json("segments", "name")
    }

    pub fn all_grants(&self) -> Result<Vec<GrantInfo>, StoreError> {
        self.all_json("grants", "id")
    }

    fn put_json<T: serde::Serialize>(
        &self,
        table: &str,
        key_col: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            name: key.into(),
            message: e.to_string(),
        })?;
        self.conn
            .execute(
                &format!(
                    "INSERT INTO {table} ({key_col}, info) VALUES (?1, ?2)
                     ON CONFLICT({key_col}) DO UPDATE SET info = excluded.info"
                ),
                params![key, text],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn all_json<T: DeserializeOwned>(
        &self,
        table: &str,
        key_col: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {key_col}, info FROM {table} ORDER BY {key_col}"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, rusqlite::types::Value>(0)?,
                    r.get::<_, String>(1)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (key, text) = row.map_err(|e| self.err(e))?;
            let value = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                name: format!("{table} {key:?}"),
                message: e.to_string(),
            })?;
            out.push(value);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
            definition: Definition::Partition(parvm_config::PartitionDefinition {
                name: Some(name.into()),
                kernel: Some("/k".into()),
                ..Default::default()
            }),
            restart: RestartPolicy::OnFailure,
            state: PartitionState::Defined,
            last_exit: None,
            pid: None,
            pid_start: None,
            token: None,
            restarts: 0,
            since: 1,
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        {
            let s = Store::open(dir.as_path()).unwrap();
            s.put(&record("b")).unwrap();
            let mut a = record("a");
            s.put(&a).unwrap();
            a.state = PartitionState::Running;
            a.pid = Some(42);
            a.pid_start = Some(1234);
            a.token = Some("t".into());
            a.last_exit = Some("guest reset".into());
            s.put(&a).unwrap();
            s.put(&record("c")).unwrap();
            s.remove("c").unwrap();
        }
        let s = Store::open(dir.as_path()).unwrap();
        let all = s.all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].name, "a");
        assert_eq!(all[0].state, PartitionState::Running);
        assert_eq!(all[0].pid, Some(42));
        assert_eq!(all[0].pid_start, Some(1234));
        assert_eq!(all[0].token.as_deref(), Some("t"));
        assert_eq!(all[1], record("b"));
    }

    #[test]
    fn a_late_background_write_never_replaces_a_newer_grant_state() {
        use parvm_protocol::{GrantCookie, GrantState, Rights};
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let mut g = GrantInfo {
            id: 1,
            cookie: GrantCookie([7; 16]),
            segment: "a/s".into(),
            grantor: "a".into(),
            grantee: "b".into(),
            rights: Rights::Rw,
            parent: None,
            state: GrantState::Accepted,
            gpa: Some(0xe000_0000),
            faults: 0,
            last_fault: None,
            since: 1,
            auto_gpa: None,
        };
        {
            let s = Store::open(dir.as_path()).unwrap();
            for i in 0..200 {
                g.faults = i;
                s.put_grant_relaxed(&g).unwrap();
            }
            g.state = GrantState::Revoked;
            s.put_grant(&g).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let s = Store::open(dir.as_path()).unwrap();
        let all = s.all_grants().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state, GrantState::Revoked);
        assert_eq!(all[0].faults, 199);
        // Later writes continue the order after a reopen.
        g.state = GrantState::Released;
        s.put_grant(&g).unwrap();
        assert_eq!(s.all_grants().unwrap()[0].state, GrantState::Released);
    }

    #[test]
    fn the_pool_row_survives_reopening() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        {
            let s = Store::open(dir.as_path()).unwrap();
            assert_eq!(s.pool::<serde_json::Value>().unwrap(), None);
            s.put_pool(&serde_json::json!({"size_mib": 48})).unwrap();
            s.put_pool(&serde_json::json!({"size_mib": 64})).unwrap();
        }
        let s = Store::open(dir.as_path()).unwrap();
        assert_eq!(
            s.pool::<serde_json::Value>().unwrap(),
            Some(serde_json::json!({"size_mib": 64}))
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        drop(Store::open(dir.as_path()).unwrap());
        let c = Connection::open(dir.as_path().join("partitions.db")).unwrap();
        c.execute("UPDATE meta SET value = 99 WHERE key = 'schema'", [])
            .unwrap();
        drop(c);
        assert!(matches!(
            Store::open(dir.as_path()),
            Err(StoreError::Schema { found: 99, .. })
        ));
    }

    #[test]
    fn a_corrupt_row_is_named() {
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let s = Store::open(dir.as_path()).unwrap();
        s.put(&record("x")).unwrap();
        s.conn
            .execute("UPDATE partitions SET state = 'zombie'", [])
            .unwrap();
        let e = s.all().unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("zombie"), "{e}");
    }
}
