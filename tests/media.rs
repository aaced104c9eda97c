//! Whole-server media tests over real sockets: Rust WebRTC clients join via `/ws`, publish
//! Opus + VP8 and H.264, and a subscriber checks that what arrives is byte-identical.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::rtc_client::{self, Client, Received};
use common::{answer_offers, offers_answered, TestServer};
use serde_json::json;

/// Collects packets until none arrives for `quiet`.
async fn collect(client: &mut Client, quiet: Duration) -> Vec<Received> {
    let mut all = Vec::new();
    while let Ok(Some(packet)) = tokio::time::timeout(quiet, client.received.recv()).await {
        all.push(packet);
    }
    all
}

/// Waits until `client` is connected and every sender has sent its last packet, then
/// collects what arrived.
async fn receive_streams(client: &mut Client, senders: impl IntoIterator<Item = tokio::task::JoinHandle<()>>) -> Vec<Received> {
    client.wait_connected().await;
    for sender in senders {
        sender.await.expect("sender");
    }
    collect(client, Duration::from_millis(700)).await
}

/// Checks that `name`'s packets arrived byte-identical, contiguous, up to the last one sent.
fn assert_identical_run(received: &[Received], name: &str, sent: u32, mime_type: &str) {
    let mut by_index = BTreeMap::new();
    for packet in received.iter().filter(|p| p.payload.starts_with(format!("{name}:").as_bytes())) {
        let text = String::from_utf8_lossy(&packet.payload[..40.min(packet.payload.len())]).to_string();
        let index: u32 = text.split(':').nth(1).and_then(|i| i.parse().ok()).expect("index in payload");
        assert_eq!(packet.payload, rtc_client::payload(name, index), "payload of {name} #{index} forwarded unchanged");
        assert_eq!(packet.mime_type, mime_type);
        assert!(by_index.insert(index, ()).is_none(), "{name} #{index} delivered twice");
    }
    let first = *by_index.keys().next().unwrap_or_else(|| panic!("no packet of {name} arrived"));
    let last = *by_index.keys().last().expect("non-empty");
    assert_eq!(last, sent - 1, "{name}: the stream reached the subscriber up to its last packet");
    assert_eq!(by_index.len() as u32, last - first + 1, "{name}: no gap between #{first} and #{last}");
    assert!(by_index.len() >= 100, "{name}: only {} packets arrived", by_index.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_reach_a_subscriber_byte_identical_and_leave_removes_tracks() {
    let server = TestServer::start(&[]).await;

    let (mut carol, _) = server.joined("standup", "carol", &["subscribe"]).await;
    let mut carol_rtc = rtc_client::new_client().await;

    let (mut alice, alice_id) = server.joined("standup", "alice", &["publish"]).await;
    let opus = rtc_client::local_track("alice-stream", "alice-mic", "audio/opus");
    let vp8 = rtc_client::local_track("alice-stream", "alice-cam", "video/VP8");
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[opus, vp8]).await;
    // The server learns of a track from its first packets.
    const SENT: u32 = 500;
    let audio = tokio::spawn(rtc_client::send_packets(out[0].clone(), SENT, 960));
    let video = tokio::spawn(rtc_client::send_packets(out[1].clone(), SENT, 3000));

    // Carol learns of both tracks and is offered them.
    let mut published = Vec::new();
    for _ in 0..2 {
        let event = carol.expect("track_published").await;
        assert_eq!(event["track"]["participant_id"], alice_id.as_str());
        published.push(event["track"]["track_id"].as_str().expect("track id").to_owned());
    }
    assert!(answer_offers(&mut carol, &carol_rtc, Duration::from_millis(1500)).await >= 1);
    let received = receive_streams(&mut carol_rtc, [audio, video]).await;
    assert_identical_run(&received, "alice-mic", SENT, "audio/opus");
    assert_identical_run(&received, "alice-cam", SENT, "video/VP8");
    for packet in &received {
        assert_eq!(packet.stream_id, alice_id, "the stream id names the publisher");
        assert!(published.contains(&packet.track_id), "track id {} announced", packet.track_id);
    }

    // A second publisher with H.264 joins the same room.
    let (mut bob, _) = server.joined("standup", "bob", &["publish"]).await;
    let h264 = rtc_client::local_track("bob-stream", "bob-cam", "video/H264");
    let (_bob_rtc, out) = rtc_client::publish(&mut bob, &[h264]).await;
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), SENT, 3000));
    let event = carol.expect("track_published").await;
    assert_eq!(event["track"]["codec"], "video/H264");
    assert!(answer_offers(&mut carol, &carol_rtc, Duration::from_millis(1000)).await >= 1);
    sender.await.expect("h264 sender");
    let received = collect(&mut carol_rtc, Duration::from_millis(700)).await;
    assert_identical_run(&received, "bob-cam", SENT, "video/H264");

    // Alice leaves: her tracks are unpublished for Carol and renegotiated away.
    let reply = alice.request(json!({"type": "leave"})).await;
    assert_eq!(reply["type"], "ack");
    let mut unpublished = vec![
        carol.expect("track_unpublished").await["track_id"].as_str().expect("id").to_owned(),
        carol.expect("track_unpublished").await["track_id"].as_str().expect("id").to_owned(),
    ];
    unpublished.sort();
    published.sort();
    assert_eq!(unpublished, published);
    assert_eq!(carol.expect("participant_left").await["participant_id"], alice_id.as_str());
    let offer = carol.expect("subscribe_offer").await;
    let sdp = offer["sdp"].as_str().expect("sdp");
    assert_eq!(sdp.matches("a=sendonly").count(), 1, "only Bob's track is still sent:\n{sdp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_video_lines_of_a_subscriber_offer_carry_their_codec_only() {
    let server = TestServer::start(&[]).await;
    let (mut carol, _) = server.joined("lines", "carol", &["subscribe"]).await;
    let mut carol_rtc = rtc_client::new_client().await;
    const SENT: u32 = 400;
    let mut senders = Vec::new();
    let mut clients = Vec::new();
    let mut offers = Vec::new();
    // Alice publishes and Carol answers; then Dave.
    for name in ["alice", "dave"] {
        let (mut signal, _) = server.joined("lines", name, &["publish"]).await;
        let (client, out) = rtc_client::publish(&mut signal, &[rtc_client::local_track(name, &format!("{name}-cam"), "video/VP8")]).await;
        senders.push(tokio::spawn(rtc_client::send_packets(out[0].clone(), SENT, 3000)));
        clients.push((signal, client));
        carol.expect("track_published").await;
        offers.push(offers_answered(&mut carol, &carol_rtc, Duration::from_millis(1500)).await);
    }
    let formats = |section: &str| section.lines().filter(|l| l.starts_with("a=rtpmap:")).map(|l| l.to_owned()).collect::<Vec<_>>();
    let video_lines = |offer: &str| offer.split("m=video ").skip(1).map(formats).collect::<Vec<_>>();
    let vp8_only = |formats: &[String]| formats.len() == 2 && formats[0].ends_with("VP8/90000") && formats[1].ends_with("rtx/90000");
    // Until Carol has answered a video line, the first offers every video codec.
    let first = offers[0].first().expect("an offer for Alice's track");
    let lines = video_lines(first);
    assert_eq!(lines.len(), 1, "one video m-line:\n{first}");
    assert!(lines[0].len() > 4, "the first offers every codec:\n{first}");
    // Once she has, each video line offers its track's codec and its RTX only.
    let last = offers[1].last().expect("an offer for Dave's track");
    let lines = video_lines(last);
    assert_eq!(lines.len(), 2, "two video m-lines:\n{last}");
    assert!(lines.iter().all(|formats| vp8_only(formats)), "VP8 and RTX only on every line:\n{last}");

    let received = receive_streams(&mut carol_rtc, senders).await;
    assert_identical_run(&received, "alice-cam", SENT, "video/VP8");
    assert_identical_run(&received, "dave-cam", SENT, "video/VP8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_receives_tracks_already_published() {
    let server = TestServer::start(&[]).await;
    let (mut alice, _) = server.joined("late", "alice", &["publish"]).await;
    let vp8 = rtc_client::local_track("s", "cam", "video/VP8");
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[vp8]).await;
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), 400, 3000));
    // Wait until the server saw the track (it announces it to the publisher too).
    alice.expect("track_published").await;

    let mut dave = server.connect().await;
    let joined = dave.join(&server.token("late", "dave", &["subscribe"])).await;
    assert_eq!(joined["tracks"].as_array().map(Vec::len), Some(1), "joined lists the track: {joined}");
    let mut dave_rtc = rtc_client::new_client().await;
    assert_eq!(answer_offers(&mut dave, &dave_rtc, Duration::from_millis(800)).await, 1);
    let received = receive_streams(&mut dave_rtc, [sender]).await;
    assert_identical_run(&received, "cam", 400, "video/VP8");

    // Alice's signaling connection dies without a leave: her track goes all the same.
    let track_id = joined["tracks"][0]["track_id"].clone();
    drop(alice);
    assert_eq!(dave.expect("track_unpublished").await["track_id"], track_id);
    dave.expect("participant_left").await;
}

/// A WHIP publisher (RFC 9725) is a participant like any other: a subscriber in the room
/// sees it join and receives its media byte-identical; trickled candidates need the session's
/// ETag; `DELETE` ends it. What the endpoint refuses, it refuses with the RFC's codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_is_forwarded_like_anyone_and_leaves_on_delete() {
    use common::http_request;
    let ice_servers = "[{urls: [stun:stun.example.net]}, {urls: [turns:turn.example.net], username: obs, credential: secret}]";
    let server = TestServer::start(&[("SWITCHBOARD__MEDIA__ICE_SERVERS", ice_servers)]).await;
    let addr = server.http;
    let token = server.token("whip", "obs", &["publish"]);
    let bearer = format!("Bearer {token}");
    let sdp = [("Authorization", bearer.as_str()), ("Content-Type", "application/sdp")];

    // A web page of another origin may use it (its CORS preflight is answered).
    let preflight = [("Origin", "https://studio.example"), ("Access-Control-Request-Method", "POST")];
    let options = http_request(addr, "OPTIONS", "/whip/whip", &preflight, "").await;
    assert_eq!((options.status, options.header("accept-post")), (200, Some("application/sdp")));
    assert_eq!(options.header("access-control-allow-origin"), Some("*"));
    assert!(options.header("access-control-allow-methods").is_some_and(|m| m.contains("POST")));
    assert!(options.header("access-control-allow-headers").is_some_and(|h| h.contains("Authorization")));
    let others = [
        (server.token("elsewhere", "obs", &["publish"]), "application/sdp", "v=0\r\n", 403),
        (server.token("whip", "obs", &["subscribe"]), "application/sdp", "v=0\r\n", 403),
        ("not-a-token".to_owned(), "application/sdp", "v=0\r\n", 401),
        (token.clone(), "application/json", "{}", 415),
        (token.clone(), "application/sdp", "this is no SDP", 400),
    ];
    assert_refused(addr, "/whip/whip", others).await;

    let (mut viewer, _) = server.joined("whip", "viewer", &["subscribe"]).await;
    let vp8 = rtc_client::local_track("s", "cam", "video/VP8");
    let mut session = None;
    let created_session = &mut session;
    let exchange = move |offer: String| async move {
        let created = http_request(addr, "POST", "/whip/whip", &sdp, &offer).await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.header("content-type"), Some("application/sdp"));
        assert!(created.body.contains("a=recvonly"), "{}", created.body);
        let location = created.header("location").expect("Location").to_owned();
        let etag = created.header("etag").expect("ETag").to_owned();
        assert!(location.starts_with("/whip/whip/") && etag.starts_with('"'), "{location} {etag}");
        let exposed = created.header("access-control-expose-headers").unwrap_or_default();
        assert!(["Location", "ETag", "Link"].iter().all(|h| exposed.contains(h)), "{exposed}");
        // The configured ICE servers, as RFC 9725 §4.6 links.
        let links: Vec<&str> = created.headers.iter().filter(|(name, _)| name == "link").map(|(_, value)| value.as_str()).collect();
        assert_eq!(
            links,
            [
                r#"<stun:stun.example.net>; rel="ice-server""#,
                r#"<turns:turn.example.net>; rel="ice-server"; username="obs"; credential="secret"; credential-type="password""#
            ]
        );
        *created_session = Some((location, etag));
        created.body
    };
    let (_obs, out) = rtc_client::publish_with(rtc_client::new_client().await, &[vp8], exchange).await;
    let (location, etag) = session.expect("the session was created");
    assert_eq!(viewer.expect("participant_joined").await["participant"]["identity"], "obs");
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), 300, 3000));
    let mut viewer_rtc = rtc_client::new_client().await;
    assert_eq!(answer_offers(&mut viewer, &viewer_rtc, Duration::from_millis(800)).await, 1);
    let received = receive_streams(&mut viewer_rtc, [sender]).await;
    assert_identical_run(&received, "cam", 300, "video/VP8");

    let fragment = "a=mid:0\r\na=candidate:1 1 UDP 2130706431 127.0.0.1 9 typ host\r\n";
    let trickle = |if_match: Option<&'static str>| {
        let (location, etag, bearer) = (location.clone(), etag.clone(), bearer.clone());
        async move {
            let mut headers = vec![("Authorization", bearer.as_str()), ("Content-Type", "application/trickle-ice-sdpfrag")];
            let tag = if_match.map(|t| if t == "etag" { etag.clone() } else { t.to_owned() });
            if let Some(tag) = &tag {
                headers.push(("If-Match", tag.as_str()));
            }
            http_request(addr, "PATCH", &location, &headers, fragment).await.status
        }
    };
    assert_eq!(trickle(None).await, 428, "If-Match is required");
    assert_eq!(trickle(Some("\"other\"")).await, 412, "another ICE session");
    assert_eq!(trickle(Some("etag")).await, 204);
    let restart = "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\n";
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/trickle-ice-sdpfrag"), ("If-Match", "*")];
    assert_eq!(http_request(addr, "PATCH", &location, &headers, restart).await.status, 422, "no ICE restarts");

    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(http_request(addr, "DELETE", &location, &auth, "").await.status, 200);
    viewer.expect("participant_left").await;
    assert_eq!(http_request(addr, "DELETE", &location, &auth, "").await.status, 404, "ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_session_whose_media_never_arrives_ends_at_the_deadline() {
    use common::http_request;
    let server = TestServer::start(&[("SWITCHBOARD__SIGNALING__WHIP_MEDIA_TIMEOUT_SECS", "1")]).await;
    let addr = server.http;
    let (mut viewer, _) = server.joined("silent", "viewer", &["subscribe"]).await;
    let bearer = format!("Bearer {}", server.token("silent", "obs", &["publish"]));
    let mut location = String::new();
    let (created_at, authorization) = (&mut location, bearer.as_str());
    // The publisher connects, and never sends a packet.
    let vp8 = rtc_client::local_track("s", "cam", "video/VP8");
    let (_obs, _never_sent) = rtc_client::publish_with(rtc_client::new_client().await, &[vp8], move |offer| async move {
        let headers = [("Authorization", authorization), ("Content-Type", "application/sdp")];
        let created = http_request(addr, "POST", "/whip/silent", &headers, &offer).await;
        assert_eq!(created.status, 201, "{}", created.body);
        *created_at = created.header("location").expect("Location").to_owned();
        created.body
    })
    .await;
    assert_eq!(viewer.expect("participant_joined").await["participant"]["identity"], "obs");
    assert_eq!(viewer.expect("participant_left").await["participant_id"].as_str().map(str::is_empty), Some(false));
    // The session is gone with it: a PATCH that changes nothing no longer finds it.
    let probe = [("Authorization", authorization), ("Content-Type", "application/trickle-ice-sdpfrag"), ("If-Match", "*")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let patched = http_request(addr, "PATCH", &location, &probe, "a=mid:0\r\n").await;
        if patched.status == 404 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the session outlived its participant: PATCH answered {}", patched.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts each (token, content type, body) to `path` and checks the status it is refused with.
async fn assert_refused(addr: std::net::SocketAddr, path: &str, cases: impl IntoIterator<Item = (String, &str, &str, u16)>) {
    for (token, content_type, body, status) in cases {
        let bearer = format!("Bearer {token}");
        let refused = common::http_request(addr, "POST", path, &[("Authorization", &bearer), ("Content-Type", content_type)], body).await;
        assert_eq!(refused.status, status, "{content_type} {body}: {}", refused.body);
    }
}

/// A WHEP player (draft-ietf-wish-whep) posts an offer to receive audio and video with a
/// `subscribe` token and gets the room's publisher, byte-identical; the room sees it join and
/// leave on `DELETE`. What the endpoint refuses, it refuses with WHIP's codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_receives_the_rooms_publisher_byte_identical_and_leaves_on_delete() {
    use common::http_request;
    let server = TestServer::start(&[]).await;
    let addr = server.http;
    let token = server.token("whep", "player", &["subscribe"]);
    let bearer = format!("Bearer {token}");
    let sdp = [("Authorization", bearer.as_str()), ("Content-Type", "application/sdp")];
    let others = [
        (server.token("elsewhere", "player", &["subscribe"]), "application/sdp", "v=0\r\n", 403),
        (server.token("whep", "player", &["publish"]), "application/sdp", "v=0\r\n", 403),
        ("not-a-token".to_owned(), "application/sdp", "v=0\r\n", 401),
        (token.clone(), "application/json", "{}", 415),
        (token.clone(), "application/sdp", "this is no SDP", 400),
    ];
    assert_refused(addr, "/whep/whep", others).await;

    let (mut alice, _) = server.joined("whep", "alice", &["publish"]).await;
    let vp8 = rtc_client::local_track("s", "cam", "video/VP8");
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[vp8]).await;
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), 300, 3000));
    alice.expect("track_published").await;
    let mut player = rtc_client::new_client().await;
    let mut session = None;
    let created_session = &mut session;
    rtc_client::play_with(&player, move |offer: String| async move {
        let created = http_request(addr, "POST", "/whep/whep", &sdp, &offer).await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert_eq!(created.header("content-type"), Some("application/sdp"));
        assert!(created.body.contains("a=sendonly"), "{}", created.body);
        let location = created.header("location").expect("Location").to_owned();
        assert!(location.starts_with("/whep/whep/") && created.header("etag").is_some_and(|e| e.starts_with('"')), "{location}");
        *created_session = Some(location);
        created.body
    })
    .await;
    let location = session.expect("the session was created");
    assert_eq!(alice.expect("participant_joined").await["participant"]["identity"], "player");
    let received = receive_streams(&mut player, [sender]).await;
    assert_identical_run(&received, "cam", 300, "video/VP8");

    let auth = [("Authorization", bearer.as_str())];
    let whip_location = location.replacen("/whep/", "/whip/", 1);
    assert_eq!(http_request(addr, "DELETE", &whip_location, &auth, "").await.status, 403, "a WHEP session is no WHIP one");
    assert_eq!(http_request(addr, "DELETE", &location, &auth, "").await.status, 200);
    alice.expect("participant_left").await;
    assert_eq!(http_request(addr, "DELETE", &location, &auth, "").await.status, 404, "ended");
}

/// Alice publishes 300 VP8 packets in `room`; then a subscriber joins on `client`, and every
/// packet from its first on must reach it byte-identical. Gives the client back.
async fn vp8_reaches_a_subscriber(server: &TestServer, room: &str, mut client: rtc_client::Client) -> rtc_client::Client {
    let (mut alice, _) = server.joined(room, "alice", &["publish"]).await;
    let vp8 = rtc_client::local_track("s", "cam", "video/VP8");
    let (_alice_rtc, out) = rtc_client::publish(&mut alice, &[vp8]).await;
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), 300, 3000));
    alice.expect("track_published").await;

    let (mut subscriber, _) = server.joined(room, "erin", &["subscribe"]).await;
    assert_eq!(answer_offers(&mut subscriber, &client, Duration::from_millis(800)).await, 1);
    let received = receive_streams(&mut client, [sender]).await;
    assert_identical_run(&received, "cam", 300, "video/VP8");
    client
}

/// The egress seals AES-128-GCM itself and hands other profiles to the engine's SRTP
/// context: a server that accepts only AES-CM-HMAC-SHA1-80 forwards just as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_forwarded_under_the_sha1_80_profile_when_it_is_the_one_accepted() {
    let server = TestServer::start(&[("SWITCHBOARD__MEDIA__SRTP_PROFILES", "[aes128_cm_hmac_sha1_80]")]).await;
    vp8_reaches_a_subscriber(&server, "sha1", rtc_client::new_client().await).await;
}

/// The egress keys itself with the half of the DTLS-SRTP keying material that belongs to
/// the server's side of the handshake: the client's, when the subscriber answers as DTLS
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_answering_as_dtls_server_receives_the_media() {
    let server = TestServer::start(&[]).await;
    let client = vp8_reaches_a_subscriber(&server, "passive", rtc_client::new_client_answering_as_dtls_server().await).await;
    let answer = client.pc.local_description().await.expect("an answer");
    assert!(answer.sdp.contains("a=setup:passive"), "answered as DTLS server:\n{}", answer.sdp);
}

/// Counters of subscriber feedback and the SFU's answers to it.
const FEEDBACK_METRICS: [&str; 5] = [
    "switchboard_keyframe_requests_total",
    "switchboard_plis_sent_total",
    "switchboard_nacks_total",
    "switchboard_retransmits_total",
    "switchboard_rtx_packets_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vp9_and_av1_are_forwarded_and_subscriber_feedback_is_answered() {
    let server = TestServer::start(&[]).await;
    let (mut frank, _) = server.joined("codecs", "frank", &["subscribe"]).await;
    let mut frank_rtc = rtc_client::new_client().await;

    // Two publishers: the webrtc client negotiates one video codec per connection.
    let (mut erin, _) = server.joined("codecs", "erin", &["publish"]).await;
    let (_erin_rtc, vp9) = rtc_client::publish(&mut erin, &[rtc_client::local_track("erin", "erin-vp9", "video/VP9")]).await;
    let (mut gus, _) = server.joined("codecs", "gus", &["publish"]).await;
    let (_gus_rtc, av1) = rtc_client::publish(&mut gus, &[rtc_client::local_track("gus", "gus-av1", "video/AV1")]).await;
    const SENT: u32 = 400;
    let senders = [
        tokio::spawn(rtc_client::send_packets(vp9[0].clone(), SENT, 3000)),
        tokio::spawn(rtc_client::send_packets(av1[0].clone(), SENT, 3000)),
    ];
    for _ in 0..2 {
        frank.expect("track_published").await;
    }
    assert!(answer_offers(&mut frank, &frank_rtc, Duration::from_millis(1500)).await >= 1);
    let received = receive_streams(&mut frank_rtc, senders).await;
    assert_identical_run(&received, "erin-vp9", SENT, "video/VP9");
    assert_identical_run(&received, "gus-av1", SENT, "video/AV1");

    // Feedback from the subscriber: a PLI is relayed to the publisher (past the throttle
    // interval since the subscription's own keyframe request), a NACK is served from cache.
    let track = frank_rtc.remote_tracks.recv().await.expect("remote track");
    let ssrc = track.ssrcs().await[0];
    let lost: Vec<u16> = received.iter().filter(|p| p.media_ssrc == ssrc).rev().take(5).map(|p| p.sequence_number).collect();
    assert_eq!(lost.len(), 5);
    let before = server.metrics(FEEDBACK_METRICS).await;
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{nack_pairs_from_sequence_numbers, TransportLayerNack};
    let mut lost_sorted = lost.clone();
    lost_sorted.sort();
    track.write_rtcp(vec![Box::new(PictureLossIndication { sender_ssrc: 1, media_ssrc: ssrc })]).await.expect("pli sent");
    let nack = TransportLayerNack { sender_ssrc: 1, media_ssrc: ssrc, nacks: nack_pairs_from_sequence_numbers(&lost_sorted) };
    track.write_rtcp(vec![Box::new(nack)]).await.expect("nack sent");
    // The repairs arrive on the RTX stream and the client restores them: same payloads again.
    let repaired = collect(&mut frank_rtc, Duration::from_millis(500)).await;
    let mut repaired_seqs: Vec<u16> = repaired.iter().map(|p| p.sequence_number).collect();
    repaired_seqs.sort();
    assert_eq!(repaired_seqs, lost_sorted);
    for packet in &repaired {
        let original = received.iter().find(|p| p.sequence_number == packet.sequence_number && p.media_ssrc == ssrc).expect("original");
        assert_eq!(packet.payload, original.payload, "retransmission is byte-identical");
    }
    let after = server.metrics(FEEDBACK_METRICS).await;
    assert_eq!(after[0] - before[0], 1.0, "the PLI reached the SFU");
    assert_eq!(after[1] - before[1], 1.0, "and was relayed to the publisher");
    assert_eq!(after[2] - before[2], 5.0, "the NACK reached the SFU");
    assert_eq!(after[3] - before[3], 5.0, "every NACKed packet was retransmitted from the cache");
    assert_eq!(after[4] - before[4], 5.0, "on the negotiated RTX stream");
}

/// The server's feedback to a publisher, which the worker's ingress keeps now that it opens
/// publishers' media itself: NACKs for the packets that did not arrive, receiver reports that
/// count them lost, and transport-wide feedback on every packet that carried a transport-wide
/// sequence number (browsers estimate their uplink from it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_gets_nacks_receiver_reports_and_transport_feedback() {
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;

    let server = TestServer::start(&[]).await;
    let (mut signal, _) = server.joined("feedback", "alice", &["publish"]).await;
    let (client, seen) = rtc_client::new_client_seeing_feedback().await;
    let (_client, tracks) =
        rtc_client::publish_on(client, &mut signal, &[rtc_client::local_track("alice", "alice-cam", "video/VP8")]).await;
    let ssrc = tracks[0].ssrc;
    // Packets 100 and 101 are never sent: lost for good, the publisher has nothing to resend.
    const SENT: u32 = 300;
    rtc_client::send_packets_but(tracks[0].clone(), SENT, 3000, &[100, 101]).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let (mut nacked, mut reported, mut acknowledged) = (Vec::new(), None, 0);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (nacked, reported, acknowledged) = (Vec::new(), None, 0);
        for packet in seen.lock().expect("not poisoned").iter() {
            let any = packet.as_any();
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                assert_eq!(nack.media_ssrc, ssrc);
                nacked.extend(nack.nacks.iter().flat_map(|pair| pair.packet_list()));
            } else if let Some(report) = any.downcast_ref::<ReceiverReport>() {
                reported = report.reports.iter().find(|r| r.ssrc == ssrc).map(|r| (r.last_sequence_number, r.total_lost)).or(reported);
            } else if let Some(feedback) = any.downcast_ref::<TransportLayerCc>() {
                acknowledged += feedback.recv_deltas.len();
            }
        }
        if reported == Some((SENT - 1, 2)) && acknowledged >= SENT as usize - 2 {
            break;
        }
    }
    nacked.sort_unstable();
    nacked.dedup();
    assert_eq!(nacked, vec![100, 101], "the missing packets, and only they, are NACKed");
    assert_eq!(reported, Some((SENT - 1, 2)), "the last receiver report: highest sequence number, packets lost");
    assert!(acknowledged >= SENT as usize - 2, "transport-wide feedback on {acknowledged} packets of {}", SENT - 2);
    assert!(server.metric("switchboard_publisher_nacks_total").await >= 2.0);
    assert_eq!(server.metric("switchboard_srtp_refused_total").await, 0.0);
}

/// A STUN binding request carrying `username` (no integrity: the ICE agent must refuse it).
fn stun_binding(username: &str) -> Vec<u8> {
    let mut attribute = vec![0x00, 0x06];
    attribute.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attribute.extend_from_slice(username.as_bytes());
    while attribute.len() % 4 != 0 {
        attribute.push(0);
    }
    let mut message = vec![0x00, 0x01];
    message.extend_from_slice(&(attribute.len() as u16).to_be_bytes());
    message.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    message.extend_from_slice(&[7; 12]);
    message.extend_from_slice(&attribute);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_aimed_at_a_connection_do_not_disturb_it() {
    use rand::{Rng, SeedableRng};
    let server = TestServer::start(&[]).await;
    let (mut carol, _) = server.joined("noise", "carol", &["subscribe"]).await;
    let mut carol_rtc = rtc_client::new_client().await;
    let (mut alice, _) = server.joined("noise", "alice", &["publish"]).await;
    let (alice_rtc, out) = rtc_client::publish(&mut alice, &[rtc_client::local_track("a", "noisy-cam", "video/VP8")]).await;
    const SENT: u32 = 600;
    let sender = tokio::spawn(rtc_client::send_packets(out[0].clone(), SENT, 3000));
    carol.expect("track_published").await;
    assert!(answer_offers(&mut carol, &carol_rtc, Duration::from_millis(800)).await >= 1);

    // The attacker learned the server's ufrag and address for Alice's publisher connection
    // (they are in the answer) and sprays it from its own socket.
    let answer = alice_rtc.pc.remote_description().await.expect("answer").sdp;
    let ufrag = answer.lines().find_map(|l| l.strip_prefix("a=ice-ufrag:")).expect("ufrag").trim().to_owned();
    let port: u16 = answer
        .lines()
        .find_map(|l| l.strip_prefix("a=candidate:").filter(|c| c.contains("127.0.0.1")))
        .and_then(|c| c.split_whitespace().nth(5).and_then(|p| p.parse().ok()))
        .expect("candidate port");
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("attacker socket");
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    attacker.send_to(&stun_binding(&format!("{ufrag}:evil")), target).await.expect("stun sent");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for i in 0..3000u32 {
        let len = rng.random_range(1..1400);
        let mut datagram: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Cover every class of the RFC 7983 demultiplexer: STUN, DTLS, RTP/RTCP.
        datagram[0] = match i % 3 {
            0 => rng.random_range(0..4),
            1 => rng.random_range(20..64),
            _ => rng.random_range(128..192),
        };
        attacker.send_to(&datagram, target).await.expect("garbage sent");
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let received = receive_streams(&mut carol_rtc, [sender]).await;
    assert_identical_run(&received, "noisy-cam", SENT, "video/VP8");
    assert!(server.metric("switchboard_rtp_packets_in_total").await >= f64::from(SENT));
    // Without the password the attacker's check bound nothing, so the spray was dropped
    // before any connection read it, and not a byte went back to the attacker.
    assert_eq!(server.metric("switchboard_forged_ice_checks_total").await, 1.0);
    assert_eq!(server.metric("switchboard_unroutable_datagrams_total").await, 3000.0);
    let mut buffer = [0u8; 1500];
    assert!(tokio::time::timeout(Duration::from_millis(300), attacker.recv_from(&mut buffer)).await.is_err(), "the attacker heard nothing");
}

/// The load generator against a server: every client connects, the media sent reaches the
/// room's other participants, participants come and go under churn, and the report carries
/// the measurements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_runs_meetings_and_livestreams_against_a_server() {
    use switchboard::loadtest::{LoadSettings, Scenario, Target, Transport, Video};
    let server = TestServer::start(&[]).await;
    let authority = signaling::auth::TokenAuthority::new(server.config.auth.keys.clone(), server.config.auth.signing_key.clone());
    let video = Video { kbps: 300, fps: 30, keyframe_every: 60 };
    let settings = |scenario, participants| LoadSettings {
        transport: Transport::Udp,
        target: Target::Switchboard,
        url: format!("http://{}", server.http),
        scenario,
        rooms: 2,
        participants,
        speakers: 1,
        seconds: 2,
        lifetime: Duration::from_millis(1500),
        video,
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        server_pid: Some(std::process::id()),
    };

    // Meeting: 2 rooms of 3, everyone sends audio and video and receives the other two.
    let meeting = switchboard::loadtest::run(&settings(Scenario::Meeting, 3), &authority, |_| {}).await.expect("meeting run");
    assert_eq!((meeting.clients, meeting.connected, meeting.failed), (6, 6, 0), "{meeting:#?}");
    assert!(meeting.packets_sent > 1000, "{meeting:#?}");
    // Each packet reaches two others, less what was sent before they subscribed.
    let fanned = meeting.packets_received as f64 / meeting.packets_sent as f64;
    assert!(fanned > 1.6 && fanned <= 2.0, "received {fanned:.2}× what was sent: {meeting:#?}");
    assert!(meeting.loss < 0.01, "{meeting:#?}");
    assert_eq!(meeting.join_to_media_us.count, 6, "every client timed its first media");
    // Loss and delays are those of the measurement window: one delay for each packet in it.
    assert!(meeting.delay_us.count as u64 == meeting.window_packets_received && meeting.delay_us.max > 0, "{meeting:#?}");
    let server_usage = meeting.server.expect("the server's CPU and memory");
    assert!(server_usage.cpu_seconds > 0.0 && server_usage.rss_bytes > 0, "{server_usage:?}");
    assert_eq!(meeting.subscribed_tracks, 6 * 2 * 2, "each client got the others' audio and video");
    assert!(meeting.window_packets_received > 0 && meeting.window_packets_received < meeting.packets_received, "{meeting:#?}");
    assert!(meeting.memory_per_subscribed_track_bytes.is_some() && meeting.received_packets_per_server_cpu_second.is_some());
    // The subscribers' receiver reports reached the forwarder, which sizes the NACK caches
    // by the round trips they show (loopback: well under 50 ms).
    let [round_trips, seconds] =
        server.metrics(["switchboard_subscriber_round_trip_seconds_count", "switchboard_subscriber_round_trip_seconds_sum"]).await;
    assert!(round_trips > 0.0 && seconds / round_trips < 0.05, "{round_trips} round trips, {seconds} s in all");

    // Livestream: one publisher per room, three viewers who publish nothing.
    let live = switchboard::loadtest::run(&settings(Scenario::Livestream, 4), &authority, |_| {}).await.expect("livestream run");
    assert_eq!((live.connected, live.failed), (8, 0), "{live:#?}");
    let fanned = live.packets_received as f64 / live.packets_sent as f64;
    assert!(fanned > 2.4 && fanned <= 3.0, "each packet reaches the three viewers: {live:#?}");
    assert!(live.table().contains("forwarding delay"));

    // Churn: participants leave after 1.5 s and are replaced; the room keeps forwarding.
    let churn = switchboard::loadtest::run(&settings(Scenario::Churn, 3), &authority, |_| {}).await.expect("churn run");
    assert_eq!(churn.failed, 0, "{churn:#?}");
    assert!(churn.clients >= 12, "each of the 6 places joined at least twice: {churn:#?}");
    assert!(churn.connected + 6 >= churn.clients, "all but the last, cut short, connected: {churn:#?}");
    assert!(churn.packets_received > churn.packets_sent, "{churn:#?}");

    // The meeting again, every connection over ICE-TCP.
    let tcp_streams = server.metric("switchboard_ice_tcp_streams").await;
    let settings = LoadSettings { transport: Transport::Tcp, ..settings(Scenario::Meeting, 3) };
    let meeting = switchboard::loadtest::run(&settings, &authority, |_| {}).await.expect("meeting over TCP");
    assert_eq!((meeting.connected, meeting.failed), (6, 0), "{meeting:#?}");
    let fanned = meeting.packets_received as f64 / meeting.packets_sent as f64;
    assert!(fanned > 1.6 && fanned <= 2.0, "received {fanned:.2}× what was sent: {meeting:#?}");
    assert!(meeting.loss < 0.01 && meeting.subscribed_tracks == 6 * 2 * 2, "{meeting:#?}");
    assert!(meeting.table().contains("meeting / switchboard / tcp"), "{}", meeting.table());
    assert_eq!(tcp_streams, 0.0, "the UDP runs made no TCP stream");
}

/// The load generator's Janus dialect against a real Janus 1.1.2 VideoRoom (Debian's
/// `janus`, with the config the side-by-side bench uses): every client joins, publishes and
/// receives the others through Janus, so the comparison in docs/benchmarks.md measures a
/// Janus that actually forwarded the load. Janus and the clients run inside a network
/// namespace of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_runs_a_meeting_and_a_livestream_through_janus() {
    use switchboard::loadtest::{LoadSettings, Scenario, Target, Transport, Video};
    let Some(host_ip) = common::own_network("the_load_generator_runs_a_meeting_and_a_livestream_through_janus") else { return };
    let janus = common::Janus::start(host_ip);
    let settings = |scenario, participants| LoadSettings {
        target: Target::Janus,
        url: format!("ws://127.0.0.1:{}", janus.port),
        scenario,
        rooms: 1,
        participants,
        speakers: 1,
        seconds: 2,
        lifetime: Duration::from_secs(5),
        video: Video { kbps: 300, fps: 30, keyframe_every: 60 },
        client_ip: host_ip.into(),
        transport: Transport::Udp,
        server_pid: Some(janus.pid()),
    };
    // Tokens are not used by Janus.
    let authority = signaling::auth::TokenAuthority::new(Default::default(), String::new());

    let meeting = switchboard::loadtest::run(&settings(Scenario::Meeting, 3), &authority, |_| {}).await.expect("meeting run");
    assert_eq!((meeting.clients, meeting.connected, meeting.failed), (3, 3, 0), "{meeting:#?}");
    let fanned = meeting.packets_received as f64 / meeting.packets_sent as f64;
    assert!(fanned > 1.6 && fanned <= 2.0, "Janus forwarded each packet to the two others: {fanned:.2}, {meeting:#?}");
    assert_eq!(meeting.subscribed_tracks, 3 * 2 * 2, "each client got the others' audio and video");
    assert!(meeting.loss < 0.01 && meeting.delay_us.count as u64 == meeting.window_packets_received, "{meeting:#?}");
    assert!(meeting.server.is_some_and(|s| s.cpu_seconds > 0.0), "Janus's CPU was read: {meeting:#?}");

    let live = switchboard::loadtest::run(&settings(Scenario::Livestream, 4), &authority, |_| {}).await.expect("livestream run");
    assert_eq!((live.connected, live.failed), (4, 0), "{live:#?}");
    let fanned = live.packets_received as f64 / live.packets_sent as f64;
    assert!(fanned > 2.4 && fanned <= 3.0, "each packet reaches the three viewers: {live:#?}");
}

/// The priority of the first candidate line of `sdp` that contains `what`.
fn candidate_priority(sdp: &str, what: &str) -> u32 {
    let line =
        sdp.lines().find(|l| l.starts_with("a=candidate:") && l.contains(what)).unwrap_or_else(|| panic!("no {what} candidate:\n{sdp}"));
    line.split(' ').nth(3).and_then(|p| p.parse().ok()).expect("priority")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_whose_network_blocks_udp_publish_and_subscribe_over_ice_tcp() {
    let server = TestServer::start(&[]).await;

    let (mut carol, _) = server.joined("no-udp", "carol", &["subscribe"]).await;
    let mut carol_rtc = rtc_client::new_tcp_only_client().await;
    let (mut alice, alice_id) = server.joined("no-udp", "alice", &["publish"]).await;
    let opus = rtc_client::local_track("alice-stream", "alice-mic", "audio/opus");
    let vp8 = rtc_client::local_track("alice-stream", "alice-cam", "video/VP8");
    let mut answer = String::new();
    let (signal, answered) = (&mut alice, &mut answer);
    let (_alice_rtc, out) = rtc_client::publish_with(rtc_client::new_tcp_only_client().await, &[opus, vp8], move |offer| async move {
        let reply = signal.request(json!({"type": "publish_offer", "sdp": offer})).await;
        *answered = reply["sdp"].as_str().expect("publish answer").to_owned();
        answered.clone()
    })
    .await;
    // UDP first, and preferred: TCP is for the clients that have nothing else.
    assert!(candidate_priority(&answer, " udp ") > candidate_priority(&answer, "tcptype passive"), "{answer}");

    const SENT: u32 = 300;
    let audio = tokio::spawn(rtc_client::send_packets(out[0].clone(), SENT, 960));
    let video = tokio::spawn(rtc_client::send_packets(out[1].clone(), SENT, 3000));
    for _ in 0..2 {
        assert_eq!(carol.expect("track_published").await["track"]["participant_id"], alice_id.as_str());
    }
    assert!(answer_offers(&mut carol, &carol_rtc, Duration::from_millis(1500)).await >= 1);
    let received = receive_streams(&mut carol_rtc, [audio, video]).await;
    assert_identical_run(&received, "alice-mic", SENT, "audio/opus");
    assert_identical_run(&received, "alice-cam", SENT, "video/VP8");
    assert_eq!(server.metric("switchboard_ice_tcp_streams").await, 2.0, "both connections run on one TCP stream each");
    assert_eq!(server.metric("switchboard_ice_tcp_frames_dropped_total").await, 0.0);

    // Alice leaves: the server closes her stream, whatever her client does with it.
    assert_eq!(alice.request(json!({"type": "leave"})).await["type"], "ack");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.metric("switchboard_ice_tcp_streams").await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "Alice's stream is still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
