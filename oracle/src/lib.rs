//! The HealthSense ward-hub oracle, laid out along the data path:
//!
//! [`protocol`] (topics, codes, the signed SenML envelope) ->
//! [`ingest`] (verify with [`devices`], commit to [`store`], acknowledge) ->
//! [`anchor`] (Merkle batches on chain through [`chain`]);
//! [`alerts`] scores each stored reading with [`news2`] and raises alerts;
//! [`archive`] seals a discharged stay, pins it to IPFS and puts its CID on chain;
//! [`api`] serves the read-only REST API and the dashboard;
//! with [`broker`] (embedded rumqttd), [`metrics`], [`health`] (readiness),
//! [`priority`] (real-time CPU priority within a budget) and [`hub`]
//! (start/stop) around them. Configuration: [`config`]; operations guide:
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
pub mod priority;
pub mod protocol;
pub mod store;
pub mod trend;

pub use config::Config;
pub use hub::{run, start, Options, RunningHub};

/// The block size from which [`tune_malloc`] keeps glibc's arenas from
/// growing (twice glibc's starting threshold; the setting measured).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Tunes glibc's malloc for a long-running hub. Call first in `main`,
/// before other threads start.
///
/// - At most one arena per core (at least two). glibc gives a thread that
///   finds the arenas locked a new one, up to eight per core, and each keeps
///   the memory freed into it: at 2,000 beds the oracle held 96 MiB with
///   glibc's default and 56 MiB with two arenas (docs/BENCHMARKS.md, "Oracle
///   memory").
/// - The arenas never grow for a block of 256 KiB or more: one that no
///   freed space holds is mapped on its own, and unmapped when freed. By
///   default glibc raises that threshold to the size of each such block
///   freed, up to 32 MiB, so later large blocks grew the arenas and left
///   holes there that stayed resident: the heap in use stayed flat at 42
///   MiB while RSS grew 3-13 MiB from minute 2 to minute 10
///   (docs/BENCHMARKS.md, "twenty-first session").
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        // SAFETY: mallopt sets an allocator parameter; no memory is touched.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, i32::try_from(arenas).unwrap_or(i32::MAX));
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Runs test `name` (its full path) alone in a fresh copy of the test
/// binary, for a check that changes or reads something process-wide (the
/// allocator, every thread's priority). Returns true in that copy, which
/// then runs the check, and false in the calling test once the copy passed.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn in_a_fresh_test_process(name: &str) -> bool {
    const ALONE: &str = "HEALTHSENSE_TEST_ALONE";
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Whether glibc mapped the block at `p` on its own: bit 1 of the size
    /// word in its chunk header, just before the block.
    fn mapped_on_its_own(p: *const u8) -> bool {
        // SAFETY: `p` is a live block from glibc's malloc, which keeps the
        // chunk's size word in the eight bytes before it.
        unsafe { p.cast::<usize>().sub(1).read() & 2 != 0 }
    }

    #[test]
    fn a_large_block_freed_does_not_draw_later_large_blocks_into_the_arenas() {
        // glibc serves a block from space freed in an arena before it maps
        // one, and this process's arenas hold what other tests freed: the
        // check runs in a fresh copy of the test binary.
        if !crate::in_a_fresh_test_process("tests::a_large_block_freed_does_not_draw_later_large_blocks_into_the_arenas") {
            return;
        }
        super::tune_malloc();
        // Untuned, glibc would now raise its threshold to 8 MiB and grow an
        // arena for the next megabyte.
        // (black_box: an allocation never used may be optimised away.)
        drop(std::hint::black_box(Vec::<u8>::with_capacity(8 << 20)));
        let block = std::hint::black_box(Vec::<u8>::with_capacity(1 << 20));
        assert!(mapped_on_its_own(block.as_ptr()));
        let small = std::hint::black_box(Vec::<u8>::with_capacity(64 << 10));
        assert!(!mapped_on_its_own(small.as_ptr()));
    }
}
