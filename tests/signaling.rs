//! Signaling over `/ws`: the protocol's happy paths and every kind of bad input. Each bad
//! message gets an `error` with a stable code, or a close with a reason for abuse, and the
//! server keeps serving everyone else.

mod common;

use common::{Signal, TestServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

async fn expect_error(signal: &mut Signal, request: Value, code: &str) -> Value {
    let reply = signal.request(request).await;
    assert_eq!(reply["type"], "error", "expected an error, got {reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    reply
}

async fn still_serving(signal: &mut Signal) {
    let pong = signal.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

#[tokio::test]
async fn malformed_unknown_and_incomplete_messages_get_stable_codes() {
    let server = TestServer::start(&[]).await;
    let mut signal = server.connect().await;

    signal.send_raw(Message::Text("{not json".into())).await;
    let error = signal.expect("error").await;
    assert_eq!(error["code"], "bad_json");
    signal.send_raw(Message::Text("[1,2]".into())).await;
    assert_eq!(signal.expect("error").await["code"], "bad_json");
    signal.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(signal.expect("error").await["code"], "unsupported_frame");

    expect_error(&mut signal, json!({"type": "teleport"}), "unknown_type").await;
    expect_error(&mut signal, json!({"type": "join"}), "invalid_message").await;
    expect_error(&mut signal, json!({"type": "chat", "text": 5}), "invalid_message").await;
    expect_error(&mut signal, json!({"type": "ping", "extra": true}), "invalid_message").await;
    expect_error(&mut signal, json!({"type": "chat", "text": "hi"}), "not_joined").await;
    expect_error(&mut signal, json!({"type": "publish_offer", "sdp": "v=0"}), "not_joined").await;
    still_serving(&mut signal).await;
}

#[tokio::test]
async fn oversized_frames_are_refused_and_huge_ones_close_the_connection() {
    let server = TestServer::start(&[("SWITCHBOARD__LIMITS__MAX_MESSAGE_BYTES", "4096")]).await;
    let mut signal = server.connect().await;
    // Refused before parsing, so the error carries no request id.
    signal.send(json!({"type": "chat", "id": 1, "text": "x".repeat(8000)})).await;
    let error = signal.expect("error").await;
    assert_eq!(error["code"], "message_too_large");
    assert!(error["id"].is_null());
    still_serving(&mut signal).await;

    // Far beyond the limit: the transport refuses the frame and closes.
    let mut abuser = server.connect().await;
    abuser.send_raw(Message::Text("y".repeat(64 * 1024).into())).await;
    abuser.closed().await;
    still_serving(&mut signal).await;
}

#[tokio::test]
async fn tokens_are_checked() {
    let server = TestServer::start(&[]).await;
    let mut signal = server.connect().await;
    expect_error(&mut signal, json!({"type": "join", "token": "garbage"}), "unauthorized").await;

    let expired = server.token_with_ttl("r", "eve", &["subscribe"], 0);
    // Expiry has a few seconds of leeway for clock skew; wait past it.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    expect_error(&mut signal, json!({"type": "join", "token": expired}), "token_expired").await;

    let forger =
        signaling::auth::TokenAuthority::new([("dev".to_owned(), "not-the-server-secret-at-all".to_owned())].into(), "dev".to_owned());
    let forged = forger.issue("r", "mallory", None, signaling::auth::Grants::participant(), 600).expect("token");
    expect_error(&mut signal, json!({"type": "join", "token": forged}), "unauthorized").await;

    signal.join(&server.token("r", "ok", &["subscribe"])).await;
    expect_error(&mut signal, json!({"type": "join", "token": server.token("r", "ok", &["subscribe"])}), "already_joined").await;
}

#[tokio::test]
async fn grants_limit_what_a_participant_may_do() {
    let server = TestServer::start(&[]).await;
    let mut viewer = server.connect().await;
    viewer.join(&server.token("g", "viewer", &["subscribe"])).await;
    expect_error(&mut viewer, json!({"type": "publish_offer", "sdp": "v=0\r\n"}), "forbidden").await;
    expect_error(&mut viewer, json!({"type": "chat", "text": "hello"}), "forbidden").await;
    expect_error(&mut viewer, json!({"type": "mute", "track_id": "someone/else", "muted": true}), "unknown_track").await;
    expect_error(&mut viewer, json!({"type": "subscribe_answer", "sdp": "v=0\r\n"}), "negotiation_state").await;
    let garbage = json!({"type": "trickle", "target": "subscriber", "candidate": "candidate:garbage", "sdp_mid": "0"});
    expect_error(&mut viewer, garbage, "invalid_candidate").await;
    let no_publisher = json!({"type": "trickle", "target": "publisher", "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host"});
    expect_error(&mut viewer, no_publisher, "negotiation_state").await;
    expect_error(&mut viewer, json!({"type": "trickle", "target": "sideways", "candidate": "x"}), "invalid_message").await;
    // Adaptive stream: only of a track it receives, with a whole box of sane size.
    let view = |extra: Value| {
        let mut message = json!({"type": "update_subscription", "track_id": "TR_00000000000000a1"});
        message.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        message
    };
    expect_error(&mut viewer, view(json!({"paused": true})), "unknown_track").await;
    expect_error(&mut viewer, view(json!({"track_id": "nonsense", "width": 320, "height": 180})), "unknown_track").await;
    expect_error(&mut viewer, view(json!({"width": 320})), "invalid_message").await;
    expect_error(&mut viewer, view(json!({"width": 320, "height": 1_000_000})), "invalid_message").await;
    expect_error(&mut viewer, view(json!({"width": -1, "height": 180})), "invalid_message").await;
    expect_error(&mut viewer, view(json!({"paused": "yes"})), "invalid_message").await;

    let mut speaker = server.connect().await;
    speaker.join(&server.token("g", "speaker", &["publish", "publish_data"])).await;
    expect_error(&mut speaker, json!({"type": "publish_offer", "sdp": "this is not sdp"}), "invalid_sdp").await;
    still_serving(&mut speaker).await;
}

#[tokio::test]
async fn chat_and_presence_reach_the_room() {
    let server = TestServer::start(&[]).await;
    let mut alice = server.connect().await;
    alice.join(&server.token("c", "alice", &["subscribe", "publish_data"])).await;
    let mut bob = server.connect().await;
    let joined = bob.join(&server.token("c", "bob", &["subscribe", "publish_data"])).await;
    assert_eq!(joined["participants"][0]["identity"], "alice");
    assert_eq!(joined["protocol"], 1);
    let bob_id = joined["participant"]["participant_id"].clone();
    assert_eq!(alice.expect("participant_joined").await["participant"]["participant_id"], bob_id);

    let ack = bob.request(json!({"type": "chat", "text": "hello room"})).await;
    assert_eq!(ack["type"], "ack");
    let message_id = ack["message_id"].clone();
    for signal in [&mut alice, &mut bob] {
        let chat = signal.expect("chat").await;
        assert_eq!(chat["message_id"], message_id);
        assert_eq!(chat["text"], "hello room");
        assert_eq!(chat["identity"], "bob");
        assert!(chat["timestamp_ms"].as_u64().is_some_and(|t| t > 1_700_000_000_000));
    }
    expect_error(&mut bob, json!({"type": "chat", "text": "   "}), "invalid_message").await;

    drop(bob);
    assert_eq!(alice.expect("participant_left").await["participant_id"], bob_id);
}

#[tokio::test]
async fn room_limit_is_enforced() {
    let server = TestServer::start(&[("SWITCHBOARD__LIMITS__MAX_PARTICIPANTS_PER_ROOM", "1")]).await;
    let mut first = server.connect().await;
    first.join(&server.token("small", "a", &["subscribe"])).await;
    let mut second = server.connect().await;
    expect_error(&mut second, json!({"type": "join", "token": server.token("small", "b", &["subscribe"])}), "room_full").await;
}

#[tokio::test]
async fn a_thousand_messages_a_second_are_limited_then_closed_while_others_are_served() {
    let server = TestServer::start(&[]).await;
    let mut bystander = server.connect().await;
    let mut flooder = server.connect().await;
    // One second of 1000 messages/s; the server may hang up before the last are written.
    let mut sent = 0;
    for i in 0..1000 {
        if !flooder.try_send(json!({"type": "ping", "id": i})).await {
            break;
        }
        sent += 1;
        if i % 10 == 9 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let mut pongs = 0;
    let mut limited = 0;
    let reason = loop {
        match flooder.next_message_or_close().await {
            Ok(message) if message["type"] == "pong" => pongs += 1,
            Ok(message) if message["code"] == "rate_limited" => limited += 1,
            Ok(other) => panic!("unexpected {other}"),
            Err(reason) => break reason,
        }
    };
    assert!(sent > 300, "the flood got going ({sent} sent)");
    assert!((100..400).contains(&pongs), "the burst and the refill are served, the flood is not: {pongs} pongs");
    assert!(limited >= 150, "rate_limited errors before the close: {limited}");
    assert_eq!(reason.as_deref(), Some("rate limit exceeded repeatedly"));
    still_serving(&mut bystander).await;
}

/// A flood at full speed, read while it is sent: its refusals name the requests they answer,
/// and the close that ends it arrives, however much the client is still sending.
#[tokio::test]
async fn a_flood_at_full_speed_reads_its_close_and_the_ids_of_its_refusals() {
    use futures_util::{SinkExt, StreamExt};
    let server = TestServer::start(&[]).await;
    let pad = "x".repeat(2000);
    for round in 0..8 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.http)).await.expect("ws connects");
        let (mut write, mut read) = ws.split();
        let frames: Vec<String> = (0..20_000).map(|i| json!({"type": "ping", "id": i, "pad": pad}).to_string()).collect();
        let flood = tokio::spawn(async move {
            for frame in frames {
                if write.send(Message::Text(frame.into())).await.is_err() {
                    break;
                }
            }
        });
        let mut limited_ids = Vec::new();
        let reason = loop {
            let next = tokio::time::timeout(common::WAIT, read.next()).await.expect("an answer in time");
            match next {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).expect("JSON");
                    if message["code"] == "rate_limited" {
                        limited_ids.push(message["id"].as_u64().expect("the refused request's id"));
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame.map(|f| f.reason.to_string()),
                Some(Ok(_)) => {}
                Some(Err(err)) => panic!("round {round}: the connection broke before its close: {err}"),
                None => panic!("round {round}: the connection ended without a close"),
            }
        };
        flood.abort();
        assert_eq!(reason.as_deref(), Some("rate limit exceeded repeatedly"), "round {round}");
        assert!(limited_ids.len() >= 150, "round {round}: {} refusals", limited_ids.len());
        assert!(limited_ids.windows(2).all(|w| w[0] < w[1]), "round {round}: refusals in the order of the requests");
    }
}

#[tokio::test]
async fn a_dropped_connection_resumes_its_session_with_what_was_missed() {
    let server = TestServer::start(&[("SWITCHBOARD__SIGNALING__RESUME_GRACE_SECS", "5")]).await;
    let (mut alice, _) = server.joined("resume", "alice", &["subscribe", "publish_data"]).await;
    let mut bob = server.connect().await;
    let joined = bob.join(&server.token("resume", "bob", &["subscribe", "publish_data"])).await;
    let bob_id = joined["participant"]["participant_id"].clone();
    let session_id = joined["session_id"].as_str().expect("session id").to_owned();
    assert_eq!(joined["resume_grace_secs"], 5);
    alice.expect("participant_joined").await;

    // Bob's connection drops; Alice chats meanwhile and does not see Bob leave.
    drop(bob);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ack = alice.request(json!({"type": "chat", "text": "are you there?"})).await;
    assert_eq!(ack["type"], "ack");

    let mut bob = server.connect().await;
    expect_error(&mut bob, json!({"type": "resume", "session_id": "not-a-session"}), "unknown_session").await;
    let resumed = bob.request(json!({"type": "resume", "session_id": session_id})).await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["participant"]["participant_id"], bob_id);
    let missed = bob.expect("chat").await;
    assert_eq!(missed["text"], "are you there?");
    let ack = bob.request(json!({"type": "chat", "text": "back"})).await;
    assert_eq!(ack["type"], "ack", "the resumed session serves requests: {ack}");
    assert_eq!(alice.expect("chat").await["text"], "are you there?");
    assert_eq!(alice.expect("chat").await["text"], "back");

    // A second drop without resume ends the session once the grace is over.
    drop(bob);
    assert_eq!(alice.expect("participant_left").await["participant_id"], bob_id);
    let mut late = server.connect().await;
    expect_error(&mut late, json!({"type": "resume", "session_id": session_id}), "unknown_session").await;
}

#[tokio::test]
async fn a_connection_that_never_joins_is_closed_at_the_join_timeout_however_often_it_pings() {
    let server = TestServer::start(&[("SWITCHBOARD__SIGNALING__JOIN_TIMEOUT_SECS", "1")]).await;
    let mut idle = server.connect().await;
    // Pings every 200 ms for two seconds: twice the timeout, well inside the heartbeat's.
    for _ in 0..10 {
        if !idle.try_send(json!({"type": "ping"})).await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(idle.closed().await.as_deref(), Some("no join within the join timeout"));
    // A connection that joins in time stays.
    let mut joined = server.connect().await;
    joined.join(&server.token("timely", "ann", &["subscribe"])).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    still_serving(&mut joined).await;
}

#[tokio::test]
async fn connections_from_one_address_are_capped_and_a_closed_one_frees_its_place() {
    let server = TestServer::start(&[("SWITCHBOARD__LIMITS__MAX_CONNECTIONS_PER_IP", "2")]).await;
    let url = format!("ws://{}/ws", server.http);
    let refusal = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Some(response.status().as_u16()),
        _ => None,
    };
    let first = server.connect().await;
    let _second = server.connect().await;
    assert_eq!(refusal(tokio_tungstenite::connect_async(&url).await.map(|_| ())), Some(429), "the third is refused");
    drop(first);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(_) => break,
            Err(err) => assert!(tokio::time::Instant::now() < deadline, "the place of the closed connection was not freed: {err}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The status of a WebSocket upgrade sent with this `Origin` header: 101 when it connected.
async fn upgrade_status(server: &TestServer, origin: &str) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/ws", server.http).into_client_request().expect("request");
    request.headers_mut().insert("Origin", origin.parse().expect("header value"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("upgrade failed: {err}"),
    }
}

#[tokio::test]
async fn web_pages_of_other_origins_may_not_open_a_signaling_connection() {
    let embedded = TestServer::start(&[]).await;
    assert_eq!(upgrade_status(&embedded, "http://evil.example").await, 403, "another site's page");
    assert_eq!(upgrade_status(&embedded, &format!("http://{}", embedded.http)).await, 101, "the server's own page");
    assert_eq!(upgrade_status(&embedded, "http://localhost:3000").await, 101, "a page of this machine");
    let listed = TestServer::start(&[("SWITCHBOARD__HTTP__ALLOWED_ORIGINS", "[https://meet.example.com]")]).await;
    assert_eq!(upgrade_status(&listed, "https://meet.example.com").await, 101);
    assert_eq!(upgrade_status(&listed, "http://localhost:3000").await, 403, "the list is all that is allowed");
}
