//! The aggregator the fleet syncs to: in this process, or a child process (this binary's
//! hidden `aggregator` subcommand) that can be killed with SIGKILL and started again on the
//! same ports and data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleet_aggregator::{ServeConfig, Shared};

pub enum Aggregator {
    InProcess {
        quic: SocketAddr,
        http: SocketAddr,
        viewer: String,
        _shared: Arc<Shared>,
    },
    Child {
        child: Option<Child>,
        config: ServeConfig,
        viewer: String,
    },
}

/// API requests per second per token the simulation's aggregator takes: its audit reads every
/// courier's route back, one request or more each.
pub const API_RATE: u32 = 5_000;

impl Aggregator {
    /// Serves on `rt` in this process; `viewer` is a token its API takes.
    pub fn in_process(
        rt: &tokio::runtime::Runtime,
        data: &Path,
        certs: &Path,
        viewer: String,
    ) -> anyhow::Result<Self> {
        let shared = Shared::open_sled(data)?;
        let config = ServeConfig {
            api_rate: API_RATE,
            ..ServeConfig::loopback(data, certs)
        };
        let (quic, http, serving) =
            rt.block_on(fleet_aggregator::start(&config, shared.clone()))?;
        rt.spawn(serving);
        Ok(Self::InProcess {
            quic,
            http,
            viewer,
            _shared: shared,
        })
    }

    /// Starts `exe aggregator ...` on free loopback ports; `viewer` is a token its API takes.
    pub fn child(data: &Path, certs: &Path, viewer: String) -> anyhow::Result<Self> {
        let config = ServeConfig {
            data: data.to_path_buf(),
            certs: certs.to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], free_udp_port()?)),
            http: SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?)),
            api_rate: API_RATE,
        };
        let mut me = Self::Child {
            child: None,
            config,
            viewer,
        };
        me.start()?;
        Ok(me)
    }

    pub fn quic(&self) -> SocketAddr {
        match self {
            Self::InProcess { quic, .. } => *quic,
            Self::Child { config, .. } => config.listen,
        }
    }

    pub fn http(&self) -> SocketAddr {
        match self {
            Self::InProcess { http, .. } => *http,
            Self::Child { config, .. } => config.http,
        }
    }

    /// Its HTTP API, as a viewer.
    pub fn api(&self) -> crate::http::Api {
        let (Self::InProcess { viewer, .. } | Self::Child { viewer, .. }) = self;
        crate::http::Api {
            addr: self.http(),
            token: viewer.clone(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Child { child: Some(c), .. } => Some(c.id()),
            _ => None,
        }
    }

    /// SIGKILL (child only).
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let Self::Child { child, .. } = self else {
            anyhow::bail!(
                "the aggregator runs in this process: start it with --aggregator-process"
            );
        };
        if let Some(mut c) = child.take() {
            c.kill().context("killing the aggregator")?;
            c.wait()?;
        }
        Ok(())
    }

    /// (Re)starts the child on the same ports and data; returns once it listens.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let Self::Child { child, config, .. } = self else {
            return Ok(());
        };
        let exe = std::env::current_exe()?;
        let mut c = Command::new(exe)
            .arg("aggregator")
            .arg("--data")
            .arg(&config.data)
            .arg("--certs")
            .arg(&config.certs)
            .arg("--listen")
            .arg(config.listen.to_string())
            .arg("--http")
            .arg(config.http.to_string())
            .arg("--api-rate")
            .arg(config.api_rate.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the aggregator process")?;
        let stdout = c.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.starts_with("quic=") {
            let _ = c.kill();
            anyhow::bail!("the aggregator process did not start (said {line:?})");
        }
        *child = Some(c);
        Ok(())
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// Runs the aggregator in this process until killed (the child's side).
pub fn serve_child(config: &ServeConfig) -> anyhow::Result<()> {
    fleet_aggregator::run(config)
}

fn free_udp_port() -> std::io::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_tcp_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `addr` accepts TCP (the HTTP API is up).
pub fn wait_http(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
