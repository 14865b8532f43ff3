//! `fleetctl keys`: the operator's release signing key.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use fleet_release::ReleaseSigner;
use fleet_release::keys::public_path;

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
    /// Make a new ed25519 release signing key: the secret key (mode 0600) and its public half
    /// (`<key>.pub`), which devices must trust.
    Init {
        /// Where the secret key goes; the public key is written beside it.
        #[arg(long, default_value = "release.key")]
        key: PathBuf,
        /// A note stored with the public key (who holds the key).
        #[arg(long, default_value = "fleet operator")]
        comment: String,
        /// Also install the public key in this directory of trusted release keys (a fleet
        /// directory's `release-keys/`, for example `certs/release-keys`).
        #[arg(long)]
        trust_dir: Option<PathBuf>,
    },
}

pub(crate) fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Init {
            key,
            comment,
            trust_dir,
        } => init(&key, &comment, trust_dir.as_deref()),
    }
}

fn init(
    key: &std::path::Path,
    comment: &str,
    trust_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !key.exists(),
        "{} already exists; a release key is never overwritten (choose another --key)",
        key.display()
    );
    let signer = ReleaseSigner::generate()?;
    let public = signer.write(key, comment)?;
    let id = signer.key_id();
    println!("release key {id}");
    println!("  secret: {} (keep it off devices)", key.display());
    println!("  public: {}", public.display());
    match trust_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let target = dir.join(format!("{id}.pub"));
            std::fs::copy(&public, &target)
                .with_context(|| format!("installing the public key as {}", target.display()))?;
            println!("  trusted by devices reading {}", dir.display());
        }
        None => println!(
            "devices trust it once {} is copied into their release keys directory \
             (edge-host --release-keys, default certs/release-keys/)",
            public_path(key).display()
        ),
    }
    Ok(())
}
