//! Commands other services send this server through `<prefix>.tasks`: close a room, mute a
//! participant, start or stop a recording. Parsing and execution live here; the consumer
//! that reads the topic, retries and dead-letters is the binary's.
//!
//! A task is a JSON object with a `task_id` (the idempotency key) and a `type`:
//! `{"task_id":"t1","type":"close_room","meeting_id":"m1","reason":"over"}`,
//! `{"task_id":"t2","type":"mute_participant","meeting_id":"m1","identity":"bob"}`,
//! `{"task_id":"t5","type":"remove_participant","meeting_id":"m1","identity":"bob","reason":"spam"}`,
//! `{"task_id":"t3","type":"start_recording","meeting_id":"m1","format":"mp4"}`,
//! `{"task_id":"t4","type":"stop_recording","meeting_id":"m1"}`. Types this server does not
//! handle (work for other services on the same topic) are left alone.

use serde::Deserialize;
use serde_json::Value;

use crate::recordings::RecordingError;
use crate::rooms::Control;
use crate::session::SignalingContext;

/// The task types this server executes.
pub const HANDLED_TYPES: [&str; 5] = ["close_room", "mute_participant", "remove_participant", "start_recording", "stop_recording"];

/// A command addressed to this server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Tell everyone in the room it is closed and end their sessions.
    CloseRoom {
        /// The meeting.
        meeting_id: String,
        /// Shown to the participants.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Mute every track a user publishes in the room.
    MuteParticipant {
        /// The meeting.
        meeting_id: String,
        /// The user.
        identity: String,
    },
    /// Take a user out of the room: its sessions are told why and closed (code 4003).
    RemoveParticipant {
        /// The meeting.
        meeting_id: String,
        /// The user.
        identity: String,
        /// Shown to the participant.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Start recording the room.
    StartRecording {
        /// The meeting.
        meeting_id: String,
        /// `mp4`, `hls` or `mp4+hls` (default: the configured one).
        #[serde(default)]
        format: Option<String>,
        /// Record only this user.
        #[serde(default)]
        identity: Option<String>,
    },
    /// Stop recording the room.
    StopRecording {
        /// The meeting.
        meeting_id: String,
    },
}

/// A task of the topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Task {
    /// Unique id; a task whose id was already done is not done again.
    pub task_id: String,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// The message is not a task this server can read.
    #[error("malformed task: {0}")]
    Malformed(String),
    /// The room is not open on this node.
    #[error("room `{0}` is not open on this node")]
    NoSuchRoom(String),
    /// The user is not in the room.
    #[error("`{identity}` is not in room `{meeting_id}`")]
    NoSuchParticipant {
        /// The meeting.
        meeting_id: String,
        /// The user.
        identity: String,
    },
    /// The recording could not be started or stopped.
    #[error("recording: {0}")]
    Recording(String),
}

impl Task {
    /// Reads a message of the tasks topic: `Ok(None)` for tasks of other services.
    pub fn parse(payload: &[u8]) -> Result<Option<Self>, TaskError> {
        let value: Value = serde_json::from_slice(payload).map_err(|e| TaskError::Malformed(e.to_string()))?;
        let kind = value.get("type").and_then(Value::as_str).ok_or_else(|| TaskError::Malformed("missing string field `type`".into()))?;
        if !HANDLED_TYPES.contains(&kind) {
            return Ok(None);
        }
        serde_json::from_value(value).map(Some).map_err(|e| TaskError::Malformed(e.to_string()))
    }
}

impl Command {
    /// The meeting the command is about.
    pub fn meeting_id(&self) -> &str {
        match self {
            Self::CloseRoom { meeting_id, .. }
            | Self::MuteParticipant { meeting_id, .. }
            | Self::RemoveParticipant { meeting_id, .. }
            | Self::StartRecording { meeting_id, .. }
            | Self::StopRecording { meeting_id } => meeting_id,
        }
    }

    /// The command's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CloseRoom { .. } => "close_room",
            Self::MuteParticipant { .. } => "mute_participant",
            Self::RemoveParticipant { .. } => "remove_participant",
            Self::StartRecording { .. } => "start_recording",
            Self::StopRecording { .. } => "stop_recording",
        }
    }

    /// Executes the command on this node (tasks and the admin API share it); returns how
    /// many sessions (or, for recordings, participants' recordings) it reached.
    pub async fn execute(&self, ctx: &SignalingContext) -> Result<usize, TaskError> {
        let rooms = &ctx.rooms;
        match self {
            Self::CloseRoom { meeting_id, reason } => {
                let reason = reason.clone().unwrap_or_else(|| "closed by the server".into());
                match rooms.control(meeting_id, None, Control::Close { reason }) {
                    0 => Err(TaskError::NoSuchRoom(meeting_id.clone())),
                    reached => Ok(reached),
                }
            }
            Self::MuteParticipant { meeting_id, identity } => reach_participant(ctx, meeting_id, identity, Control::MuteTracks),
            Self::RemoveParticipant { meeting_id, identity, reason } => {
                let reason = reason.clone().unwrap_or_else(|| "removed by an operator".into());
                reach_participant(ctx, meeting_id, identity, Control::Remove { reason })
            }
            Self::StartRecording { meeting_id, format, identity } => {
                match ctx.recordings.start(meeting_id, format.as_deref(), identity.as_deref()).await {
                    Ok(started) => Ok(started.len()),
                    // Already in the state asked for.
                    Err(RecordingError::AlreadyRecording(_)) => Ok(0),
                    Err(RecordingError::NoSuchRoom(room)) => Err(TaskError::NoSuchRoom(room)),
                    Err(err) => Err(TaskError::Recording(err.to_string())),
                }
            }
            Self::StopRecording { meeting_id } => {
                let running = ctx.recordings.running(meeting_id).len();
                ctx.recordings.stop(meeting_id, None).map(|()| running).map_err(|err| TaskError::Recording(err.to_string()))
            }
        }
    }
}

/// Passes `control` to `identity`'s sessions in the room; how many there were.
fn reach_participant(ctx: &SignalingContext, meeting_id: &str, identity: &str, control: Control) -> Result<usize, TaskError> {
    match ctx.rooms.control(meeting_id, Some(identity), control) {
        0 => Err(TaskError::NoSuchParticipant { meeting_id: meeting_id.to_owned(), identity: identity.to_owned() }),
        reached => Ok(reached),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_own_tasks_and_leaves_others() {
        let task = Task::parse(br#"{"task_id":"t1","type":"close_room","meeting_id":"m"}"#).unwrap().unwrap();
        assert_eq!(task.command, Command::CloseRoom { meeting_id: "m".into(), reason: None });
        let remove = Task::parse(br#"{"task_id":"t5","type":"remove_participant","meeting_id":"m","identity":"bob"}"#).unwrap().unwrap();
        assert_eq!(remove.command, Command::RemoveParticipant { meeting_id: "m".into(), identity: "bob".into(), reason: None });
        assert_eq!(Task::parse(br#"{"task_id":"t2","type":"transcribe","recording_id":"r"}"#).unwrap(), None);
        assert!(matches!(Task::parse(b"nope"), Err(TaskError::Malformed(_))));
        assert!(matches!(Task::parse(br#"{"type":"close_room","meeting_id":"m"}"#), Err(TaskError::Malformed(_))));
    }
}
