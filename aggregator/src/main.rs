//! `aggregator`: the central history of the fleet.

use clap::{Parser, Subcommand};
use fleet_aggregator::auth::{Role, TokenFile};
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
    /// Manages the HTTP API's bearer tokens (roles: viewer, operator, admin). A running
    /// aggregator applies changes within a second.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Issues a token and prints it (only now: the aggregator keeps its hash).
    Issue {
        /// The fleet directory (where `api-tokens.json` is).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// viewer (queries, metrics), operator (releases, deployments), admin (keys, devices, tokens).
        #[arg(long)]
        role: Role,
        /// Who holds it.
        #[arg(long, default_value = "")]
        name: String,
        /// A customer's token (role viewer): it follows only this task on the live stream
        /// (`/api/v1/stream`: its courier's positions and its status) and reads nothing else.
        #[arg(long)]
        task: Option<String>,
    },
    /// Lists the tokens: id, role, name, when issued.
    List {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Revokes a token by id.
    Revoke {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        id: String,
    },
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
    /// Fleet directory: the PKI and the API tokens (made with `certs init`; created on first
    /// start if absent, with a first admin token in `admin.token`).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// HTTP API requests per second per token (bursts of twice that); past it, 429.
    #[arg(long, default_value_t = fleet_aggregator::auth::DEFAULT_RATE)]
    api_rate: u32,
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
    fleet_process::log_to_stderr("info");
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Certs(c)) => certs(c),
        Some(Command::Tokens(t)) => tokens(t),
    }
}

fn tokens(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Issue {
            dir,
            role,
            name,
            task,
        } => {
            let (record, secret) =
                TokenFile::in_dir(&dir).issue_scoped(role, &name, task.as_deref())?;
            eprintln!("token {} ({role}) issued; it is shown only now:", record.id);
            println!("{secret}");
        }
        TokensCommand::List { dir } => {
            for t in TokenFile::in_dir(&dir).load()? {
                println!(
                    "{}  {:<8}  {}  {}",
                    t.id,
                    t.role.to_string(),
                    t.issued_ms,
                    t.name
                );
            }
        }
        TokensCommand::Revoke { dir, id } => {
            anyhow::ensure!(
                TokenFile::in_dir(&dir).revoke(&id)?,
                "no token {id} in {}",
                dir.display()
            );
            println!("token {id} revoked; a running aggregator refuses it within a second");
        }
    }
    Ok(())
}

fn certs(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, server_names } => {
            Pki::at(&dir).init(&server_names)?;
            println!(
                "fleet CA and aggregator certificate written to {}",
                dir.display()
            );
            let tokens = TokenFile::in_dir(&dir);
            if let Some(secret) = tokens.bootstrap()? {
                println!(
                    "admin token for the HTTP API (also in {}):\n{secret}",
                    tokens.admin_token_path().display()
                );
            }
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
        api_rate: args.api_rate,
    })
}
