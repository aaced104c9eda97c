//! The backends against real services: rows in SQLite and PostgreSQL after a scripted
//! session, its events in Kafka, tasks with retries, dead letters and a restart, two nodes
//! sharing one Redis, objects in S3 and in the local folder, and each service taken away
//! mid-session.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::rtc_client::{self, Client};
use common::services::{self, consume, consume_from, produce, spawn_server, Broker, Proxy, Redis, TempDir, S3};
use common::{answer_offers, http_json, status_before_body, Signal, TestServer};
use recorder::objects::ObjectStore;
use serde_json::{json, Value};
use signaling::state::StateStore;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use switchboard::backends::state::redis::RedisState;

// ---------------------------------------------------------------------------------------
// Helpers

/// Waits until the server's journal has written everything queued.
async fn journal_drained(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let [queued, written] = server.metrics(["switchboard_db_records_queued", "switchboard_db_records_written_total"]).await;
        if queued == 0.0 && written > 0.0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "journal still has {queued} records queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pool on the server's database.
async fn database(server: &TestServer) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new().max_connections(1).connect(&server.config.database.url).await.expect("database reachable")
}

/// Rows of `sql` as strings (every column cast to text by the query).
async fn rows(pool: &AnyPool, sql: &str, bind: &str) -> Vec<Vec<String>> {
    use sqlx::Row;
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).bind(bind).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter().map(|row| (0..row.len()).map(|i| row.try_get::<String, _>(i).unwrap_or_else(|_| "NULL".into())).collect()).collect()
}

/// Joins `meeting`; returns the connection, the participant id and the session id.
async fn join(server: &TestServer, meeting: &str, identity: &str, grants: &[&str]) -> (Signal, String, String) {
    let mut signal = server.connect().await;
    let joined = signal.join(&server.token(meeting, identity, grants)).await;
    let participant = joined["participant"]["participant_id"].as_str().expect("participant id").to_owned();
    let session = joined["session_id"].as_str().expect("session id").to_owned();
    (signal, participant, session)
}

/// What the scripted session produced, to check the records against.
struct Script {
    meeting: String,
    alice_session: String,
    bob_session: String,
    alice_id: String,
    bob_id: String,
    bob_offers_answered: usize,
    chat_ids: Vec<String>,
}

/// Alice (the host) and Bob meet: Alice publishes Opus and VP8, Bob subscribes, both chat,
/// Alice mutes her camera, Bob leaves, Alice leaves.
async fn scripted_session(server: &TestServer, meeting: &str) -> Script {
    let (mut alice, alice_id, alice_session) = join(server, meeting, "alice", &["publish", "publish_data"]).await;
    let (mut bob, bob_id, bob_session) = join(server, meeting, "bob", &["subscribe", "publish_data"]).await;
    let bob_rtc = rtc_client::new_client().await;

    let opus = rtc_client::local_track("alice", "alice-mic", "audio/opus");
    let vp8 = rtc_client::local_track("alice", "alice-cam", "video/VP8");
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[opus, vp8]).await;
    let senders = [
        tokio::spawn(rtc_client::send_packets(out[0].clone(), 100, 960)),
        tokio::spawn(rtc_client::send_packets(out[1].clone(), 100, 3000)),
    ];
    let mut tracks = HashMap::new();
    for _ in 0..2 {
        let track = alice.expect("track_published").await["track"].clone();
        tracks.insert(track["kind"].as_str().expect("kind").to_owned(), track["track_id"].as_str().expect("id").to_owned());
    }
    for _ in 0..2 {
        bob.expect("track_published").await;
    }
    let bob_offers_answered = answer_offers(&mut bob, &bob_rtc, Duration::from_millis(1500)).await;
    for sender in senders {
        sender.await.expect("sender");
    }

    let mut chat_ids = Vec::new();
    for (who, text) in [(&mut alice, "hello bob"), (&mut bob, "hi alice")] {
        let ack = who.request(json!({"type": "chat", "text": text})).await;
        chat_ids.push(ack["message_id"].as_str().expect("chat id").to_owned());
    }
    let ack = alice.request(json!({"type": "mute", "track_id": tracks["video"], "muted": true})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(bob.request(json!({"type": "leave"})).await["type"], "ack");
    bob.closed().await;
    assert_eq!(alice.expect("participant_left").await["participant_id"], bob_id.as_str());
    assert_eq!(alice.request(json!({"type": "leave"})).await["type"], "ack");
    alice.closed().await;
    Script { meeting: meeting.to_owned(), alice_session, bob_session, alice_id, bob_id, bob_offers_answered, chat_ids }
}

/// Checks every table the scripted session wrote to.
async fn assert_rows_match_script(server: &TestServer, script: &Script) {
    journal_drained(server).await;
    let pool = database(server).await;
    let m = script.meeting.as_str();

    let sessions = rows(
        &pool,
        "SELECT s.session_id, u.username, s.peer_id, CAST(s.status AS TEXT),
                CASE WHEN s.disconnected_at IS NULL THEN 'open' ELSE 'closed' END,
                CASE WHEN s.last_ping_at IS NULL THEN 'never' ELSE 'pinged' END
         FROM signaling_sessions s JOIN users u ON u.id = s.user_id WHERE s.meeting_id = $1 ORDER BY u.username",
        m,
    )
    .await;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0][1..], ["alice", script.alice_id.as_str(), "6", "closed", "pinged"]);
    assert_eq!(sessions[1][1..], ["bob", script.bob_id.as_str(), "6", "closed", "pinged"]);
    assert_eq!([&sessions[0][0], &sessions[1][0]], [&script.alice_session, &script.bob_session]);

    let messages = |session: String| {
        let pool = pool.clone();
        async move {
            rows(
                &pool,
                "SELECT CAST(m.message_type AS TEXT), COALESCE(f.username, '-'), COALESCE(t.username, '-'), CAST(m.status AS TEXT), m.message_id
                 FROM signaling_messages m LEFT JOIN users f ON f.id = m.from_user_id LEFT JOIN users t ON t.id = m.to_user_id
                 WHERE m.session_id = $1 ORDER BY m.id",
                &session,
            )
            .await
        }
    };
    let alice_messages = messages(script.alice_session.clone()).await;
    let summary: Vec<[&str; 3]> = alice_messages.iter().map(|r| [r[0].as_str(), r[1].as_str(), r[2].as_str()]).collect();
    assert_eq!(
        summary,
        [["4", "alice", "-"], ["1", "alice", "-"], ["2", "-", "alice"], ["8", "alice", "-"], ["10", "alice", "-"], ["5", "alice", "-"]],
        "Alice: join, her offer, the server's answer, chat, mute, leave"
    );
    assert_eq!(alice_messages[3][4], script.chat_ids[0], "the chat row has the id the client was given");
    assert_eq!(alice_messages[3][3], "2", "chat status: sent");

    let bob_messages = messages(script.bob_session.clone()).await;
    let mut expected = vec![["4", "bob", "-"]];
    for _ in 0..script.bob_offers_answered {
        expected.extend([["1", "-", "bob"], ["2", "bob", "-"]]);
    }
    expected.extend([["8", "bob", "-"], ["5", "bob", "-"]]);
    let summary: Vec<[&str; 3]> = bob_messages.iter().map(|r| [r[0].as_str(), r[1].as_str(), r[2].as_str()]).collect();
    assert_eq!(summary, expected, "Bob: join, server offers and his answers, chat, leave");
    assert_eq!(bob_messages[bob_messages.len() - 2][4], script.chat_ids[1]);

    let streams = rows(
        &pool,
        "SELECT CAST(s.stream_type AS TEXT), s.codec, CAST(s.status AS TEXT), CASE WHEN s.ended_at IS NULL THEN 'open' ELSE 'ended' END, u.username
         FROM media_streams s JOIN users u ON u.id = s.user_id JOIN meeting_rooms r ON r.room_id = s.room_id
         WHERE r.meeting_id = $1 ORDER BY s.stream_type",
        m,
    )
    .await;
    assert_eq!(streams, [["1", "audio/opus", "3", "ended", "alice"], ["2", "video/VP8", "3", "ended", "alice"]]);

    let participants = rows(
        &pool,
        "SELECT u.username, CAST(p.role AS TEXT), CAST(p.status AS TEXT), CASE WHEN p.left_at IS NULL THEN 'here' ELSE 'left' END
         FROM meeting_participants p JOIN users u ON u.id = p.user_id WHERE p.meeting_id = $1 ORDER BY u.username",
        m,
    )
    .await;
    assert_eq!(participants, [["alice", "1", "2", "left"], ["bob", "3", "2", "left"]], "host and participant, both left");

    let rooms = rows(
        &pool,
        "SELECT sfu_node, CAST(status AS TEXT), CAST(participant_count AS TEXT), CASE WHEN closed_at IS NULL THEN 'open' ELSE 'closed' END
         FROM meeting_rooms WHERE meeting_id = $1",
        m,
    )
    .await;
    assert_eq!(rooms, [[server.node.id.as_str(), "3", "0", "closed"]]);

    let meetings = rows(
        &pool,
        "SELECT CAST(m.status AS TEXT), u.username, CASE WHEN m.end_time IS NULL THEN 'open' ELSE 'ended' END
         FROM meetings m JOIN users u ON u.id = m.creator_id WHERE m.id = $1",
        m,
    )
    .await;
    assert_eq!(meetings, [["3", "alice", "ended"]], "the meeting ended with its last room");
    let active = rows(&pool, "SELECT meeting_id FROM active_meetings_stats WHERE meeting_id = $1", m).await;
    assert!(active.is_empty(), "an ended meeting is not active: {active:?}");
}

// ---------------------------------------------------------------------------------------
// Persistence

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_rows_are_exactly_what_happened() {
    let server = TestServer::start_with(Vec::new(), None).await;
    let script = scripted_session(&server, "standup-sqlite").await;
    assert_rows_match_script(&server, &script).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_are_exactly_what_happened_and_kafka_has_the_events_in_order() {
    let real = services::RealServices::start().await;
    let overrides = real.overrides();
    let server = TestServer::start_with(overrides, Some(real)).await;
    let script = scripted_session(&server, "standup-pg").await;
    assert_rows_match_script(&server, &script).await;

    let prefix = &server.services.as_ref().expect("services").topic_prefix;
    let events = consume(&format!("{prefix}.system_events"), |e| e["type"] == "room_closed").await;
    let events: Vec<Value> = events.into_iter().filter(|e| e["meeting_id"] == "standup-pg").collect();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            let who = e["identity"].as_str().map(|i| format!(":{i}")).unwrap_or_default();
            format!("{}{who}", e["type"].as_str().unwrap_or("?"))
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "room_created",
            "participant_joined:alice",
            "participant_joined:bob",
            "track_published",
            "track_published",
            "participant_left:bob",
            "track_unpublished",
            "track_unpublished",
            "participant_left:alice",
            "room_closed"
        ],
        "{events:#?}"
    );
    for event in &events {
        assert_eq!(event["schema"], 1);
        assert_eq!(event["node"], server.node.id.as_str());
    }
    assert_eq!(events[3]["participant_id"], script.alice_id.as_str());
}

// ---------------------------------------------------------------------------------------
// Tasks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_once_retry_and_land_in_the_dead_letter_topic() {
    let real = services::RealServices::start().await;
    let overrides = real.overrides();
    let server = TestServer::start_with(overrides, Some(real)).await;
    let prefix = server.services.as_ref().expect("services").topic_prefix.clone();
    let tasks = format!("{prefix}.tasks");

    // A task that works: the participant named is muted by the server.
    let (mut alice, _, _) = join(&server, "tasks", "alice", &["publish"]).await;
    let opus = rtc_client::local_track("alice", "alice-mic", "audio/opus");
    let (_rtc, out) = rtc_client::publish(&mut alice, &[opus]).await;
    tokio::spawn(rtc_client::send_packets(out[0].clone(), 50, 960));
    let track = alice.expect("track_published").await["track"]["track_id"].clone();
    produce(&tasks, r#"{"task_id":"mute-1","type":"mute_participant","meeting_id":"tasks","identity":"alice"}"#).await;
    let muted = alice.expect("track_muted").await;
    assert_eq!((muted["track_id"].clone(), muted["muted"].clone()), (track, json!(true)));

    // Tasks that cannot work: retried, then dead-lettered with their error; a message that is
    // no task at all goes there at once; work for other services is left alone.
    produce(&tasks, r#"{"task_id":"other-1","type":"transcribe","recording_id":"r1"}"#).await;
    produce(&tasks, r#"{"task_id":"close-1","type":"close_room","meeting_id":"nowhere"}"#).await;
    produce(&tasks, "not a task").await;
    let letters = consume(&format!("{prefix}.tasks.dlq"), |l| l["task"] == "not a task").await;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    assert_eq!(letters[0]["task"]["task_id"], "close-1");
    assert_eq!(letters[0]["attempts"], 3);
    assert_eq!(letters[0]["error"], "room `nowhere` is not open on this node");
    assert_eq!(letters[1]["attempts"], 0);
    assert!(letters[1]["error"].as_str().unwrap_or_default().starts_with("malformed task"), "{}", letters[1]);

    // The mute ran once and was recorded under its task id.
    let pool = database(&server).await;
    let done = rows(&pool, "SELECT operation FROM operation_logs WHERE resource_type = 'task' AND resource_id = $1", "mute-1").await;
    assert_eq!(done, [["mute_participant"]]);
}

/// Waits until `log` contains `text`.
async fn log_shows(log: &std::path::Path, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let contents = std::fs::read_to_string(log).unwrap_or_default();
        if contents.contains(text) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "log never showed {text:?}:\n{contents}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_interrupted_by_a_crash_succeeds_exactly_once_after_the_restart() {
    let real = services::RealServices::start().await;
    let dir = TempDir::new();
    let http_port = services::free_port();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, sb_config::DEFAULT_YAML).expect("config written");
    let mut env: Vec<(String, String)> = real.overrides();
    env.extend([
        ("SWITCHBOARD__HTTP__LISTEN".into(), format!("127.0.0.1:{http_port}")),
        ("SWITCHBOARD__MEDIA__PORT_BASE".into(), "0".into()),
        ("SWITCHBOARD__MEDIA__TCP_PORT".into(), "0".into()),
        ("SWITCHBOARD__MEDIA__WORKERS".into(), "1".into()),
        ("SWITCHBOARD__OBJECTS__LOCAL_DIR".into(), dir.path().join("objects").display().to_string()),
        ("SWITCHBOARD__NODE__ID".into(), "crashy".into()),
    ]);
    let tasks = format!("{}.tasks", real.topic_prefix);
    let mut first_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    first_env.push(("SWITCHBOARD_FAILPOINT", "task_done_before_commit"));
    let first_log = dir.path().join("first.log");
    let mut first = spawn_server(&config_path, &first_env, &first_log);
    log_shows(&first_log, "switchboard listening").await;

    // Alice is in the room the task closes.
    let http: std::net::SocketAddr = format!("127.0.0.1:{http_port}").parse().expect("address");
    let authority = signaling::auth::TokenAuthority::new(
        [("dev".to_owned(), sb_config::DEVELOPMENT_SECRET.to_owned())].into_iter().collect(),
        "dev".to_owned(),
    );
    let token = authority.issue("doomed", "alice", None, signaling::auth::Grants::participant(), 600).expect("token");
    let mut alice = Signal::connect(http).await;
    alice.join(&token).await;
    produce(&tasks, r#"{"task_id":"close-once","type":"close_room","meeting_id":"doomed","reason":"the meeting is over"}"#).await;
    assert_eq!(alice.expect("room_closed").await["reason"], "the meeting is over");
    alice.closed().await;
    // The node did the task, recorded it, and died before committing its offset.
    let status = tokio::task::spawn_blocking(move || first.wait()).await.expect("wait").expect("exit status");
    assert_eq!(status.code(), Some(86), "the failpoint ended the process");

    // After the restart the task is delivered again, recognised as done, and committed.
    let second_env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let second_log = dir.path().join("second.log");
    let mut second = spawn_server(&config_path, &second_env, &second_log);
    log_shows(&second_log, "task already done; redelivery skipped").await;
    let _ = second.kill();
    let _ = second.wait();

    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new().max_connections(1).connect(&real.postgres_url).await.expect("database");
    let done = rows(&pool, "SELECT operation FROM operation_logs WHERE resource_type = 'task' AND resource_id = $1", "close-once").await;
    assert_eq!(done, [["close_room"]], "done exactly once");
}

// ---------------------------------------------------------------------------------------
// Redis: nodes sharing state

/// Overrides for a server on `redis` with quick heartbeats, other backends embedded.
fn on_redis(redis: &Redis, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("SWITCHBOARD__STATE__BACKEND".to_owned(), "redis".to_owned()),
        ("SWITCHBOARD__STATE__REDIS_URL".to_owned(), redis.url()),
        ("SWITCHBOARD__STATE__HEARTBEAT_SECS".to_owned(), "1".to_owned()),
        ("SWITCHBOARD__STATE__SESSION_TTL_SECS".to_owned(), "3".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Sends `count` pings; returns how many were answered rather than rate limited (refused
/// frames are answered by an error without the request id, the frame being unread).
async fn pings_answered(signal: &mut Signal, count: usize) -> usize {
    for id in 0..count {
        signal.send(json!({"type": "ping", "id": id})).await;
    }
    let (mut answered, mut refused) = (0, 0);
    while answered + refused < count {
        let reply = signal.next_message_or_close().await.expect("connection open");
        match reply["type"].as_str() {
            Some("pong") => answered += 1,
            Some("error") => {
                assert_eq!(reply["code"], "rate_limited", "{reply}");
                refused += 1;
            }
            _ => {}
        }
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_share_room_ownership_and_the_rate_limit_through_redis() {
    let redis = Redis::start();
    let limits = [("SWITCHBOARD__LIMITS__MESSAGES_PER_SECOND", "1"), ("SWITCHBOARD__LIMITS__MESSAGE_BURST", "10")];
    // Node A is a process of its own; node B runs in this test.
    let dir = TempDir::new();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, sb_config::DEFAULT_YAML).expect("config written");
    let a_port = services::free_port();
    let mut a_env = on_redis(&redis, &limits);
    a_env.extend([
        ("SWITCHBOARD__HTTP__LISTEN".to_owned(), format!("127.0.0.1:{a_port}")),
        ("SWITCHBOARD__NODE__ID".to_owned(), "node-a".to_owned()),
        ("SWITCHBOARD__MEDIA__PORT_BASE".to_owned(), "0".to_owned()),
        ("SWITCHBOARD__MEDIA__TCP_PORT".to_owned(), "0".to_owned()),
        ("SWITCHBOARD__MEDIA__WORKERS".to_owned(), "1".to_owned()),
        ("SWITCHBOARD__DATABASE__URL".to_owned(), format!("sqlite://{}/a.db?mode=rwc", dir.path().display())),
        ("SWITCHBOARD__OBJECTS__LOCAL_DIR".to_owned(), dir.path().join("objects").display().to_string()),
    ]);
    let a_env: Vec<(&str, &str)> = a_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a_log = dir.path().join("a.log");
    let mut a = spawn_server(&config_path, &a_env, &a_log);
    log_shows(&a_log, "switchboard listening").await;
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{a_port}").parse().expect("address");
    let a_node = signaling::state::NodeInfo { id: "node-a".into(), url: format!("http://{a_addr}") };
    let b = TestServer::start_with(on_redis(&redis, &limits), None).await;
    let store = RedisState::connect(&redis.url()).expect("redis client");
    let join_at = |addr, room: &str, identity: &str| {
        let token = b.token(room, identity, &["publish", "subscribe"]);
        async move {
            let mut signal = Signal::connect(addr).await;
            let reply = signal.request(json!({"type": "join", "token": token})).await;
            (signal, reply)
        }
    };

    // A room opened on A is owned by A, as B sees it: B sends its joiners there.
    let (_alice, joined) = join_at(a_addr, "shared", "alice").await;
    assert_eq!(joined["type"], "joined", "{joined}");
    let entry = store.room("shared").await.expect("redis answers").expect("room:shared exists");
    assert_eq!(entry.owner, a_node);
    assert_eq!(entry.participants.values().collect::<Vec<_>>(), ["alice"]);
    let (_, redirect) = join_at(b.http, "shared", "bob").await;
    assert_eq!(redirect["type"], "redirect", "{redirect}");
    assert_eq!((redirect["node"].as_str(), redirect["url"].as_str()), (Some("node-a"), Some(a_node.url.as_str())));
    let (_bob, joined) = join_at(a_addr, "shared", "bob").await;
    assert_eq!(joined["participants"][0]["identity"], "alice", "{joined}");

    // Carol's messages draw on one bucket, whichever node she talks to.
    let (mut on_a, _) = join_at(a_addr, "carol-a", "carol").await;
    let (mut on_b, _) = join_at(b.http, "carol-b", "carol").await;
    let first = pings_answered(&mut on_a, 12).await;
    let second = pings_answered(&mut on_b, 12).await;
    assert!((10..=12).contains(&first), "the first node spent the burst: {first}");
    assert!(second <= 2, "the second node found the bucket empty, not a fresh one: {second}");

    // A dies: its rooms stay its own until its node entry expires, then B takes them over.
    a.kill().expect("kill -9");
    a.wait().expect("reaped");
    let (_, still) = join_at(b.http, "shared", "dave").await;
    assert_eq!(still["type"], "redirect", "A's entry has not expired yet: {still}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (_dave, joined) = join_at(b.http, "shared", "dave").await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(store.room("shared").await.expect("redis answers").expect("room").owner, b.node);
}

/// Not a test of its own: the child process of the lock test. Takes a lock and waits to be
/// killed.
#[tokio::test]
#[ignore = "run by lock_of_a_killed_process_expires as its child process"]
async fn lock_holder() {
    let Ok(url) = std::env::var("SB_LOCK_HOLDER_REDIS") else { return };
    let store = RedisState::connect(&url).expect("redis client");
    let token = store.lock("recording:m1", Duration::from_millis(1500)).await.expect("redis answers");
    assert!(token.is_some(), "the lock was free");
    println!("LOCKED");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_of_a_killed_process_expires() {
    use std::io::BufRead;
    let redis = Redis::start();
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "lock_holder", "--ignored", "--nocapture", "--test-threads", "1"])
        .env("SB_LOCK_HOLDER_REDIS", redis.url())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("stdout");
    let locked =
        tokio::task::spawn_blocking(move || std::io::BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("LOCKED")));
    assert!(locked.await.expect("reader"), "the child took the lock");
    child.kill().expect("kill -9");
    child.wait().expect("reaped");

    let store = RedisState::connect(&redis.url()).expect("redis client");
    assert_eq!(store.lock("recording:m1", Duration::from_secs(5)).await.expect("redis answers"), None, "still held by the dead process");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let token = store.lock("recording:m1", Duration::from_secs(5)).await.expect("redis answers").expect("expired, free again");
    assert!(!store.unlock("recording:m1", "someone else's token").await.expect("redis answers"), "only the holder releases");
    assert!(store.unlock("recording:m1", &token).await.expect("redis answers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_rebuilt_from_the_nodes_memory_and_media_never_stops() {
    let redis = Redis::start();
    let server = TestServer::start_with(on_redis(&redis, &[]), None).await;
    let store = RedisState::connect(&redis.url()).expect("redis client");
    let (mut alice, _, alice_session) = join(&server, "rebuild", "alice", &["publish", "publish_data"]).await;
    let (mut bob, _, _) = join(&server, "rebuild", "bob", &["subscribe"]).await;
    let mut bob_rtc = rtc_client::new_client().await;
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[rtc_client::local_track("alice", "alice-cam", "video/VP8")]).await;
    // 1600 packets 5 ms apart: eight seconds of media across the outage.
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), 1600, 3000));
    bob.expect("track_published").await;
    answer_offers(&mut bob, &bob_rtc, Duration::from_millis(800)).await;
    bob_rtc.wait_connected().await;
    assert!(store.session(&alice_session).await.expect("redis answers").is_some());

    redis.stop();
    let outage = std::time::Instant::now();
    let ack = alice.request(json!({"type": "chat", "text": "redis is gone"})).await;
    assert_eq!(ack["type"], "ack", "signaling goes on without Redis: {ack}");
    let mut during = 0;
    while outage.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), bob_rtc.received.recv()).await {
            during += 1;
        }
    }
    assert!(during > 20, "media flowed during the outage: {during} packets");
    assert_eq!(server.metric("switchboard_state_store_unreachable").await, 1.0);

    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let session = store.session(&alice_session).await.ok().flatten();
        let room = store.room("rebuild").await.ok().flatten();
        if let (Some(session), Some(room)) = (session, room) {
            assert_eq!(session.room, "rebuild");
            assert_eq!(room.owner, server.node);
            assert_eq!(room.participants.len(), 2);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Redis was not rebuilt");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.metric("switchboard_state_store_unreachable").await, 0.0);
    sender.abort();
}

// ---------------------------------------------------------------------------------------
// Objects

/// A plain HTTP GET of a URL on this machine: status and body.
async fn http_get(url: &str) -> (u16, Vec<u8>) {
    http_get_with(url, "").await
}

/// A GET whose request is sent, its response left unread: the connection.
async fn http_get_unread(url: &str, headers: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("path"));
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");
    stream
}

/// [`http_get`] with more header lines (each ending in CRLF).
async fn http_get_with(url: &str, headers: &str) -> (u16, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut stream = http_get_unread(url, headers).await;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response read");
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("headers end") + 4;
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let mut body = response[split..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

/// Put, get, list, multipart and presigned download against one store.
async fn exercise_object_store(store: &dyn recorder::objects::ObjectStore) {
    use recorder::objects::{keys, ObjectError};
    let small = keys::recording("m1", "r1", "log");
    store.put(&small, bytes::Bytes::from_static(b"started\n"), "text/plain").await.expect("put");
    assert_eq!(&store.get(&small).await.expect("get")[..], b"started\n");
    assert!(matches!(store.get(&keys::recording("m1", "missing", "log")).await, Err(ObjectError::NotFound(_))));
    assert!(matches!(store.put("../escape", bytes::Bytes::new(), "text/plain").await, Err(ObjectError::InvalidKey(..))));

    // Multipart: a 5 MiB part and a small last one, visible only once completed.
    let big = keys::recording("m1", "r1", "mp4");
    let first: Vec<u8> = (0..recorder::objects::MIN_PART_BYTES).map(|i| (i % 251) as u8).collect();
    let mut upload = store.start_upload(&big, "video/mp4").await.expect("upload starts");
    upload.put_part(bytes::Bytes::from(first.clone())).await.expect("part 1");
    // Taken up again by its id (as after a restart), with the part it has.
    let id = upload.id().to_owned();
    drop(upload);
    let mut upload = store.resume_upload(&big, &id).await.expect("upload taken up again");
    upload.put_part(bytes::Bytes::from_static(b"tail")).await.expect("part 2");
    assert!(matches!(store.get(&big).await, Err(ObjectError::NotFound(_))), "not visible before completion");
    assert_eq!(upload.complete().await.expect("complete"), first.len() as u64 + 4);
    let whole = store.get(&big).await.expect("get assembled");
    assert_eq!(whole.len(), first.len() + 4);
    assert!(whole.starts_with(&first) && whole.ends_with(b"tail"));
    let mut aborted = store.start_upload(&keys::temp("aborted"), "application/octet-stream").await.expect("upload");
    aborted.abort().await.expect("abort");

    store.put(&keys::upload("u-1", "png"), bytes::Bytes::from_static(b"png"), "image/png").await.expect("upload put");
    let listed: Vec<String> = store.list("recordings/m1/").await.expect("list").into_iter().map(|o| o.key).collect();
    assert_eq!(listed, [small.clone(), big.clone()], "sorted by key");

    // A presigned URL downloads without credentials; a tampered one does not.
    let url = store.presign_get(&big, Duration::from_secs(60)).await.expect("presign");
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 200, "{url}");
    assert_eq!(body.len(), whole.len());
    let tampered = url.replace("r1.mp4", "r1.log");
    assert_eq!(http_get(&tampered).await.0, 403, "{tampered}");

    store.delete(&small).await.expect("delete");
    store.delete(&small).await.expect("deleting a missing object succeeds");
    assert!(matches!(store.get(&small).await, Err(ObjectError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_in_s3_put_get_multipart_presigned() {
    use switchboard::backends::objects::s3::{S3Objects, S3Settings};
    let s3 = S3::shared();
    let store = S3Objects::new(&S3Settings {
        endpoint: s3.endpoint.clone(),
        region: "us-east-1".into(),
        bucket: services::unique("bucket-"),
        access_key: services::S3_ACCESS_KEY.into(),
        secret_key: services::S3_SECRET_KEY.into(),
        path_style: true,
    });
    exercise_object_store(&store).await;
}

/// The server's local object store, signing its links with the key the server keeps in the
/// database, as the server does.
async fn local_store(server: &TestServer) -> switchboard::backends::objects::local::LocalObjects {
    let pool = database(server).await;
    let key = rows(&pool, "SELECT config_value FROM system_configs WHERE config_key = $1", "objects.url_signing_key").await;
    switchboard::backends::objects::local::LocalObjects::new(
        server.dir.path().join("objects"),
        server.node.url.clone(),
        switchboard::backends::objects::local::UrlSigner::new(key[0][0].as_bytes()),
    )
    .expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_in_the_local_folder_put_get_multipart_presigned() {
    let server = TestServer::start_with(Vec::new(), None).await;
    let store = local_store(&server).await;
    exercise_object_store(&store).await;
}

/// The peak resident memory of this process since it was last reset, bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("kB") * 1024
}

/// Downloads of the local store stream from the file: ranges of a 96 MiB object cost the
/// server next to no memory (it read the whole object for each before), and at most
/// `http.max_concurrent_downloads` are served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_stream_ranges_from_the_file_and_are_capped() {
    let server = TestServer::start_with(vec![("SWITCHBOARD__HTTP__MAX_CONCURRENT_DOWNLOADS".into(), "2".into())], None).await;
    let store = local_store(&server).await;
    let size = 96 << 20;
    let pattern = |i: usize| (i % 251) as u8;
    let object = recorder::objects::keys::recording("dl", "big", "mp4");
    store.put(&object, (0..size).map(pattern).collect::<Vec<u8>>().into(), "video/mp4").await.expect("put");
    let url = store.presign_get(&object, Duration::from_secs(60)).await.expect("presign");

    // Resets the peak to what is resident now.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let before = peak_rss();
    for _ in 0..2 {
        let first = http_get_with(&url, "Range: bytes=0-0\r\n");
        let middle = http_get_with(&url, "Range: bytes=50000000-50000009\r\n");
        let (first, middle) = tokio::join!(first, middle);
        assert_eq!(first, (206, vec![pattern(0)]));
        assert_eq!(middle, (206, (50_000_000..50_000_010).map(pattern).collect::<Vec<u8>>()));
    }
    let grown = peak_rss().saturating_sub(before);
    // Reading the object whole for each took at least twice its size; other tests of this
    // binary running meanwhile take some too.
    assert!(grown < 64 << 20, "four ranges of a 96 MiB object took {} MiB", grown >> 20);
    let (status, body) = http_get(&url).await;
    assert!(status == 200 && body.len() == size && body.iter().enumerate().all(|(i, b)| *b == pattern(i)), "the whole object");

    // Two downloads that the clients stop reading hold both places; a third is refused
    // until one of them goes.
    let stalled = [http_get_unread(&url, "").await, http_get_unread(&url, "").await];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = http_get_with(&url, "Range: bytes=0-0\r\n").await;
    assert_eq!(status, 503, "past http.max_concurrent_downloads");
    drop(stalled);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = http_get_with(&url, "Range: bytes=0-0\r\n").await;
        if status == 206 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the places of the gone clients are given back ({status})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Faults: each service taken away mid-session

/// Counts packets arriving within `window`.
async fn packets_within(client: &mut Client, window: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + window;
    let mut count = 0;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, client.received.recv()).await {
        count += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_and_signaling_survive_each_service_going_away_and_nothing_is_lost() {
    let redis = Redis::start();
    let redis_proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().expect("addr"), None).await;
    let postgres_url = services::postgres_database().await;
    let (pg_base, pg_name) = postgres_url.rsplit_once('/').expect("database name");
    let pg_port: u16 = pg_base.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("postgres port");
    let pg_proxy = Proxy::start(format!("127.0.0.1:{pg_port}").parse().expect("addr"), None).await;
    let broker_port = services::free_port();
    let kafka_proxy = Proxy::start(format!("127.0.0.1:{broker_port}").parse().expect("addr"), None).await;
    let _broker = Broker::start_on(broker_port, Some(kafka_proxy.port()));
    let s3 = S3::shared();
    let s3_proxy = Proxy::start(format!("127.0.0.1:{}", s3.port).parse().expect("addr"), None).await;
    let prefix = services::unique("f");
    let mut overrides = services::ServiceAddresses {
        redis_url: format!("redis://{}", redis_proxy.addr),
        postgres_url: format!("postgres://postgres@{}/{pg_name}", pg_proxy.addr),
        brokers: kafka_proxy.addr.to_string(),
        topic_prefix: prefix.clone(),
        s3_endpoint: format!("http://{}", s3_proxy.addr),
        bucket: services::unique("b"),
    }
    .overrides();
    overrides.push(("SWITCHBOARD__STATE__HEARTBEAT_SECS".to_owned(), "1".to_owned()));
    let server = TestServer::start_with(overrides, None).await;

    let (mut alice, _, alice_session) = join(&server, "faults", "alice", &["publish", "publish_data"]).await;
    let (mut bob, _, bob_session) = join(&server, "faults", "bob", &["subscribe", "publish_data"]).await;
    let mut bob_rtc = rtc_client::new_client().await;
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[rtc_client::local_track("alice", "alice-cam", "video/VP8")]).await;
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), 6000, 3000));
    bob.expect("track_published").await;
    answer_offers(&mut bob, &bob_rtc, Duration::from_millis(800)).await;
    bob_rtc.wait_connected().await;

    let s3_store = switchboard::backends::objects::s3::S3Objects::new(&switchboard::backends::objects::s3::S3Settings {
        endpoint: format!("http://{}", s3_proxy.addr),
        region: "us-east-1".into(),
        bucket: services::unique("b"),
        access_key: services::S3_ACCESS_KEY.into(),
        secret_key: services::S3_SECRET_KEY.into(),
        path_style: true,
    });
    let mut chat_ids = Vec::new();
    for (service, proxy) in [("redis", &redis_proxy), ("postgres", &pg_proxy), ("kafka", &kafka_proxy), ("s3", &s3_proxy)] {
        proxy.cut();
        for (who, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
            let ack = who.request(json!({"type": "chat", "text": format!("{name} while {service} is away")})).await;
            assert_eq!(ack["type"], "ack", "chat while {service} is away: {ack}");
            chat_ids.push(ack["message_id"].as_str().expect("id").to_owned());
        }
        let packets = packets_within(&mut bob_rtc, Duration::from_secs(2)).await;
        assert!(packets > 50, "media flowed while {service} was away: {packets} packets");
        if service == "s3" {
            let put = s3_store.put("temp/probe", bytes::Bytes::from_static(b"x"), "text/plain").await;
            assert!(matches!(put, Err(recorder::objects::ObjectError::Unavailable(_))), "{put:?}");
        }
        if service == "postgres" {
            assert!(server.metric("switchboard_db_failed_writes_total").await > 0.0, "the journal noticed the outage");
        }
        proxy.restore();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s3_store.put("temp/probe", bytes::Bytes::from_static(b"x"), "text/plain").await.expect("S3 is back");
    assert_eq!(bob.request(json!({"type": "leave"})).await["type"], "ack");
    assert_eq!(alice.request(json!({"type": "leave"})).await["type"], "ack");
    sender.abort();

    // Nothing was lost: every chat message and both sessions are in PostgreSQL.
    journal_drained(&server).await;
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new().max_connections(1).connect(&postgres_url).await.expect("database");
    for id in &chat_ids {
        let found = rows(&pool, "SELECT CAST(message_type AS TEXT) FROM signaling_messages WHERE message_id = $1", id).await;
        assert_eq!(found, [["8"]], "chat {id} persisted");
    }
    for session in [&alice_session, &bob_session] {
        let found = rows(&pool, "SELECT CAST(status AS TEXT) FROM signaling_sessions WHERE session_id = $1", session).await;
        assert_eq!(found, [["6"]], "session {session} persisted and closed");
    }
    // And every event reached the broker once it was back.
    let events = consume_from(&kafka_proxy.addr.to_string(), &format!("{prefix}.system_events"), |e| e["type"] == "room_closed").await;
    assert_eq!(events.iter().filter(|e| e["type"] == "participant_joined").count(), 2);
    assert_eq!(server.metric("switchboard_events_dropped_total").await, 0.0);
}

// ---------------------------------------------------------------------------------------
// Schema

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_seed_schema_in_sqlite_and_postgres() {
    let dir = TempDir::new();
    let sqlite = format!("sqlite://{}/migrated.db?mode=rwc", dir.path().display());
    for (backend, url) in [("sqlite", sqlite), ("postgres", services::postgres_database().await)] {
        for _ in 0..2 {
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .arg("migrate")
                .env("SWITCHBOARD__DATABASE__BACKEND", backend)
                .env("SWITCHBOARD__DATABASE__URL", &url)
                .output()
                .expect("binary runs");
            assert!(output.status.success(), "{backend}: {}", String::from_utf8_lossy(&output.stderr));
        }
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("database");
        for table in [
            "users",
            "meetings",
            "meeting_participants",
            "meeting_rooms",
            "media_streams",
            "meeting_recordings",
            "signaling_sessions",
            "signaling_messages",
            "ai_tasks",
            "system_configs",
            "operation_logs",
            "active_meetings_stats",
        ] {
            let sql = format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table} WHERE $1 = $1");
            let count = rows(&pool, &sql, "x").await;
            assert_eq!(count.len(), 1, "{backend}: {table} exists");
        }
        // Soft delete where the seed schema has it (0002 added the last three).
        for table in ["users", "meetings", "meeting_recordings", "meeting_participants", "signaling_sessions", "signaling_messages"] {
            let sql = format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table} WHERE deleted_at IS NULL OR $1 = $1");
            assert_eq!(rows(&pool, &sql, "x").await.len(), 1, "{backend}: {table} has deleted_at");
        }
        let seeded = rows(&pool, "SELECT config_value FROM system_configs WHERE config_key = $1", "recording.segment_duration").await;
        assert_eq!(seeded, [["6"]], "{backend}: seeded with the seed's defaults");
        // updated_at follows updates.
        sqlx::query("INSERT INTO users (username) VALUES ('trigger-check')").execute(&pool).await.expect("insert");
        let before = rows(&pool, "SELECT CAST(updated_at AS TEXT) FROM users WHERE username = $1", "trigger-check").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        sqlx::query("UPDATE users SET nickname = 'x' WHERE username = 'trigger-check'").execute(&pool).await.expect("update");
        let after = rows(&pool, "SELECT CAST(updated_at AS TEXT) FROM users WHERE username = $1", "trigger-check").await;
        assert_ne!(before, after, "{backend}: the updated_at trigger ran");
    }
}

/// Old signaling messages are deleted by age, a bounded batch at a time, the oldest first;
/// the recent ones stay. On both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_messages_past_their_retention_are_deleted_in_batches() {
    use signaling::journal::{DeliveryStatus, MessageType, Record, SignalingLog};
    use switchboard::backends::db::{Database, Dialect, PoolSettings};
    let dir = TempDir::new();
    let sqlite = format!("sqlite://{}/retention.db?mode=rwc", dir.path().display());
    let now_ms = signaling::stamps::unix_ms();
    let day_ms = 86_400_000;
    for (dialect, url) in [(Dialect::Sqlite, sqlite), (Dialect::Postgres, services::postgres_database().await)] {
        let pool = PoolSettings { max_open: 2, max_idle: 1, max_lifetime: Duration::from_secs(60) };
        let database = Database::open(dialect, &url, pool).await.expect("database");
        let message = |id: &str, at_ms: u64| Record::Message {
            message_id: format!("{id}-{dialect:?}"),
            session_id: "s".to_owned(),
            from: None,
            to: None,
            meeting_id: "retention".to_owned(),
            message_type: MessageType::Chat,
            payload: json!({"text": id}),
            status: DeliveryStatus::Sent,
            at_ms,
        };
        let at = now_ms - 40 * day_ms;
        let meeting = Record::ParticipantJoined { meeting_id: "retention".to_owned(), identity: "ada".to_owned(), name: None, at_ms: at };
        let batch = [
            meeting,
            message("a", now_ms - 40 * day_ms),
            message("b", now_ms - 35 * day_ms),
            message("c", now_ms - 31 * day_ms),
            message("d", now_ms - day_ms),
        ];
        database.write(&batch).await.expect("written");
        let kept = |pool: AnyPool| async move {
            let sql = "SELECT message_id FROM signaling_messages WHERE meeting_id = $1 ORDER BY id";
            rows(&pool, sql, "retention").await.into_iter().map(|row| row[0].chars().next().unwrap_or('?')).collect::<String>()
        };
        let read = AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("a reader");
        let cutoff = now_ms - 30 * day_ms;
        assert_eq!(database.purge_messages(cutoff, 2).await.expect("purged"), 2, "{dialect:?}: a batch of two");
        assert_eq!(kept(read.clone()).await, "cd", "{dialect:?}: the oldest went first");
        assert_eq!(database.purge_messages(cutoff, 2).await.expect("purged"), 1, "{dialect:?}: the last old one");
        assert_eq!(database.purge_messages(cutoff, 2).await.expect("purged"), 0, "{dialect:?}: nothing older is left");
        assert_eq!(kept(read).await, "d", "{dialect:?}: the recent one stays");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_links_are_signed_with_a_key_of_their_own_shared_through_the_database() {
    let dir = TempDir::new();
    let sqlite = format!("sqlite://{}/shared.db?mode=rwc", dir.path().display());
    for (backend, url) in [("sqlite", sqlite), ("postgres", services::postgres_database().await)] {
        let on = |url: &str| {
            vec![
                ("SWITCHBOARD__DATABASE__BACKEND".to_owned(), backend.to_owned()),
                ("SWITCHBOARD__DATABASE__URL".to_owned(), url.to_owned()),
            ]
        };
        let first = TestServer::start_with(on(&url), None).await;
        let second = TestServer::start_with(on(&url), None).await;
        let pool = database(&second).await;
        let keys = rows(&pool, "SELECT config_value FROM system_configs WHERE config_key = $1", "objects.url_signing_key").await;
        assert_eq!(keys.len(), 1, "{backend}: one key, made by the first node and read by the second");
        let key = &keys[0][0];
        assert!(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{backend}: 32 random bytes in hex: {key}");
        assert!(first.config.auth.keys.values().all(|secret| secret != key), "{backend}: not an access-token key");
    }
}

/// Invalid offers cost the database a short refusal each: the offer is recorded only once it
/// was applied, and the refusal names the fault, not the 50 KB of junk. A valid offer after
/// them is recorded whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_offers_are_not_recorded_and_their_refusals_do_not_echo_them() {
    let server = TestServer::start_with(Vec::new(), None).await;
    let (mut alice, _, session) = join(&server, "junk-offers", "alice", &["publish"]).await;
    let junk = format!("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na={}\r\n", "JUNK".repeat(12 * 1024));
    for _ in 0..20 {
        let reply = alice.request(json!({"type": "publish_offer", "sdp": junk})).await;
        assert_eq!(reply["code"], "invalid_sdp", "{}", &reply.to_string()[..200]);
        assert!(reply["message"].as_str().is_some_and(|m| m.len() < 120 && !m.contains("JUNK")), "{}", reply["message"]);
    }
    rtc_client::publish(&mut alice, &[rtc_client::local_track("alice", "alice-mic", "audio/opus")]).await;
    journal_drained(&server).await;
    let pool = database(&server).await;
    let recorded = rows(
        &pool,
        "SELECT CAST(message_type AS TEXT), CAST(LENGTH(CAST(payload AS TEXT)) AS TEXT) FROM signaling_messages WHERE session_id = $1 ORDER BY id",
        &session,
    )
    .await;
    let kinds: Vec<&str> = recorded.iter().map(|r| r[0].as_str()).collect();
    let mut expected = vec!["4"];
    expected.extend(["13"; 20]);
    expected.extend(["1", "2"]);
    assert_eq!(kinds, expected, "join, twenty refusals, then the one offer applied and its answer");
    let refusal_bytes: usize = recorded[1..21].iter().map(|r| r[1].parse::<usize>().expect("length")).sum();
    assert!(refusal_bytes < 20 * 200, "twenty refusals of 50 KB offers took {refusal_bytes} bytes");
    let offer_bytes: usize = recorded[21][1].parse().expect("length");
    assert!(offer_bytes > 500, "the applied offer is recorded whole ({offer_bytes} bytes)");
}

// ---------------------------------------------------------------------------------------
// Admin API// ---------------------------------------------------------------------------------------
// Admin API

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_close_rooms_and_mute_participants_over_http_and_it_is_logged() {
    let server = TestServer::start_with(Vec::new(), None).await;
    let (mut alice, _, _) = join(&server, "ops-room", "alice", &["publish"]).await;
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[rtc_client::local_track("alice", "alice-mic", "audio/opus")]).await;
    tokio::spawn(rtc_client::send_packets(out[0].clone(), 50, 960));
    let track = alice.expect("track_published").await["track"]["track_id"].clone();

    let admin = server.token("ops-room", "ops", &["admin"]);
    let path = "/api/rooms/ops-room/participants/alice/mute";
    assert_eq!(http_json(server.http, "POST", path, None, "").await.0, 401);
    assert_eq!(http_json(server.http, "POST", path, Some("not-a-token"), "").await.0, 401);
    assert_eq!(http_json(server.http, "POST", path, Some(&server.token("ops-room", "eve", &["publish"])), "").await.0, 403);
    assert_eq!(
        http_json(server.http, "POST", path, Some(&server.token("other", "ops", &["admin"])), "").await.0,
        403,
        "admin of another room"
    );
    assert_eq!(http_json(server.http, "POST", "/api/rooms/ops-room/participants/nobody/mute", Some(&admin), "").await.0, 404);

    let (status, body) = http_json(server.http, "POST", path, Some(&admin), "").await;
    assert_eq!((status, body), (200, json!({"sessions": 1})));
    let muted = alice.expect("track_muted").await;
    assert_eq!((muted["track_id"].clone(), muted["muted"].clone()), (track, json!(true)));

    // The token is checked before the body is read: a request without one that announces a
    // large body is refused at once, without waiting for the body.
    let close = "/api/rooms/ops-room/close";
    assert_eq!(status_before_body(server.http, "POST", close, None, 1 << 20).await, Some(401));
    assert_eq!(status_before_body(server.http, "POST", path, Some("not-a-token"), 1 << 20).await, Some(401));
    let long = format!(r#"{{"reason":"{}"}}"#, "x".repeat(5 * 1024));
    let (status, body) = http_json(server.http, "POST", close, Some(&admin), &long).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("body_too_large")), "bodies are capped at 4 KiB");
    assert_eq!(http_json(server.http, "POST", "/api/rooms/ops-room/close", Some(&admin), "{nope").await.0, 400);
    let (status, _) = http_json(server.http, "POST", "/api/rooms/ops-room/close", Some(&admin), r#"{"reason":"maintenance"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(alice.expect("room_closed").await["reason"], "maintenance");
    alice.closed().await;
    assert_eq!(http_json(server.http, "POST", "/api/rooms/ops-room/close", Some(&admin), "").await.0, 404, "the room is gone");

    journal_drained(&server).await;
    let pool = database(&server).await;
    let logged = rows(
        &pool,
        "SELECT o.operation, o.resource_type, o.resource_id, COALESCE(u.username, '-') FROM operation_logs o
         LEFT JOIN users u ON u.id = o.user_id WHERE o.resource_id LIKE $1 ORDER BY o.id",
        "ops-room%",
    )
    .await;
    assert_eq!(logged, [["mute_participant", "participant", "ops-room/alice", "ops"], ["close_room", "room", "ops-room", "ops"]]);
    let removed = rows(&pool, "SELECT CAST(p.status AS TEXT) FROM meeting_participants p WHERE p.meeting_id = $1", "ops-room").await;
    assert_eq!(removed, [["3"]], "Alice was removed, not left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_remove_participants_who_are_told_why_and_it_is_logged() {
    let server = TestServer::start_with(Vec::new(), None).await;
    let (mut alice, alice_id, _) = join(&server, "rm-room", "alice", &["publish"]).await;
    let (mut bob, _, _) = join(&server, "rm-room", "bob", &["subscribe"]).await;
    let admin = server.token("rm-room", "ops", &["admin"]);
    let path = "/api/rooms/rm-room/participants/alice/remove";
    assert_eq!(http_json(server.http, "POST", path, None, "").await.0, 401);
    assert_eq!(http_json(server.http, "POST", path, Some(&server.token("rm-room", "bob", &["subscribe"])), "").await.0, 403);
    assert_eq!(http_json(server.http, "POST", "/api/rooms/rm-room/participants/nobody/remove", Some(&admin), "").await.0, 404);
    assert_eq!(http_json(server.http, "POST", path, Some(&admin), r#"{"reason":"spam","ban":true}"#).await.0, 400, "unknown fields");

    let (status, body) = http_json(server.http, "POST", path, Some(&admin), r#"{"reason":"spam"}"#).await;
    assert_eq!((status, body), (200, json!({"sessions": 1})));
    assert_eq!(alice.expect("removed").await["reason"], "spam");
    assert_eq!(alice.closed().await.as_deref(), Some("removed by an operator"));
    assert_eq!(bob.expect("participant_left").await["participant_id"], alice_id.as_str());
    assert_eq!(http_json(server.http, "POST", path, Some(&admin), "").await.0, 404, "alice is gone");

    journal_drained(&server).await;
    let pool = database(&server).await;
    let logged = rows(
        &pool,
        "SELECT o.operation, o.resource_id, COALESCE(u.username, '-'), CAST(o.details AS TEXT) FROM operation_logs o
         LEFT JOIN users u ON u.id = o.user_id WHERE o.resource_id LIKE $1 ORDER BY o.id",
        "rm-room%",
    )
    .await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0][..3], ["remove_participant", "rm-room/alice", "ops"]);
    let details: serde_json::Value = serde_json::from_str(&logged[0][3]).expect("details are JSON");
    assert_eq!((details["reason"].clone(), details["sessions"].clone()), (json!("spam"), json!(1)));
    let statuses = rows(
        &pool,
        "SELECT u.username, CAST(p.status AS TEXT) FROM meeting_participants p JOIN users u ON u.id = p.user_id
         WHERE p.meeting_id = $1 ORDER BY u.username",
        "rm-room",
    )
    .await;
    assert_eq!(statuses, [["alice", "3"], ["bob", "1"]], "Alice removed, Bob still in");
}
