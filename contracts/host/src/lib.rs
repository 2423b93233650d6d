//! A Stylus host: executes the exact WASM programs `scripts/build-wasm`
//! writes, as a Nitro node would, on Wasmer (the runtime Nitro's Stylus VM
//! is a fork of) with the singlepass compiler.
//!
//! - [`Program`] loads a `.wasm` file, applies Nitro's activation checks
//!   ([`healthsense_wasm_check`]), refuses any import this host does not
//!   implement (naming it), and compiles it once with ink metering at
//!   Nitro's prices ([`pricing`]).
//! - [`World`] is a small in-memory chain: accounts with storage, programs
//!   or native contracts deployed at addresses, the `ecrecover` precompile
//!   at address 1, a journal that undoes a reverted frame's writes and logs.
//!   [`World::transact`] runs a transaction and keeps its effects;
//!   [`World::simulate`] runs it like `eth_call` and discards them.
//! - Every `vm_hooks` import the HealthSense programs use is implemented
//!   with the semantics of the SDK's `hostio` docs and Nitro's
//!   `user-host-trait`: a per-frame storage cache that reaches storage only
//!   when flushed (and so vanishes on revert), return data clipped to what
//!   exists, call status 0 (success) or 1 (revert), at most four log topics,
//!   a delegate call that runs the callee's code on the caller's storage
//!   with the caller's sender and value, `msg_reentrant` true when the
//!   acting address already has a non-delegate frame below (Nitro's
//!   `TxProcessor` rule), and a trap (`unreachable`, out of ink, a bad
//!   pointer) as a revert with empty return data.
//!
//! Status: executes both shipped programs; the conformance suite and the
//! differential fuzzer run them beside the TestVM build and the EVM edition
//! with no divergence. All programs share one Wasmer engine (a module must
//! be instantiated in a store of the engine that compiled it), metered by
//! this crate's own ink middleware (`meter`).
//!
//! [`Artifacts`] loads the two HealthSense programs from `target/stylus/`
//! (or `HEALTHSENSE_STYLUS_DIR`).

pub mod pricing;
mod exec;
mod meter;
mod world;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use alloy_primitives::{Address, B256, U256};
pub use exec::{native_ecrecover, HOSTIOS};
pub use world::{InkProfile, Log, Native, NativeCtx, Outcome, Tx, World, DEFAULT_GAS_LIMIT};

/// File the main program is built to, in the Stylus artifact directory.
pub const MAIN_FILE: &str = "healthsense_main.wasm";
/// File the records program is built to.
pub const RECORDS_FILE: &str = "healthsense_records.wasm";
/// Environment variable that points the host at another artifact directory.
pub const DIR_VAR: &str = "HEALTHSENSE_STYLUS_DIR";

/// Why a program could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The file could not be read.
    #[error("cannot read Stylus program {path}: {source} (build it with scripts/build-wasm)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Nitro's activation would refuse the module (a truncated or altered
    /// file lands here).
    #[error("Stylus program {name} would not activate on Nitro: {}", problems.join("; "))]
    Rejected {
        /// The file (or name given).
        name: String,
        /// Every rule it breaks.
        problems: Vec<String>,
    },
    /// The module imports a hostio this host does not implement.
    #[error("Stylus program {name} imports vm_hooks::{import}, which this host does not implement{detail}")]
    UnknownImport {
        /// The file (or name given).
        name: String,
        /// The import.
        import: String,
        /// Signature mismatch, when the name is known.
        detail: String,
    },
    /// Wasmer could not compile it.
    #[error("Stylus program {name} does not compile: {message}")]
    Compile {
        /// The file (or name given).
        name: String,
        /// Wasmer's message.
        message: String,
    },
}

/// A checked, compiled Stylus program; cheap to share.
pub struct Program {
    name: String,
    module: wasmer::Module,
    footprint: u16,
    len: usize,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("name", &self.name).field("bytes", &self.len).finish()
    }
}

impl Program {
    /// Reads, checks and compiles the program at `path`.
    pub fn load(path: &Path) -> Result<Arc<Self>, HostError> {
        let bytes = std::fs::read(path).map_err(|source| HostError::Read { path: path.to_path_buf(), source })?;
        Self::from_bytes(&path.display().to_string(), &bytes)
    }

    /// Checks and compiles `bytes`; `name` appears in errors.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Arc<Self>, HostError> {
        let report = healthsense_wasm_check::check(bytes)
            .map_err(|problems| HostError::Rejected { name: name.into(), problems })?;
        for import in &report.imports {
            exec::check_import(import).map_err(|detail| HostError::UnknownImport {
                name: name.into(),
                import: import.name.clone(),
                detail,
            })?;
        }
        let module = exec::compile(bytes)
            .map_err(|message| HostError::Compile { name: name.into(), message })?;
        Ok(Arc::new(Self { name: name.into(), module, footprint: report.footprint, len: bytes.len() }))
    }

    /// The name it was loaded under (its path for files).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size of the WASM in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the WASM is empty (never, for a program that loaded).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The directory the Stylus artifacts are read from: `HEALTHSENSE_STYLUS_DIR`
/// when set, else the workspace's `target/stylus/`.
pub fn stylus_dir() -> PathBuf {
    match std::env::var_os(DIR_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/stylus"),
    }
}

/// The HealthSense Stylus edition's two programs.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// Where they were read from.
    pub dir: PathBuf,
    /// The main program (`healthsense_main.wasm`).
    pub main: Arc<Program>,
    /// The records program (`healthsense_records.wasm`).
    pub records: Arc<Program>,
}

impl Artifacts {
    /// Loads both programs from `dir`.
    pub fn load(dir: &Path) -> Result<Self, HostError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            main: Program::load(&dir.join(MAIN_FILE))?,
            records: Program::load(&dir.join(RECORDS_FILE))?,
        })
    }

    /// Loads both programs from [`stylus_dir`].
    pub fn load_default() -> Result<Self, HostError> {
        Self::load(&stylus_dir())
    }
}
