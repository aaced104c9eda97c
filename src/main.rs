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
    /// `self-signed`: serve HTTPS and WSS with a certificate made for this machine at first
    /// start (kept in `http.tls.cert` and `key`, default tls/cert.pem and tls/key.pem).
    #[arg(long, global = true, value_enum)]
    tls: Option<TlsMode>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How `--tls` sets up HTTPS.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TlsMode {
    /// A self-signed certificate for this machine's names.
    SelfSigned,
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
        /// A YAML file with the load (the flags' names in snake_case); flags override it.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        spec: switchboard::loadtest::LoadSpec,
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
    let mut config = sb_config::Config::load(cli.config.as_deref()).context("loading configuration")?;
    if cli.tls == Some(TlsMode::SelfSigned) {
        config.http.tls.self_signed = true;
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let server = serve(Settings::from_config(&config)?).await?;
            println!("Switchboard is running: open {}/?room=demo", server.base_url);
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
        Command::Loadtest { file, spec, server_pid, json } => {
            let spec = match file {
                Some(path) => spec.or(switchboard::loadtest::LoadSpec::from_yaml_file(&path)?),
                None => spec,
            };
            let settings = spec.settings(server_pid);
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
