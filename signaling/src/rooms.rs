//! Who is in which room, for presence, chat and track-state broadcasts.
//!
//! This is signaling state (not on the packet path): one short lock per join, leave or
//! broadcast. Each member is reached through its session's bounded outbound queue; a member
//! whose queue is full misses the broadcast rather than stalling the room.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::mpsc;
use tracing::warn;

use crate::protocol::{ParticipantInfo, ServerMessage};
use crate::stamps::new_id;

/// A session's outbound queue of text frames.
pub type Outbox = mpsc::Sender<String>;

/// Orders the rooms registry passes to a session from outside its connection (tasks,
/// operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Tell the client the room is closed, then end the session.
    Close {
        /// Why.
        reason: String,
    },
    /// Mute every track the participant publishes.
    MuteTracks,
    /// Tell the participant it was removed, then end its session.
    Remove {
        /// Why.
        reason: String,
    },
}

/// A session's control channel.
pub type ControlSender = mpsc::UnboundedSender<Control>;

struct Member {
    info: ParticipantInfo,
    outbox: Outbox,
    control: ControlSender,
}

/// A participant's entry into a room.
#[derive(Debug)]
pub struct Admitted {
    /// The others already there.
    pub others: Vec<ParticipantInfo>,
    /// The room instance id: new when the room opened with this participant.
    pub room_id: String,
    /// Whether the room opened with this participant.
    pub opened: bool,
}

/// A participant's departure from a room.
#[derive(Debug, PartialEq, Eq)]
pub struct Departure {
    /// The room instance id.
    pub room_id: String,
    /// Participants still there; 0 means the room closed.
    pub remaining: usize,
}

/// Why a room refused a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmitError {
    /// The room is at its participant limit.
    RoomFull,
    /// The node is at its room limit.
    TooManyRooms,
}

/// The rooms of this node.
pub struct Rooms {
    max_participants: usize,
    max_rooms: usize,
    rooms: Mutex<HashMap<String, Room>>,
}

struct Room {
    /// Instance id, new each time the room opens.
    id: String,
    members: Vec<Member>,
    /// Tracks their publishers muted, so late joiners learn the state.
    muted: HashSet<String>,
}

impl Rooms {
    /// An empty registry with the given limits.
    pub fn new(max_participants: usize, max_rooms: usize) -> Self {
        Self { max_participants, max_rooms, rooms: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Admits a participant, announces it to the others, and returns who was there.
    pub fn admit(&self, room: &str, info: ParticipantInfo, outbox: Outbox, control: ControlSender) -> Result<Admitted, AdmitError> {
        let mut rooms = self.lock();
        let opened = !rooms.contains_key(room);
        if opened && rooms.len() >= self.max_rooms {
            return Err(AdmitError::TooManyRooms);
        }
        let entry = rooms.entry(room.to_owned()).or_insert_with(|| Room { id: new_id("RM_"), members: Vec::new(), muted: HashSet::new() });
        if entry.members.len() >= self.max_participants {
            return Err(AdmitError::RoomFull);
        }
        let others: Vec<ParticipantInfo> = entry.members.iter().map(|m| m.info.clone()).collect();
        let joined = ServerMessage::ParticipantJoined { participant: info.clone() }.to_text();
        deliver(entry.members.iter(), &joined);
        entry.members.push(Member { info, outbox, control });
        Ok(Admitted { others, room_id: entry.id.clone(), opened })
    }

    /// Removes a participant and announces its departure.
    pub fn remove(&self, room: &str, participant_id: &str) -> Option<Departure> {
        let mut rooms = self.lock();
        let entry = rooms.get_mut(room)?;
        let before = entry.members.len();
        entry.members.retain(|m| m.info.participant_id != participant_id);
        if entry.members.len() == before {
            return None;
        }
        let departure = Departure { room_id: entry.id.clone(), remaining: entry.members.len() };
        if entry.members.is_empty() {
            rooms.remove(room);
        } else {
            let left = ServerMessage::ParticipantLeft { participant_id: participant_id.to_owned() }.to_text();
            deliver(entry.members.iter(), &left);
        }
        Some(departure)
    }

    /// Passes `control` to the room's members (those with `identity`, when given); returns
    /// how many were reached.
    pub fn control(&self, room: &str, identity: Option<&str>, control: Control) -> usize {
        let rooms = self.lock();
        let Some(entry) = rooms.get(room) else { return 0 };
        entry
            .members
            .iter()
            .filter(|m| identity.is_none_or(|identity| m.info.identity == identity))
            .filter(|m| m.control.send(control.clone()).is_ok())
            .count()
    }

    /// Sends a message to every member of the room.
    pub fn broadcast(&self, room: &str, message: &ServerMessage) {
        let rooms = self.lock();
        if let Some(entry) = rooms.get(room) {
            deliver(entry.members.iter(), &message.to_text());
        }
    }

    /// Records a track's mute state and announces it to the room.
    pub fn set_muted(&self, room: &str, participant_id: &str, track_id: &str, muted: bool) {
        let mut rooms = self.lock();
        let Some(entry) = rooms.get_mut(room) else { return };
        if muted {
            entry.muted.insert(track_id.to_owned());
        } else {
            entry.muted.remove(track_id);
        }
        let message = ServerMessage::TrackMuted { participant_id: participant_id.into(), track_id: track_id.into(), muted };
        deliver(entry.members.iter(), &message.to_text());
    }

    /// Whether a track of the room is muted.
    pub fn is_muted(&self, room: &str, track_id: &str) -> bool {
        self.lock().get(room).is_some_and(|entry| entry.muted.contains(track_id))
    }

    /// Forgets the mute state of a removed track.
    pub fn forget_track(&self, room: &str, track_id: &str) {
        if let Some(entry) = self.lock().get_mut(room) {
            entry.muted.remove(track_id);
        }
    }

    /// Whether the room has members on this node.
    pub fn is_open(&self, room: &str) -> bool {
        self.lock().contains_key(room)
    }

    /// The room instance id, while the room is open.
    pub fn room_id(&self, room: &str) -> Option<String> {
        self.lock().get(room).map(|entry| entry.id.clone())
    }

    /// The participant id of the member with `identity`.
    pub fn participant_of(&self, room: &str, identity: &str) -> Option<String> {
        let rooms = self.lock();
        rooms.get(room)?.members.iter().find(|m| m.info.identity == identity).map(|m| m.info.participant_id.clone())
    }

    /// The identity of a member.
    pub fn identity_of(&self, room: &str, participant_id: &str) -> Option<String> {
        let rooms = self.lock();
        rooms.get(room)?.members.iter().find(|m| m.info.participant_id == participant_id).map(|m| m.info.identity.clone())
    }

    /// Number of rooms with members.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }
}

fn deliver<'a>(members: impl Iterator<Item = &'a Member>, text: &str) {
    for member in members {
        if member.outbox.try_send(text.to_owned()).is_err() {
            warn!(participant = %member.info.participant_id, "outbound queue full or closed; broadcast dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> ParticipantInfo {
        ParticipantInfo { participant_id: id.into(), identity: id.into(), name: None }
    }

    #[test]
    fn admits_announces_and_enforces_limits() {
        let rooms = Rooms::new(2, 1);
        let (a_tx, mut a_rx) = mpsc::channel(8);
        let (b_tx, _b_rx) = mpsc::channel(8);
        let (control, mut a_control) = mpsc::unbounded_channel();
        let first = rooms.admit("r", info("a"), a_tx, control.clone()).unwrap();
        assert!(first.others.is_empty() && first.opened);
        let second = rooms.admit("r", info("b"), b_tx.clone(), control.clone()).unwrap();
        assert_eq!((second.others.len(), second.opened, &second.room_id), (1, false, &first.room_id));
        assert!(a_rx.try_recv().unwrap().contains("participant_joined"));
        assert_eq!(rooms.admit("r", info("c"), b_tx.clone(), control.clone()).unwrap_err(), AdmitError::RoomFull);
        assert_eq!(rooms.admit("other", info("d"), b_tx, control).unwrap_err(), AdmitError::TooManyRooms);
        assert_eq!(rooms.control("r", Some("a"), Control::MuteTracks), 1);
        assert_eq!(a_control.try_recv().unwrap(), Control::MuteTracks);
        assert_eq!(rooms.remove("r", "b"), Some(Departure { room_id: first.room_id.clone(), remaining: 1 }));
        assert!(a_rx.try_recv().unwrap().contains("participant_left"));
        assert_eq!(rooms.remove("r", "b"), None);
        assert_eq!(rooms.remove("r", "a").unwrap().remaining, 0);
        assert_eq!(rooms.room_count(), 0);
        let reopened = rooms.admit("r", info("a"), mpsc::channel(1).0, mpsc::unbounded_channel().0).unwrap();
        assert!(reopened.opened && reopened.room_id != first.room_id);
    }
}
