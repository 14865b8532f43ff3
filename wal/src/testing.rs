//! A small filesystem for full-disk tests (feature `testing`): a tmpfs of a few MiB mounted
//! on a temporary directory, filled and freed on demand. Mounting needs root (or
//! CAP_SYS_ADMIN); without it, [`SmallDisk::mount`] fails with the reason, so a test that
//! needs a full disk fails instead of passing without one.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A mounted tmpfs, unmounted on drop.
pub struct SmallDisk {
    dir: tempfile::TempDir,
    ballast: PathBuf,
    filling: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib` MiB.
    pub fn mount(mib: u64) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "full-disk tests mount a {mib} MiB tmpfs, which needs root (CAP_SYS_ADMIN): mount said {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let ballast = dir.path().join("ballast");
        Ok(Self {
            dir,
            ballast,
            filling: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk until a write fails, leaving at most `leave` bytes free.
    pub fn fill(&self, leave: u64) -> io::Result<()> {
        let free = crate::free_bytes(self.path())?;
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(&self.ballast)?;
        let chunk = vec![0xa5u8; 64 << 10];
        let mut left = free.saturating_sub(leave);
        while left > 0 {
            let n = chunk.len().min(left as usize);
            match file.write_all(&chunk[..n]) {
                Ok(()) => left -= n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills the disk at `bytes_per_s` on a thread of its own, as another program would,
    /// until it is full or [`SmallDisk::free`] is called.
    pub fn fill_gradually(&self, bytes_per_s: u64) -> io::Result<()> {
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(&self.ballast)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let chunk = vec![0xa5u8; 1 << 20];
            let started = Instant::now();
            let mut written = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                match file.write_all(&chunk) {
                    Ok(()) => written += chunk.len() as u64,
                    Err(_) => return,
                }
                let due = Duration::from_secs_f64(written as f64 / bytes_per_s as f64);
                std::thread::sleep(due.saturating_sub(started.elapsed()));
            }
        });
        *self.filling.lock().unwrap_or_else(|e| e.into_inner()) = Some((stop, thread));
        Ok(())
    }

    /// Frees what [`SmallDisk::fill`] or [`SmallDisk::fill_gradually`] took.
    pub fn free(&self) -> io::Result<()> {
        if let Some((stop, thread)) = self
            .filling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        match fs::remove_file(&self.ballast) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
