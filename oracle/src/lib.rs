//! The HealthSense ward-hub oracle, laid out along the data path:
//!
//! [`protocol`] (topics, codes, the signed SenML envelope) ->
//! [`ingest`] (verify with [`devices`], commit to [`store`], acknowledge) ->
//! [`anchor`] (Merkle batches on chain through [`chain`]);
//! [`alerts`] scores each stored reading with [`news2`] and raises alerts;
//! [`archive`] seals a discharged stay, pins it to IPFS and puts its CID on chain;
//! [`api`] serves the read-only REST API and the dashboard;
//! with [`broker`] (embedded rumqttd), [`metrics`], [`health`] (readiness) and [`hub`] (start/stop)
//! around them. Configuration: [`config`]; operations guide:
//! `docs/ORACLE.md`; wire protocol: `docs/PROTOCOL.md`.
#![warn(missing_docs)]

pub mod acks;
pub mod alerts;
pub mod anchor;
mod announce;
pub mod api;
pub mod archive;
pub mod broker;
pub mod chain;
pub mod config;
pub mod devices;
pub mod health;
pub mod hub;
pub mod ingest;
pub mod metrics;
pub mod news2;
pub mod protocol;
pub mod store;
pub mod trend;

pub use config::Config;
pub use hub::{run, start, Options, RunningHub};

/// Caps glibc's malloc arenas at one per core (at least two). glibc gives a
/// thread that finds the arenas locked a new one, up to eight per core, and
/// each keeps the memory freed into it: at 2,000 beds the oracle held 96 MiB
/// with glibc's default and 56 MiB with two arenas (docs/BENCHMARKS.md,
/// "Oracle memory"). Call first in `main`, before other threads start.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        // SAFETY: mallopt sets an allocator parameter; no memory is touched.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, i32::try_from(arenas).unwrap_or(i32::MAX));
        }
    }
}
