//! The `switchboard` binary: runs the server, issues tokens.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchboard::{serve, Settings};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "WebRTC signaling server and SFU")]
struct Cli {
    /// YAML configuration file (default: the embedded single-machine configuration).
    #[arg(long, short, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply the database migrations (`serve` applies them too) and exit.
    Migrate,
    /// Run a load test against a server (loopback): simulated WebRTC clients join rooms,
    /// publish and subscribe; prints a progress line each second, then a table (and JSON).
    Loadtest {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:7880")]
        url: String,
        /// meeting (N × N video), livestream (1 → N), audio (few speakers, many listeners),
        /// churn (meeting participants replaced every --lifetime seconds).
        #[arg(long, value_enum, default_value = "meeting")]
        scenario: switchboard::loadtest::Scenario,
        /// Rooms.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Participants per room.
        #[arg(long, default_value_t = 4)]
        participants: usize,
        /// Speakers per room (audio scenario).
        #[arg(long, default_value_t = 2)]
        speakers: usize,
        /// Seconds of media once everyone joined.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds a churn participant stays before it leaves and is replaced.
        #[arg(long, default_value_t = 5)]
        lifetime: u64,
        /// Video bitrate per publisher, kbit/s.
        #[arg(long, default_value_t = 800)]
        video_kbps: u32,
        /// Video frames per second.
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// The server's process id, to report its CPU seconds and memory.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print an access token.
    Token {
        /// The room (meeting id).
        #[arg(long)]
        room: String,
        /// The participant's identity.
        #[arg(long)]
        identity: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Grants: publish, subscribe, publish_data, record, admin (repeatable; default:
        /// publish, subscribe, publish_data).
        #[arg(long = "grant")]
        grants: Vec<String>,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The load generator's own WebRTC engine logs every connection at info; its report is
    // what matters there.
    let default_level = if matches!(cli.command, Some(Command::Loadtest { .. })) { "warn,rtc_dtls::config=error" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        // Colours for a terminal, plain text for log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let config = sb_config::Config::load(cli.config.as_deref()).context("loading configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let server = serve(Settings::from_config(&config)?).await?;
            println!("Switchboard is running: open http://{}/?room=demo&name=you", server.http_addr);
            stop_signal().await?;
            tracing::info!("shutting down");
            server.shutdown().await;
            Ok(())
        }
        Command::Migrate => {
            switchboard::backends::open_database(&config).await?;
            println!("{:?} database at {} is migrated", config.database.backend, config.database.url);
            Ok(())
        }
        Command::Loadtest { url, scenario, rooms, participants, speakers, seconds, lifetime, video_kbps, fps, server_pid, json } => {
            let settings = switchboard::loadtest::LoadSettings {
                url,
                scenario,
                rooms,
                participants,
                speakers,
                seconds,
                lifetime: std::time::Duration::from_secs(lifetime.max(1)),
                video: switchboard::loadtest::Video { kbps: video_kbps, fps: fps.max(1), keyframe_every: fps.max(1) * 2 },
                server_pid,
            };
            let authority = signaling::auth::TokenAuthority::new(config.auth.keys.clone(), config.auth.signing_key.clone());
            let report = switchboard::loadtest::run(&settings, &authority, |line| eprintln!("{line}")).await?;
            print!("{}", report.table());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Command::Token { room, identity, name, grants, ttl } => {
            let grants = if grants.is_empty() {
                signaling::auth::Grants::participant()
            } else {
                signaling::auth::Grants::from_names(grants.iter().map(String::as_str))?
            };
            let authority = signaling::auth::TokenAuthority::new(config.auth.keys.clone(), config.auth.signing_key.clone());
            let token = authority.issue(&room, &identity, name.as_deref(), grants, ttl.unwrap_or(config.auth.token_ttl_secs))?;
            println!("{token}");
            Ok(())
        }
    }
}

/// Waits for Ctrl-C or SIGTERM (how service managers and orchestrators stop a process).
async fn stop_signal() -> anyhow::Result<()> {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        ctrl_c = tokio::signal::ctrl_c() => ctrl_c.context("waiting for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    }
}
