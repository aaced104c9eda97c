//! A real browser: two headless Chromium tabs open the demo page in one room and must decode
//! each other's video and audio, chat, and survive a dropped signaling connection. Needs Debian's `chromium` and `npm ci` in tests/browser,
//! which `./scripts/test` installs.

mod common;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_tabs_see_and_hear_each_other() {
    let server = TestServer::start(&[("SWITCHBOARD__SIGNALING__RESUME_GRACE_SECS", "10")]).await;
    let url = format!("http://{}", server.http);
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").arg("tests/browser/two_tabs.mjs").arg(url).output())
            .await
            .expect("the browser run finishes")
            .expect("node runs (./scripts/test installs Node's packages and Chromium)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("chat delivered"));
    assert!(stdout.contains("session resumed"));
}
