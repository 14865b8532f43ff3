//! What a module instance can reach, and how a call into it is bounded.
//!
//! A guest gets the WASI interfaces a std `wasm32-wasip2` component imports, with nothing
//! granted: no preopened directories, no environment or arguments, no sockets (every address
//! is denied), an empty stdin, stdout discarded; its stderr is captured (bounded) so a panic
//! message reaches our log. Clocks and randomness are readable but no module output may depend
//! on them. A scorer additionally imports `inference` (models registered on the host).
//! Every call runs under an epoch deadline; linear memory is capped and a failed grow traps.

use std::time::Duration;

use thiserror::Error;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder, Trap, WasmBacktrace};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::engine::SandboxEngine;
use crate::inference::InferenceCtx;

/// Bytes of a module's stderr kept per instance.
const STDERR_CAPACITY: usize = 16 << 10;

/// The data of one module instance's store: one field per capability.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    stderr: MemoryOutputPipe,
    /// Models this instance may run (scorers only; empty for other kinds).
    pub(crate) inference: InferenceCtx,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl HostState {
    /// A fresh store for one instance, with the sandbox limits applied.
    pub fn new_store(engine: &SandboxEngine, inference: InferenceCtx) -> Store<Self> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(engine.limits().memory_bytes)
            .trap_on_grow_failure(true)
            .instances(16)
            .build();
        let state = Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            stderr,
            inference,
        };
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(engine.deadline_ticks());
        store
    }

    /// What the module wrote to stderr so far (lossy UTF-8, trimmed).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents())
            .trim()
            .to_string()
    }
}

/// How a call into a module failed. The instance is unusable after any of these but
/// [`ModuleError::Returned`] and [`ModuleError::Contract`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The call ran past its CPU deadline.
    #[error("deadline of {0:?} exceeded")]
    Deadline(Duration),
    /// Linear memory would have grown past the cap.
    #[error("memory limit of {0} bytes exceeded")]
    OutOfMemory(usize),
    /// The wasm stack overflowed (runaway recursion).
    #[error("stack overflow")]
    StackOverflow,
    /// Rust code in the module panicked; the message is from its stderr.
    #[error("panicked: {0}")]
    Panic(String),
    /// Any other trap.
    #[error("trapped: {0}")]
    Trap(String),
    /// The module returned an error value.
    #[error("returned an error: {0}")]
    Returned(String),
    /// The module returned something that breaks its contract (wrong counts, sizes).
    #[error("broke its contract: {0}")]
    Contract(String),
}

impl ModuleError {
    /// The kind of failure, as dead letters record it.
    pub fn cause(&self) -> fleet_proto::record::FailureCause {
        use fleet_proto::record::FailureCause;
        match self {
            Self::Deadline(_) => FailureCause::Deadline,
            Self::OutOfMemory(_) => FailureCause::MemoryCap,
            Self::StackOverflow => FailureCause::StackOverflow,
            Self::Panic(_) => FailureCause::Panic,
            Self::Trap(_) => FailureCause::Trap,
            Self::Returned(_) => FailureCause::Returned,
            Self::Contract(_) => FailureCause::Contract,
        }
    }

    /// Whether the instance must be re-created before the next call.
    pub fn poisons_instance(&self) -> bool {
        !matches!(self, Self::Returned(_) | Self::Contract(_))
    }

    /// Classifies an error from a call, using what the module printed to stderr.
    pub(crate) fn from_call(err: wasmtime::Error, engine: &SandboxEngine, stderr: String) -> Self {
        // The root cause without the (possibly thousands of frames long) wasm backtrace,
        // plus the innermost guest function.
        let root = err.root_cause().to_string();
        let at = err
            .downcast_ref::<WasmBacktrace>()
            .and_then(|bt| bt.frames().first())
            .and_then(|f| f.func_name().map(str::to_string))
            .map(|f| format!(" in {f}"))
            .unwrap_or_default();
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Self::Deadline(engine.limits().deadline),
            Some(Trap::StackOverflow) => Self::StackOverflow,
            Some(Trap::UnreachableCodeReached) if stderr.contains("panicked") => {
                Self::Panic(panic_message(&stderr))
            }
            _ if root.contains("growing memory") || stderr.contains("memory allocation of") => {
                Self::OutOfMemory(engine.limits().memory_bytes)
            }
            _ if stderr.is_empty() => Self::Trap(format!("{root}{at}")),
            _ => Self::Trap(format!("{root}{at}; stderr: {stderr}")),
        }
    }
}

/// The "panicked at ..." part of a Rust panic report, without the backtrace hint.
fn panic_message(stderr: &str) -> String {
    let start = stderr.find("panicked").unwrap_or(0);
    stderr[start..]
        .lines()
        .take_while(|l| !l.starts_with("note: run with"))
        .collect::<Vec<_>>()
        .join(" ")
}
