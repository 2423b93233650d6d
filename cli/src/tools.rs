//! Where the project-local tools live.
//!
//! `scripts/setup` installs anvil, forge and cast from npm into
//! `.tools/node_modules`; the npm packages ship the real Foundry binaries in
//! a per-platform package, which we run directly so that stopping a process
//! stops the node, not a Node.js wrapper around it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The HealthSense checkout: `HEALTHSENSE_HOME`, else the first ancestor of
/// the working directory, else of the running executable, that holds
/// `.tools/package.json`.
pub fn project_root() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("HEALTHSENSE_HOME") {
        return Ok(PathBuf::from(home));
    }
    let mut starts = vec![std::env::current_dir().context("reading the working directory")?];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    // Tests run from the crate directory; the manifest dir is a good last try.
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in starts {
        if let Some(root) = start.ancestors().find(|d| d.join(".tools/package.json").is_file()) {
            return Ok(root.to_path_buf());
        }
    }
    bail!("cannot find the HealthSense checkout (a folder with .tools/package.json); run from inside it or set HEALTHSENSE_HOME")
}

fn platform() -> Option<&'static str> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Some("linux-amd64"),
        ("linux", "aarch64") => Some("linux-arm64"),
        ("macos", "x86_64") => Some("darwin-amd64"),
        ("macos", "aarch64") => Some("darwin-arm64"),
        _ => None,
    }
}

/// Path of a Foundry binary (`anvil`, `forge`, `cast`): `HEALTHSENSE_<TOOL>`
/// if set, else the project-local install.
pub fn foundry_tool(root: &Path, tool: &str) -> Result<PathBuf> {
    let var = format!("HEALTHSENSE_{}", tool.to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let plat = platform().with_context(|| format!("no packaged {tool} for this platform; set {var}"))?;
    let p = root.join(format!(".tools/node_modules/@foundry-rs/{tool}-{plat}/bin/{tool}"));
    if p.is_file() {
        Ok(p)
    } else {
        bail!("{tool} is not installed at {}; run scripts/setup (or set {var})", p.display())
    }
}
