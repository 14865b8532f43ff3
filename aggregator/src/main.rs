//! `aggregator`: the central history of the fleet.

use clap::{Parser, Subcommand};
use fleet_net::pki::Pki;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "The fleet aggregator: QUIC ingest from devices, history in sled, HTTP JSON API",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand: `serve` with these options.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the aggregator (the default).
    Serve(ServeArgs),
    /// Manages the fleet PKI.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// History database directory.
    #[arg(long, default_value = "aggregator-data")]
    data: PathBuf,
    /// QUIC address devices sync to.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// PKI directory (made with `certs init`; created on first start if absent).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Creates the fleet CA, an empty revocation list and the aggregator's certificate.
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Extra DNS names or IPs for the aggregator's certificate (loopback is always in).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
    /// Issues a device certificate (`devices/ID.pem`, `devices/ID-key.pem`).
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        device: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revokes a device certificate: a running aggregator reads the list again within a
    /// second (or on SIGHUP) and closes the device's open connections.
    Revoke {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        device: String,
    },
}

fn main() -> anyhow::Result<()> {
    fleet_process::prepare();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Certs(c)) => certs(c),
    }
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, server_names } => {
            Pki::at(&dir).init(&server_names)?;
            println!(
                "fleet CA and aggregator certificate written to {}",
                dir.display()
            );
        }
        CertsCommand::Issue { dir, device, days } => {
            let files = Pki::at(&dir).issue_device(&device, days)?;
            println!("{}\n{}", files.cert.display(), files.key.display());
        }
        CertsCommand::Revoke { dir, device } => {
            Pki::at(&dir).revoke(&device)?;
            println!(
                "{device} revoked in {}; a running aggregator applies it within a second and closes the device's connections",
                Pki::at(&dir).crl().display()
            );
        }
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    fleet_aggregator::run(&fleet_aggregator::ServeConfig {
        data: args.data,
        listen: args.listen,
        http: args.http,
        certs: args.certs,
    })
}
