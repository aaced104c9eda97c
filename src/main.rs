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
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        // Colours for a terminal, plain text for log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let cli = Cli::parse();
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
