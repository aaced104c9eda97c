//! The consumer of `<prefix>.tasks`: one consumer group for the cluster, so each task runs
//! on one node. A task is tried `events.task_attempts` times with a doubling pause; after the
//! last failure it is written to `<prefix>.tasks.dlq` with its error. The offset is committed
//! only once the task is done (or dead-lettered), so a node that dies mid-task leaves it to
//! the next consumer; the task's id, recorded in `operation_logs` before the commit, keeps a
//! redelivered task from running twice.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use signaling::session::SignalingContext;
use signaling::stamps::unix_ms;
use signaling::tasks::{Task, TaskError};
use tracing::{debug, error, info, warn};

use super::kafka::KafkaSettings;
use crate::backends::db::Database;

/// Environment variable naming a crash point, for crash tests: `task_done_before_commit`
/// ends the process after a task is done and recorded, before its offset is committed.
pub const FAILPOINT_ENV: &str = "SWITCHBOARD_FAILPOINT";

/// Pause before the second attempt at a task; doubles for each further one.
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Attempts at committing one offset.
const COMMIT_TRIES: u32 = 5;
/// Pause between attempts to reach the database or the broker for bookkeeping.
const BACKEND_RETRY: Duration = Duration::from_secs(1);

/// Runs the tasks consumer until the process ends.
pub struct TaskConsumer {
    consumer: StreamConsumer,
    dead_letters: FutureProducer,
    settings: KafkaSettings,
    attempts: u32,
    database: Database,
    signaling: Arc<SignalingContext>,
}

impl TaskConsumer {
    /// Subscribes to the tasks topic in `group`.
    pub fn new(
        settings: &KafkaSettings,
        group: &str,
        attempts: u32,
        database: Database,
        signaling: Arc<SignalingContext>,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let consumer: StreamConsumer = settings
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()?;
        consumer.subscribe(&[&settings.tasks_topic()])?;
        let dead_letters = settings.producer_config().create()?;
        Ok(Self { consumer, dead_letters, settings: settings.clone(), attempts: attempts.max(1), database, signaling })
    }

    /// Consumes tasks forever.
    pub async fn run(self) {
        loop {
            match self.consumer.recv().await {
                Ok(message) => self.handle(&message).await,
                Err(err) => {
                    warn!(%err, "tasks consumer error");
                    tokio::time::sleep(BACKEND_RETRY).await;
                }
            }
        }
    }

    async fn handle(&self, message: &BorrowedMessage<'_>) {
        let payload = message.payload().unwrap_or_default();
        match Task::parse(payload) {
            Ok(None) => debug!("task for another service; skipped"),
            Ok(Some(task)) => self.run_task(&task, payload).await,
            Err(err) => self.dead_letter(payload, &err, 0).await,
        }
        self.commit(message).await;
    }

    async fn run_task(&self, task: &Task, payload: &[u8]) {
        if self.wait_for(|| self.database.task_done(&task.task_id)).await {
            info!(task = %task.task_id, "task already done; redelivery skipped");
            return;
        }
        let mut pause = FIRST_RETRY;
        for attempt in 1..=self.attempts {
            match task.command.execute(&self.signaling).await {
                Ok(reached) => {
                    info!(task = %task.task_id, kind = task.command.kind(), meeting = task.command.meeting_id(), reached, "task done");
                    let details = json!({ "meeting_id": task.command.meeting_id(), "sessions": reached, "attempt": attempt });
                    self.wait_for(|| self.database.record_task_done(task, details.clone())).await;
                    if std::env::var(FAILPOINT_ENV).as_deref() == Ok("task_done_before_commit") {
                        // Let the task's messages reach the clients, as they would before a
                        // crash at this point.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        error!("failpoint task_done_before_commit: exiting before the commit");
                        std::process::exit(86);
                    }
                    return;
                }
                Err(err) if attempt == self.attempts => return self.dead_letter(payload, &err, attempt).await,
                Err(err) => {
                    warn!(task = %task.task_id, attempt, %err, "task failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
    }

    /// Retries `operation` until the backend answers.
    async fn wait_for<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(&self, operation: impl Fn() -> F) -> T {
        loop {
            match operation().await {
                Ok(value) => return value,
                Err(err) => {
                    warn!(%err, "task bookkeeping failed; retrying");
                    tokio::time::sleep(BACKEND_RETRY).await;
                }
            }
        }
    }

    async fn dead_letter(&self, payload: &[u8], err: &TaskError, attempts: u32) {
        let task: Value = serde_json::from_slice(payload).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
        warn!(%err, attempts, "task failed; moved to the dead-letter topic");
        let letter = json!({
            "task": task,
            "error": err.to_string(),
            "attempts": attempts,
            "failed_at_ms": unix_ms(),
            "node": self.signaling.books.state.node().id,
        })
        .to_string();
        let topic = self.settings.dead_letter_topic();
        loop {
            let record: FutureRecord<'_, (), String> = FutureRecord::to(&topic).payload(&letter);
            match self.dead_letters.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((err, _)) => {
                    warn!(%err, "cannot write to the dead-letter topic; retrying");
                    tokio::time::sleep(BACKEND_RETRY).await;
                }
            }
        }
    }

    /// Commits past the message. A commit that keeps failing (the group moved on) is given
    /// up: the task is then delivered again, and its recorded id keeps it from running twice.
    async fn commit(&self, message: &BorrowedMessage<'_>) {
        for _ in 0..COMMIT_TRIES {
            // A synchronous commit waits for the broker: off the async workers.
            match tokio::task::block_in_place(|| self.consumer.commit_message(message, CommitMode::Sync)) {
                Ok(()) => return,
                Err(err) => {
                    warn!(%err, "cannot commit the task's offset; retrying");
                    tokio::time::sleep(BACKEND_RETRY).await;
                }
            }
        }
        warn!("task offset not committed; the task will be delivered again");
    }
}
