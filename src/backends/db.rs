//! Persistence in SQLite (embedded) or PostgreSQL, through one `sqlx` Any pool.
//!
//! Each statement is written once as a template; [`Dialect::render`] turns the two places
//! where the databases differ into their own syntax: `{ts:$N}` (a Unix-milliseconds
//! parameter made a timestamp), `{json:$N}` (a text parameter made JSON) and
//! `{epoch_ms:column}` (a timestamp column read as Unix milliseconds). The schemas are
//! `migrations/postgres` and `migrations/sqlite`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyQueryResult};
use std::sync::Arc;

use sqlx::{Any, AnyPool, AssertSqlSafe, SqlSafeStr, SqlStr, Transaction};

use signaling::journal::{LogError, Record, SignalingLog};
use signaling::tasks::Task;

/// The SQL flavour of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: timestamps are ISO-8601 text, JSON is text.
    Sqlite,
    /// PostgreSQL: TIMESTAMPTZ and JSONB.
    Postgres,
}

impl Dialect {
    /// Renders a statement template for this dialect.
    pub fn render(self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start..].find('}') else { break };
            let marker = &rest[start + 1..start + len];
            rest = &rest[start + len + 1..];
            let rendered = match (self, marker.split_once(':')) {
                (Self::Postgres, Some(("ts", p))) => format!("to_timestamp({p}::float8 / 1000)"),
                (Self::Sqlite, Some(("ts", p))) => format!("strftime('%Y-%m-%dT%H:%M:%fZ', {p} / 1000.0, 'unixepoch')"),
                (Self::Postgres, Some(("json", p))) => format!("{p}::jsonb"),
                (Self::Sqlite, Some(("json", p))) => p.to_owned(),
                (Self::Postgres, Some(("epoch_ms", c))) => format!("CAST(EXTRACT(EPOCH FROM {c}) * 1000 AS BIGINT)"),
                (Self::Sqlite, Some(("epoch_ms", c))) => format!("CAST((julianday({c}) - 2440587.5) * 86400000.0 AS INTEGER)"),
                _ => format!("{{{marker}}}"),
            };
            out.push_str(&rendered);
        }
        out.push_str(rest);
        out
    }
}

/// Connection pool settings (the seed's defaults: 100 open, 10 idle, 3600 s lifetime).
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Most open connections.
    pub max_open: u32,
    /// Connections kept while idle.
    pub max_idle: u32,
    /// Lifetime of a connection.
    pub max_lifetime: Duration,
}

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// How long a write waits for a pooled connection before the database counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The persistence database.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    dialect: Dialect,
    statements: std::sync::Arc<Statements>,
}

/// Settings of each embedded database connection.
/// - The page cache is 256 KiB instead of SQLite's 2 MiB: what the server writes is appended
///   (messages, sessions, events) and rarely read back, so a large cache holds pages written
///   once, at a cost that a small meeting's memory per track shows.
/// - Write-ahead logging with `synchronous = NORMAL`: a commit appends to the log without
///   waiting for the disk (the rollback journal's default syncs the journal and the database
///   on every commit, most of the embedded database's CPU under load); only checkpoints sync.
///   A crash of the server loses nothing; a power loss can lose the last commits.
const SQLITE_PRAGMAS: [&str; 3] = ["PRAGMA cache_size = -256", "PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"];

impl Database {
    /// Opens a pool on `url` (`sqlite:` or `postgres:`) and applies the migrations.
    pub async fn open(dialect: Dialect, url: &str, pool: PoolSettings) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time: one connection avoids "database is locked".
            .max_connections(if dialect == Dialect::Sqlite { 1 } else { pool.max_open })
            .min_connections(if dialect == Dialect::Sqlite { 1 } else { pool.max_idle.min(pool.max_open) })
            .max_lifetime(pool.max_lifetime)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        for pragma in SQLITE_PRAGMAS {
                            sqlx::query(pragma).execute(&mut *connection).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(DbError::Connect)?;
        let database = Self { pool, dialect, statements: std::sync::Arc::new(Statements::render(dialect)) };
        database.migrate().await?;
        Ok(database)
    }

    /// Applies the schema migrations that have not been applied.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self.dialect {
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&self.pool).await?,
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&self.pool).await?,
        }
        Ok(())
    }

    /// The key that signs download URLs (`objects.url_signing_key` in `system_configs`): made
    /// by the first node that starts on this database, so every node sharing it signs alike
    /// and links outlive restarts, and never the access tokens' key.
    pub async fn url_signing_key(&self) -> Result<String, sqlx::Error> {
        const KEY: &str = "objects.url_signing_key";
        let fresh = crate::backends::objects::local::to_hex(&rand::random::<[u8; 32]>());
        sqlx::query(
            "INSERT INTO system_configs (config_key, config_value, value_type, description, is_public)
             VALUES ($1, $2, 'string', 'HMAC-SHA256 key of signed download URLs, made at first start', FALSE)
             ON CONFLICT (config_key) DO NOTHING",
        )
        .bind(KEY)
        .bind(fresh)
        .execute(&self.pool)
        .await?;
        let (key,): (String,) =
            sqlx::query_as("SELECT config_value FROM system_configs WHERE config_key = $1").bind(KEY).fetch_one(&self.pool).await?;
        Ok(key)
    }

    /// Deletes `signaling_messages` rows written before `before_ms`, at most `batch` of
    /// them, the oldest first; returns how many went.
    pub async fn purge_messages(&self, before_ms: u64, batch: u32) -> Result<u64, sqlx::Error> {
        let result =
            sqlx::query(self.statements.purge_messages.clone()).bind(ms(before_ms)).bind(i64::from(batch)).execute(&self.pool).await?;
        Ok(result.rows_affected())
    }

    /// Keeps `signaling_messages` to the last `days`: every hour, deletes older rows in
    /// batches until none is left. Runs until the process ends.
    pub async fn keep_messages_for(self, days: u32) {
        const BATCH: u32 = 5_000;
        let retention_ms = u64::from(days) * 86_400_000;
        let mut every_hour = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every_hour.tick().await;
            let before_ms = signaling::stamps::unix_ms().saturating_sub(retention_ms);
            let mut deleted = 0;
            loop {
                match self.purge_messages(before_ms, BATCH).await {
                    // A short batch met a row still kept: every older one has gone.
                    Ok(n) if n < u64::from(BATCH) => {
                        deleted += n;
                        break;
                    }
                    Ok(n) => deleted += n,
                    Err(err) => {
                        tracing::warn!(%err, "deleting old signaling messages; trying again in an hour");
                        break;
                    }
                }
                // Let the journal's writes in between batches.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if deleted > 0 {
                tracing::info!(deleted, days, "deleted signaling messages past their retention");
            }
        }
    }

    /// Whether a task with this id was done (recorded in `operation_logs`).
    pub async fn task_done(&self, task_id: &str) -> Result<bool, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM operation_logs WHERE resource_type = 'task' AND resource_id = $1";
        let (count,): (i64,) = sqlx::query_as(sql).bind(task_id).fetch_one(&self.pool).await?;
        Ok(count > 0)
    }

    /// Records that a task was done, at once (not through the journal): its offset is
    /// committed only after this.
    pub async fn record_task_done(&self, task: &Task, details: serde_json::Value) -> Result<(), sqlx::Error> {
        sqlx::query(self.statements.operation.clone())
            .bind(None::<String>)
            .bind(task.command.kind())
            .bind("task")
            .bind(&task.task_id)
            .bind(details.to_string())
            .bind(ms(signaling::stamps::unix_ms()))
            .execute(&self.pool)
            .await
            .map(drop)
    }
}

/// A `meeting_recordings` row, as the recordings API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordingRow {
    /// Recording id.
    pub recording_id: String,
    /// Meeting id.
    pub meeting_id: String,
    /// Room instance id.
    pub room_id: Option<String>,
    /// File name of the main object.
    pub filename: String,
    /// Its object key.
    pub file_path: String,
    /// Bytes stored.
    pub file_size: i64,
    /// Length, seconds.
    pub duration: i64,
    /// `mp4`, `hls` or `mp4+hls`.
    pub format: String,
    /// 1 recording, 2 done, 3 failed.
    pub status: i64,
    /// Start, Unix milliseconds.
    pub started_at_ms: i64,
    /// End, Unix milliseconds.
    pub ended_at_ms: Option<i64>,
}

type RecordingTuple = (String, String, Option<String>, String, String, i64, i64, String, i64, i64, Option<i64>);

impl Database {
    /// The meeting's recordings, oldest first (soft-deleted ones left out).
    pub async fn recordings(&self, meeting_id: &str) -> Result<Vec<RecordingRow>, sqlx::Error> {
        let rows: Vec<RecordingTuple> = sqlx::query_as(self.statements.recordings.clone()).bind(meeting_id).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|r| RecordingRow {
                recording_id: r.0,
                meeting_id: r.1,
                room_id: r.2,
                filename: r.3,
                file_path: r.4,
                file_size: r.5,
                duration: r.6,
                format: r.7,
                status: r.8,
                started_at_ms: r.9,
                ended_at_ms: r.10,
            })
            .collect())
    }
}

/// Whether a database error means "try again later" rather than "this record is wrong".
fn classify(err: sqlx::Error) -> LogError {
    match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // PostgreSQL classes 08 (connection), 53 (resources), 57 (operator intervention:
            // shutdown); SQLite 5 and 6 (busy, locked).
            let transient = ["08", "53", "57"].iter().any(|class| code.starts_with(class)) || code == "5" || code == "6";
            if transient {
                LogError::Unavailable(err.to_string())
            } else {
                LogError::Rejected(err.to_string())
            }
        }
        _ => LogError::Unavailable(err.to_string()),
    }
}

/// The statements the journal runs, rendered for one dialect. Their text comes only from
/// the constant templates below (values are always bound), hence `AssertSqlSafe`.
struct Statements {
    ensure_user: SqlStr,
    ensure_meeting: SqlStr,
    participant_joined: SqlStr,
    participant_left: SqlStr,
    room: SqlStr,
    end_meeting: SqlStr,
    session: SqlStr,
    session_ping: SqlStr,
    message: SqlStr,
    stream: SqlStr,
    recording_started: SqlStr,
    recording_ended: SqlStr,
    ai_task: SqlStr,
    recordings: SqlStr,
    operation: SqlStr,
    purge_messages: SqlStr,
}

fn safe(sql: String) -> SqlStr {
    AssertSqlSafe(Arc::<str>::from(sql)).into_sql_str()
}

const USER: &str = "(SELECT id FROM users WHERE username = ";

impl Statements {
    fn render(d: Dialect) -> Self {
        let r = |template: &str| safe(d.render(template));
        Self {
            ensure_user: r("INSERT INTO users (username, nickname) VALUES ($1, $2)
                 ON CONFLICT (username) DO UPDATE SET nickname = COALESCE(excluded.nickname, users.nickname)"),
            ensure_meeting: r(&format!(
                "INSERT INTO meetings (id, title, creator_id, start_time, status) VALUES ($1, $1, {USER}$2), {{ts:$3}}, 2)
                 ON CONFLICT (id) DO UPDATE SET status = 2, end_time = NULL,
                   start_time = COALESCE(meetings.start_time, excluded.start_time)
                 WHERE meetings.status IN (1, 3)"
            )),
            participant_joined: r(&format!(
                "INSERT INTO meeting_participants (meeting_id, user_id, role, status, joined_at)
                 VALUES ($1, {USER}$2),
                   CASE WHEN (SELECT creator_id FROM meetings WHERE id = $1) = {USER}$2) THEN 1 ELSE 3 END,
                   1, {{ts:$3}})
                 ON CONFLICT (meeting_id, user_id) DO UPDATE SET status = 1, joined_at = excluded.joined_at, left_at = NULL"
            )),
            participant_left: r(&format!(
                "UPDATE meeting_participants SET status = $3, left_at = {{ts:$4}}
                 WHERE meeting_id = $1 AND user_id = {USER}$2)"
            )),
            room: r("INSERT INTO meeting_rooms (room_id, meeting_id, sfu_node, status, participant_count, created_at)
                 VALUES ($1, $2, $3, $4, $5, {ts:$6})
                 ON CONFLICT (room_id) DO UPDATE SET status = excluded.status,
                   participant_count = excluded.participant_count,
                   closed_at = CASE WHEN excluded.status = 3 THEN {ts:$6} ELSE NULL END"),
            end_meeting: r("UPDATE meetings SET status = 3, end_time = {ts:$2}
                 WHERE id = $1 AND status = 2
                   AND NOT EXISTS (SELECT 1 FROM meeting_rooms WHERE meeting_id = $1 AND status <> 3)"),
            session: r(&format!(
                "INSERT INTO signaling_sessions (session_id, user_id, meeting_id, peer_id, status, joined_at, last_ping_at)
                 VALUES ($1, {USER}$2), $3, $4, $5, {{ts:$6}}, {{ts:$6}})
                 ON CONFLICT (session_id) DO UPDATE SET status = excluded.status,
                   disconnected_at = CASE WHEN excluded.status IN (6, 7) THEN {{ts:$6}} ELSE NULL END"
            )),
            session_ping: r("UPDATE signaling_sessions SET last_ping_at = {ts:$2} WHERE session_id = $1"),
            message: r(&format!(
                "INSERT INTO signaling_messages
                   (message_id, session_id, from_user_id, to_user_id, meeting_id, message_type, payload, status, created_at)
                 VALUES ($1, $2, {USER}$3), {USER}$4), $5, $6, {{json:$7}}, $8, {{ts:$9}})
                 ON CONFLICT (message_id) DO NOTHING"
            )),
            stream: r(&format!(
                "INSERT INTO media_streams (room_id, user_id, stream_id, stream_type, codec, status, started_at)
                 VALUES ($1, {USER}$2), $3, $4, $5, $6, {{ts:$7}})
                 ON CONFLICT (stream_id) DO UPDATE SET status = excluded.status,
                   ended_at = CASE WHEN excluded.status = 3 THEN {{ts:$7}} ELSE NULL END"
            )),
            recording_started: r("INSERT INTO meeting_recordings
                   (recording_id, meeting_id, room_id, filename, file_path, format, status, started_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 1, {ts:$7})
                 ON CONFLICT (recording_id) DO NOTHING"),
            recording_ended: r("UPDATE meeting_recordings SET status = $2, file_size = $3, duration = $4, ended_at = {ts:$5}
                 WHERE recording_id = $1"),
            ai_task: r("INSERT INTO ai_tasks (task_id, task_type, meeting_id, recording_id, status, input)
                 VALUES ($1, $2, $3, $4, 1, {json:$5})
                 ON CONFLICT (task_id) DO NOTHING"),
            // Numbers read as BIGINT: the one integer type both drivers decode alike.
            recordings: r("SELECT recording_id, meeting_id, room_id, filename, file_path, CAST(file_size AS BIGINT),
                   CAST(duration AS BIGINT), format, CAST(status AS BIGINT), {epoch_ms:started_at}, {epoch_ms:ended_at}
                 FROM meeting_recordings WHERE meeting_id = $1 AND deleted_at IS NULL ORDER BY id"),
            operation: r(&format!(
                "INSERT INTO operation_logs (user_id, operation, resource_type, resource_id, details, created_at)
                 VALUES ({USER}$1), $2, $3, $4, {{json:$5}}, {{ts:$6}})"
            )),
            // Among the oldest $2 rows (by id, which grows with time), those written before
            // $1: a statement reads a bounded number of rows, whatever the table's size.
            purge_messages: r("DELETE FROM signaling_messages WHERE id IN (
                   SELECT id FROM (SELECT id, created_at FROM signaling_messages ORDER BY id LIMIT $2) oldest
                   WHERE oldest.created_at < {ts:$1})"),
        }
    }
}

fn ms(at_ms: u64) -> i64 {
    i64::try_from(at_ms).unwrap_or(i64::MAX)
}

impl Database {
    async fn apply(&self, tx: &mut Transaction<'static, Any>, record: &Record) -> Result<AnyQueryResult, sqlx::Error> {
        let s = &self.statements;
        match record {
            Record::ParticipantJoined { meeting_id, identity, name, at_ms } => {
                sqlx::query(s.ensure_user.clone()).bind(identity).bind(name.clone()).execute(&mut **tx).await?;
                sqlx::query(s.ensure_meeting.clone()).bind(meeting_id).bind(identity).bind(ms(*at_ms)).execute(&mut **tx).await?;
                sqlx::query(s.participant_joined.clone()).bind(meeting_id).bind(identity).bind(ms(*at_ms)).execute(&mut **tx).await
            }
            Record::ParticipantLeft { meeting_id, identity, status, at_ms } => {
                sqlx::query(s.participant_left.clone())
                    .bind(meeting_id)
                    .bind(identity)
                    .bind(*status as i16)
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await
            }
            Record::Room { room_id, meeting_id, sfu_node, status, participant_count, at_ms } => {
                let result = sqlx::query(s.room.clone())
                    .bind(room_id)
                    .bind(meeting_id)
                    .bind(sfu_node)
                    .bind(*status as i16)
                    .bind(*participant_count)
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await?;
                if *status == signaling::journal::RoomStatus::Closed {
                    sqlx::query(s.end_meeting.clone()).bind(meeting_id).bind(ms(*at_ms)).execute(&mut **tx).await?;
                }
                Ok(result)
            }
            Record::Session { session_id, identity, meeting_id, peer_id, status, at_ms } => {
                sqlx::query(s.session.clone())
                    .bind(session_id)
                    .bind(identity)
                    .bind(meeting_id)
                    .bind(peer_id)
                    .bind(*status as i16)
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await
            }
            Record::SessionPing { session_id, at_ms } => {
                sqlx::query(s.session_ping.clone()).bind(session_id).bind(ms(*at_ms)).execute(&mut **tx).await
            }
            Record::Message { message_id, session_id, from, to, meeting_id, message_type, payload, status, at_ms } => {
                sqlx::query(s.message.clone())
                    .bind(message_id)
                    .bind(session_id)
                    .bind(from.clone())
                    .bind(to.clone())
                    .bind(meeting_id)
                    .bind(*message_type as i16)
                    .bind(payload.to_string())
                    .bind(*status as i16)
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await
            }
            Record::Stream { room_id, identity, stream_id, stream_type, codec, status, at_ms } => {
                sqlx::query(s.stream.clone())
                    .bind(room_id)
                    .bind(identity)
                    .bind(stream_id)
                    .bind(*stream_type as i16)
                    .bind(codec)
                    .bind(*status as i16)
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await
            }
            Record::RecordingStarted { recording_id, meeting_id, room_id, filename, file_path, format, at_ms } => {
                sqlx::query(s.recording_started.clone())
                    .bind(recording_id)
                    .bind(meeting_id)
                    .bind(room_id.clone())
                    .bind(filename)
                    .bind(file_path)
                    .bind(format)
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await
            }
            Record::RecordingEnded { recording_id, status, file_size, duration_secs, at_ms } => {
                sqlx::query(s.recording_ended.clone())
                    .bind(recording_id)
                    .bind(*status as i16)
                    .bind(*file_size)
                    .bind(*duration_secs)
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await
            }
            Record::AiTask { task_id, task_type, meeting_id, recording_id, input } => {
                sqlx::query(s.ai_task.clone())
                    .bind(task_id)
                    .bind(task_type)
                    .bind(meeting_id)
                    .bind(recording_id.clone())
                    .bind(input.to_string())
                    .execute(&mut **tx)
                    .await
            }
            Record::Operation { identity, operation, resource_type, resource_id, details, at_ms } => {
                if let Some(identity) = identity {
                    sqlx::query(s.ensure_user.clone()).bind(identity).bind(None::<String>).execute(&mut **tx).await?;
                }
                sqlx::query(s.operation.clone())
                    .bind(identity.clone())
                    .bind(operation)
                    .bind(resource_type)
                    .bind(resource_id)
                    .bind(details.to_string())
                    .bind(ms(*at_ms))
                    .execute(&mut **tx)
                    .await
            }
        }
    }
}

#[async_trait]
impl SignalingLog for Database {
    async fn write(&self, batch: &[Record]) -> Result<(), LogError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        for record in batch {
            self.apply(&mut tx, record).await.map_err(classify)?;
        }
        tx.commit().await.map_err(classify)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_timestamps_and_json_per_dialect() {
        let template = "INSERT INTO t (a, b) VALUES ({ts:$1}, {json:$2})";
        assert_eq!(Dialect::Postgres.render(template), "INSERT INTO t (a, b) VALUES (to_timestamp($1::float8 / 1000), $2::jsonb)");
        assert_eq!(
            Dialect::Sqlite.render(template),
            "INSERT INTO t (a, b) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ', $1 / 1000.0, 'unixepoch'), $2)"
        );
    }
}
