//! The HTTP surface and the CLI: demo page, health, metrics, the development token
//! endpoint (embedded mode only) and `switchboard token`.

mod common;

use common::TestServer;

#[tokio::test]
async fn demo_page_health_and_metrics_are_served() {
    let server = TestServer::start(&[]).await;
    let (status, page) = server.get("/?room=r&name=n").await;
    assert_eq!(status, 200);
    assert!(page.contains("/switchboard.js") && page.contains("getUserMedia"));
    let (status, library) = server.get("/switchboard.js").await;
    assert_eq!(status, 200);
    assert!(library.contains("export class Switchboard"));
    assert_eq!(server.get("/healthz").await, (200, "ok".to_owned()));
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_rooms",
        "switchboard_participants",
        "switchboard_tracks",
        "switchboard_rtp_packets_in_total",
        "switchboard_rtp_bytes_out_total",
        "switchboard_nacks_total",
        "switchboard_plis_sent_total",
        "switchboard_signaling_messages_total{type=\"join\"}",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(name)), "{name} missing:\n{metrics}");
    }
    assert_eq!(server.get("/nope").await.0, 404);
}

#[tokio::test]
async fn development_tokens_only_in_embedded_mode() {
    let embedded = TestServer::start(&[]).await;
    let (status, body) = embedded.get("/dev/token?room=r&identity=ann&grants=subscribe").await;
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut signal = embedded.connect().await;
    let joined = signal.join(token["token"].as_str().expect("token")).await;
    assert_eq!(joined["participant"]["identity"], "ann");
    assert_eq!(embedded.get("/dev/token?room=r&identity=ann&grants=fly").await.0, 400);
    // Anyone on the machine may ask: never for admin.
    assert_eq!(embedded.get("/dev/token?room=r&identity=ann&grants=subscribe,admin").await.0, 403);
    // Names that would change an object's path or forge a log line are refused.
    for query in
        ["room=a%2Fb&identity=ann", "room=..&identity=ann", "room=r&identity=eve%0Aforged", "room=r&identity=", "room=&identity=ann"]
    {
        let (status, body) = embedded.get(&format!("/dev/token?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
    }

    let production =
        TestServer::start(&[("SWITCHBOARD__MODE", "production"), ("SWITCHBOARD__AUTH__KEYS__DEV", "a-production-secret-0123456789abcdef")])
            .await;
    assert_eq!(production.get("/dev/token?room=r&identity=ann").await.0, 404);
}

#[test]
fn cli_prints_a_token_the_server_accepts() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--room", "standup", "--identity", "zoe", "--grant", "subscribe", "--grant", "record"])
        .output()
        .expect("binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let config = common::test_config(&[]);
    let authority = signaling::auth::TokenAuthority::new(config.auth.keys, config.auth.signing_key);
    let claims = authority.verify(token.trim()).expect("valid token");
    assert_eq!((claims.room.as_str(), claims.sub.as_str()), ("standup", "zoe"));
    assert!(claims.grants.subscribe && claims.grants.record && !claims.grants.publish);

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["token", "--room", "r", "--identity", "z", "--grant", "fly"])
        .output()
        .expect("binary runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown grant `fly`"));
}
