//! The HTTP surface and the CLI: demo page, health, metrics, the development token
//! endpoint (embedded mode only) and `switchboard token`.

mod common;

use common::TestServer;

#[tokio::test]
async fn demo_page_health_and_metrics_are_served() {
    let server = TestServer::start(&[]).await;
    let (status, page) = server.get("/?room=r&name=n").await;
    assert_eq!(status, 200);
    assert!(page.contains("/meeting.js") && page.contains("/meeting.css") && page.contains("join-button"));
    let (status, meeting) = server.get("/meeting.js").await;
    assert_eq!(status, 200);
    assert!(meeting.contains("from '/switchboard.js'") && meeting.contains("getUserMedia"));
    let (status, style) = server.get("/meeting.css").await;
    assert_eq!(status, 200);
    assert!(style.contains("#videos"));
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

/// With `http.tls.self_signed`, the server makes a certificate for this machine's names at
/// first start and serves HTTPS and WSS on its one port: a client that trusts that
/// certificate (and checks the name `localhost` against it) gets the health check and joins
/// a room; a plain HTTP request to the port gets no HTTP answer; a second start reuses the
/// certificate.
#[tokio::test]
async fn tls_serves_https_and_wss_with_a_certificate_made_for_this_machine() {
    let dir = common::services::TempDir::new();
    let (cert, key) = (dir.path().join("tls/cert.pem"), dir.path().join("tls/key.pem"));
    let overrides = [
        ("SWITCHBOARD__HTTP__TLS__SELF_SIGNED", "true"),
        ("SWITCHBOARD__HTTP__TLS__CERT", cert.to_str().expect("a UTF-8 path")),
        ("SWITCHBOARD__HTTP__TLS__KEY", key.to_str().expect("a UTF-8 path")),
    ];
    let server = TestServer::start(&overrides).await;
    let pem = std::fs::read(&cert).expect("the certificate was made");
    let tls = common::tls_client(&pem);

    let mut stream = common::tls_connect(&tls, server.http).await;
    let response = common::http_exchange(&mut stream, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("ok"), "{response}");

    let stream = common::tls_connect(&tls, server.http).await;
    let url = format!("wss://localhost:{}/ws", server.http.port());
    let mut signal = common::Signal::upgrade(url, stream).await;
    let joined = signal.join(&server.token("tls-room", "ada", &["subscribe"])).await;
    assert_eq!(joined["type"], "joined", "{joined}");

    let mut plain = tokio::net::TcpStream::connect(server.http).await.expect("connects");
    let answer = common::http_exchange(&mut plain, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(!answer.contains("HTTP/1.1"), "plain HTTP on the TLS port: {answer:?}");

    let again = TestServer::start(&overrides).await;
    assert_eq!(std::fs::read(&cert).expect("still there"), pem, "the second start kept the certificate");
    let mut stream = common::tls_connect(&tls, again.http).await;
    let response = common::http_exchange(&mut stream, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
