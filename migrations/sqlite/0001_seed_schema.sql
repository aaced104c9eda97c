-- Switchboard's embedded persistence: the same logical schema as migrations/postgres, in
-- SQLite types (timestamps as ISO-8601 UTC text, JSON as text, booleans as 0/1).
-- Status columns keep the seed's numeric codes; every table with `updated_at` has a trigger
-- that maintains it; `deleted_at` marks soft-deleted rows.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      VARCHAR(128) NOT NULL UNIQUE,
    email         VARCHAR(255) UNIQUE,
    password_hash VARCHAR(255),
    nickname      VARCHAR(128),
    avatar_url    VARCHAR(512),
    role          SMALLINT NOT NULL DEFAULT 1,   -- 1 user, 2 admin
    status        SMALLINT NOT NULL DEFAULT 1,   -- 1 active, 2 disabled
    last_login_at TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted_at    TEXT
);
CREATE INDEX idx_users_role ON users (role);
CREATE INDEX idx_users_status ON users (status);

CREATE TABLE meetings (
    id               VARCHAR(128) PRIMARY KEY,   -- the meeting id tokens name as their room
    title            VARCHAR(255) NOT NULL,
    description      TEXT,
    creator_id       BIGINT NOT NULL REFERENCES users (id),
    start_time       TEXT,
    end_time         TEXT,
    max_participants INTEGER NOT NULL DEFAULT 100,
    status           SMALLINT NOT NULL DEFAULT 1,  -- 1 scheduled, 2 ongoing, 3 ended, 4 cancelled
    settings         TEXT NOT NULL DEFAULT '{}',
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted_at       TEXT
);
CREATE INDEX idx_meetings_creator ON meetings (creator_id);
CREATE INDEX idx_meetings_status ON meetings (status);
CREATE INDEX idx_meetings_start_time ON meetings (start_time);

CREATE TABLE meeting_participants (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    meeting_id VARCHAR(128) NOT NULL REFERENCES meetings (id),
    user_id    BIGINT NOT NULL REFERENCES users (id),
    role       SMALLINT NOT NULL DEFAULT 3,  -- 1 host, 2 moderator, 3 participant
    status     SMALLINT NOT NULL DEFAULT 1,  -- 1 joined, 2 left, 3 removed
    joined_at  TEXT,
    left_at    TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (meeting_id, user_id)
);
CREATE INDEX idx_meeting_participants_status ON meeting_participants (status);
CREATE INDEX idx_meeting_participants_role ON meeting_participants (role);
CREATE INDEX idx_meeting_participants_user ON meeting_participants (user_id);

CREATE TABLE meeting_rooms (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id           VARCHAR(64) NOT NULL UNIQUE,  -- one SFU room instance of the meeting
    meeting_id        VARCHAR(128) NOT NULL REFERENCES meetings (id),
    sfu_node          VARCHAR(128) NOT NULL,
    status            SMALLINT NOT NULL DEFAULT 1,  -- 1 active, 2 inactive, 3 closed
    participant_count INTEGER NOT NULL DEFAULT 0,
    max_bitrate       INTEGER,
    closed_at         TEXT,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_meeting_rooms_meeting ON meeting_rooms (meeting_id);
CREATE INDEX idx_meeting_rooms_status ON meeting_rooms (status);

CREATE TABLE media_streams (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id     VARCHAR(64) NOT NULL REFERENCES meeting_rooms (room_id),
    user_id     BIGINT NOT NULL REFERENCES users (id),
    stream_id   VARCHAR(128) NOT NULL UNIQUE,
    stream_type SMALLINT NOT NULL,            -- 1 audio, 2 video, 3 screen
    codec       VARCHAR(64) NOT NULL,
    bitrate     INTEGER,
    resolution  VARCHAR(32),
    status      SMALLINT NOT NULL DEFAULT 1,  -- 1 active, 2 paused, 3 stopped
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_media_streams_room ON media_streams (room_id);
CREATE INDEX idx_media_streams_user ON media_streams (user_id);
CREATE INDEX idx_media_streams_type ON media_streams (stream_type);
CREATE INDEX idx_media_streams_status ON media_streams (status);

CREATE TABLE meeting_recordings (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    recording_id VARCHAR(64) NOT NULL UNIQUE,
    meeting_id   VARCHAR(128) NOT NULL REFERENCES meetings (id),
    room_id      VARCHAR(64),
    filename     VARCHAR(255) NOT NULL,
    file_path    VARCHAR(512) NOT NULL,
    file_size    BIGINT NOT NULL DEFAULT 0,
    duration     INTEGER NOT NULL DEFAULT 0,   -- seconds
    format       VARCHAR(16) NOT NULL,         -- mp4, hls
    status       SMALLINT NOT NULL DEFAULT 1,  -- 1 recording, 2 done, 3 failed
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted_at   TEXT
);
CREATE INDEX idx_meeting_recordings_meeting ON meeting_recordings (meeting_id);
CREATE INDEX idx_meeting_recordings_status ON meeting_recordings (status);

CREATE TABLE signaling_sessions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id      VARCHAR(64) NOT NULL UNIQUE,
    user_id         BIGINT NOT NULL REFERENCES users (id),
    meeting_id      VARCHAR(128) NOT NULL REFERENCES meetings (id),
    peer_id         VARCHAR(64) NOT NULL,
    -- 1 connecting, 2 connected, 3 offering, 4 answering, 5 stable, 6 disconnected, 7 failed
    status          SMALLINT NOT NULL DEFAULT 1,
    joined_at       TEXT NOT NULL,
    last_ping_at    TEXT,
    disconnected_at TEXT,
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_signaling_sessions_meeting ON signaling_sessions (meeting_id);
CREATE INDEX idx_signaling_sessions_user ON signaling_sessions (user_id);
CREATE INDEX idx_signaling_sessions_status ON signaling_sessions (status);

CREATE TABLE signaling_messages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id   VARCHAR(64) NOT NULL UNIQUE,
    session_id   VARCHAR(64) NOT NULL,
    from_user_id BIGINT REFERENCES users (id),   -- NULL: the server
    to_user_id   BIGINT REFERENCES users (id),   -- NULL: the whole room, or the server
    meeting_id   VARCHAR(128) NOT NULL REFERENCES meetings (id),
    -- 1 offer, 2 answer, 3 ice-candidate, 4 join, 5 leave, 6 user-joined, 7 user-left,
    -- 8 chat, 10 media-control, 13 error
    message_type SMALLINT NOT NULL,
    payload      TEXT NOT NULL,
    status       SMALLINT NOT NULL DEFAULT 1,  -- 1 pending, 2 sent, 3 delivered, 4 failed
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_signaling_messages_meeting ON signaling_messages (meeting_id, created_at);
CREATE INDEX idx_signaling_messages_from ON signaling_messages (from_user_id);
CREATE INDEX idx_signaling_messages_session ON signaling_messages (session_id);
CREATE INDEX idx_signaling_messages_type ON signaling_messages (message_type);

CREATE TABLE ai_tasks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      VARCHAR(64) NOT NULL UNIQUE,
    task_type    VARCHAR(64) NOT NULL,          -- transcription, summary, ...
    meeting_id   VARCHAR(128) REFERENCES meetings (id),
    recording_id VARCHAR(64),
    status       SMALLINT NOT NULL DEFAULT 1,   -- 1 pending, 2 running, 3 done, 4 failed
    priority     SMALLINT NOT NULL DEFAULT 5,
    input        TEXT NOT NULL DEFAULT '{}',
    output       TEXT,
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    completed_at TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_ai_tasks_type ON ai_tasks (task_type);
CREATE INDEX idx_ai_tasks_status ON ai_tasks (status);
CREATE INDEX idx_ai_tasks_priority ON ai_tasks (priority);

CREATE TABLE system_configs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    config_key   VARCHAR(128) NOT NULL UNIQUE,
    config_value TEXT NOT NULL,
    value_type   VARCHAR(16) NOT NULL DEFAULT 'string',  -- string, int, bool, json
    description  TEXT,
    is_public    INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE operation_logs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       BIGINT REFERENCES users (id),
    operation     VARCHAR(64) NOT NULL,
    resource_type VARCHAR(64) NOT NULL,
    resource_id   VARCHAR(128) NOT NULL,
    details       TEXT NOT NULL DEFAULT '{}',
    ip_address    VARCHAR(64),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_operation_logs_user ON operation_logs (user_id);
CREATE INDEX idx_operation_logs_resource ON operation_logs (resource_type, resource_id);
CREATE INDEX idx_operation_logs_created ON operation_logs (created_at);

CREATE TRIGGER users_updated_at AFTER UPDATE ON users FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE users SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER meetings_updated_at AFTER UPDATE ON meetings FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE meetings SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER meeting_participants_updated_at AFTER UPDATE ON meeting_participants FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE meeting_participants SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER meeting_rooms_updated_at AFTER UPDATE ON meeting_rooms FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE meeting_rooms SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER media_streams_updated_at AFTER UPDATE ON media_streams FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE media_streams SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER meeting_recordings_updated_at AFTER UPDATE ON meeting_recordings FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE meeting_recordings SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER signaling_sessions_updated_at AFTER UPDATE ON signaling_sessions FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE signaling_sessions SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER signaling_messages_updated_at AFTER UPDATE ON signaling_messages FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE signaling_messages SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER ai_tasks_updated_at AFTER UPDATE ON ai_tasks FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE ai_tasks SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;
CREATE TRIGGER system_configs_updated_at AFTER UPDATE ON system_configs FOR EACH ROW WHEN NEW.updated_at = OLD.updated_at
BEGIN UPDATE system_configs SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id; END;

CREATE VIEW active_meetings_stats AS
SELECT m.id AS meeting_id,
       m.title,
       m.creator_id,
       m.start_time,
       (SELECT COUNT(*) FROM meeting_participants p WHERE p.meeting_id = m.id AND p.status = 1) AS participants_now,
       (SELECT COUNT(*) FROM meeting_participants p WHERE p.meeting_id = m.id) AS participants_total,
       (SELECT COUNT(*) FROM meeting_rooms r WHERE r.meeting_id = m.id AND r.status = 1) AS active_rooms,
       (SELECT COUNT(*) FROM media_streams s JOIN meeting_rooms r ON r.room_id = s.room_id
         WHERE r.meeting_id = m.id AND s.status = 1) AS active_streams,
       (SELECT COUNT(*) FROM meeting_recordings c WHERE c.meeting_id = m.id AND c.status = 1) AS recordings_running
FROM meetings m
WHERE m.status = 2 AND m.deleted_at IS NULL;

INSERT INTO system_configs (config_key, config_value, value_type, description, is_public) VALUES
    ('meeting.max_participants', '100', 'int', 'Participants per meeting', 1),
    ('room.ttl_days', '1', 'int', 'Lifetime of room:{meeting_id} in Redis without a refresh, days', 0),
    ('recording.format', 'mp4', 'string', 'Default recording format (mp4 or hls)', 1),
    ('recording.segment_duration', '6', 'int', 'HLS segment duration, seconds', 0),
    ('recording.max_duration', '14400', 'int', 'Hard limit of one recording, seconds', 1),
    ('storage.bucket', 'meeting-system', 'string', 'Object storage bucket', 0),
    ('database.max_open_conns', '100', 'int', 'PostgreSQL pool: most open connections', 0),
    ('database.max_idle_conns', '10', 'int', 'PostgreSQL pool: idle connections kept', 0),
    ('database.conn_max_lifetime', '3600', 'int', 'PostgreSQL pool: connection lifetime, seconds', 0),
    ('kafka.topic_prefix', 'meeting', 'string', 'Prefix of the Kafka topics', 0);
