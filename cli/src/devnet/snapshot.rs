//! anvil's chain snapshots, kept whole through a kill at any moment.
//!
//! anvil rewrites its `--dump-state` file in place (truncate, then write),
//! so a kill in the middle of a snapshot leaves a torn file, and anvil
//! refuses to start from one. anvil therefore writes to
//! `anvil-state.dump.json` only; the devnet copies each complete dump to
//! `anvil-state.json` (a temporary file, fsync, rename) and starts anvil
//! from that copy alone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

/// The kept snapshot and anvil's own dump, in the devnet's folder.
#[derive(Debug)]
pub struct Snapshots {
    /// The last complete snapshot: what anvil starts from.
    pub kept: PathBuf,
    /// What anvil writes every `--state-interval` and on exit.
    pub dump: PathBuf,
    /// The dump's modification time when last kept, so an unchanged dump is
    /// not parsed again.
    last: Option<SystemTime>,
}

/// What [`Snapshots::recover`] found before anvil starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    /// No snapshot: a new chain.
    Nothing,
    /// The kept snapshot, up to date.
    Kept,
    /// anvil's last dump was complete and is now the kept snapshot.
    Dump,
    /// anvil's last dump was torn (set aside under this name); the chain
    /// restarts from the kept snapshot, one interval or so older, if there
    /// is one, else as a new chain.
    TornDump(PathBuf),
}

impl Snapshots {
    /// The snapshots of the devnet in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { kept: dir.join("anvil-state.json"), dump: dir.join("anvil-state.dump.json"), last: None }
    }

    /// Before anvil starts: makes a complete dump the kept snapshot and sets
    /// a torn one aside. Fails, naming the file, when the kept snapshot
    /// itself is not a complete JSON document (anvil would refuse it too).
    pub fn recover(&mut self) -> Result<Recovered> {
        let found = if self.dump.exists() {
            match whole(&self.dump) {
                Some(bytes) => {
                    self.replace_kept(&bytes)?;
                    std::fs::remove_file(&self.dump).with_context(|| format!("removing {}", self.dump.display()))?;
                    Recovered::Dump
                }
                None => {
                    let aside = self.dump.with_extension("torn.json");
                    std::fs::rename(&self.dump, &aside).with_context(|| format!("setting the torn {} aside", self.dump.display()))?;
                    Recovered::TornDump(aside)
                }
            }
        } else if self.kept.exists() {
            Recovered::Kept
        } else {
            Recovered::Nothing
        };
        if self.kept.exists() && whole(&self.kept).is_none() {
            bail!(
                "{} is not a complete anvil state (cut short by a kill or a full disk?); move it aside to start a new chain",
                self.kept.display()
            );
        }
        Ok(found)
    }

    /// While anvil runs: copies its dump to the kept snapshot when it changed
    /// and is complete. Returns whether it did. A dump caught mid-write is
    /// left for the next call.
    pub fn keep(&mut self) -> Result<bool> {
        let Ok(modified) = std::fs::metadata(&self.dump).and_then(|m| m.modified()) else {
            return Ok(false);
        };
        if self.last == Some(modified) {
            return Ok(false);
        }
        let Some(bytes) = whole(&self.dump) else { return Ok(false) };
        self.replace_kept(&bytes)?;
        self.last = Some(modified);
        Ok(true)
    }

    /// Replaces the kept snapshot with `bytes`, atomically and durably.
    fn replace_kept(&self, bytes: &[u8]) -> Result<()> {
        let dir = self.kept.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.kept).with_context(|| format!("replacing {}", self.kept.display()))?;
        // The rename itself survives a power cut only once the folder is synced.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// `path`'s bytes when they are one whole JSON document, else `None`. A dump
/// cut short lacks its closing brace, so this tells torn from whole without
/// knowing anvil's format. The bytes checked are the bytes kept: anvil may
/// start its next rewrite at any moment after they were read.
fn whole(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok().then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE: &str = r#"{"block":{"number":"0x7"},"accounts":{}}"#;

    fn folder() -> (tempfile::TempDir, Snapshots) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Snapshots::new(tmp.path());
        (tmp, s)
    }

    #[test]
    fn a_new_folder_is_a_new_chain() {
        let (_tmp, mut s) = folder();
        assert_eq!(s.recover().unwrap(), Recovered::Nothing);
        assert!(!s.keep().unwrap(), "nothing to keep before anvil dumps");
    }

    #[test]
    fn a_whole_dump_becomes_the_kept_snapshot() {
        let (_tmp, mut s) = folder();
        std::fs::write(&s.kept, r#"{"old":true}"#).unwrap();
        std::fs::write(&s.dump, WHOLE).unwrap();
        assert_eq!(s.recover().unwrap(), Recovered::Dump);
        assert_eq!(std::fs::read_to_string(&s.kept).unwrap(), WHOLE);
        assert!(!s.dump.exists());
    }

    #[test]
    fn a_torn_dump_is_set_aside_and_the_kept_snapshot_stays() {
        for torn in ["", &WHOLE[..WHOLE.len() - 1], &WHOLE[..9]] {
            let (_tmp, mut s) = folder();
            std::fs::write(&s.kept, r#"{"old":true}"#).unwrap();
            std::fs::write(&s.dump, torn).unwrap();
            let Recovered::TornDump(aside) = s.recover().unwrap() else { panic!("{torn:?} is torn") };
            assert_eq!(std::fs::read_to_string(aside).unwrap(), torn, "the torn dump is kept for a look");
            assert_eq!(std::fs::read_to_string(&s.kept).unwrap(), r#"{"old":true}"#);
            assert!(!s.dump.exists(), "anvil starts without the torn file");
        }
    }

    #[test]
    fn a_torn_dump_without_a_kept_snapshot_is_set_aside_for_a_new_chain() {
        let (_tmp, mut s) = folder();
        std::fs::write(&s.dump, "").unwrap();
        assert!(matches!(s.recover().unwrap(), Recovered::TornDump(_)));
        assert!(!s.kept.exists() && !s.dump.exists(), "anvil starts a new chain");
    }

    #[test]
    fn a_torn_kept_snapshot_is_an_error_that_names_it() {
        let (_tmp, mut s) = folder();
        std::fs::write(&s.kept, "").unwrap();
        let e = s.recover().unwrap_err().to_string();
        assert!(e.contains("anvil-state.json") && e.contains("move it aside"), "{e}");
        assert_eq!(std::fs::read_to_string(&s.kept).unwrap(), "", "nothing is deleted");
    }

    #[test]
    fn keep_copies_each_whole_dump_once_and_skips_a_torn_one() {
        let (_tmp, mut s) = folder();
        std::fs::write(&s.dump, WHOLE).unwrap();
        assert!(s.keep().unwrap());
        assert_eq!(std::fs::read_to_string(&s.kept).unwrap(), WHOLE);
        assert!(!s.keep().unwrap(), "an unchanged dump is not copied again");
        // anvil caught mid-write: the kept snapshot stays whole.
        std::fs::write(&s.dump, &WHOLE[..20]).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        std::fs::File::options().write(true).open(&s.dump).unwrap().set_modified(later).unwrap();
        assert!(!s.keep().unwrap());
        assert_eq!(std::fs::read_to_string(&s.kept).unwrap(), WHOLE);
        // Whole again: kept.
        std::fs::write(&s.dump, r#"{"block":{"number":"0x8"}}"#).unwrap();
        std::fs::File::options().write(true).open(&s.dump).unwrap().set_modified(later + std::time::Duration::from_secs(1)).unwrap();
        assert!(s.keep().unwrap());
        assert!(std::fs::read_to_string(&s.kept).unwrap().contains("0x8"));
    }
}
