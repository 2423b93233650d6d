//! Signing keys. An encrypted JSON keystore (password from a file, the
//! `HEALTHSENSE_PASSWORD` variable, or a prompt), or a raw key from the
//! `HEALTHSENSE_PRIVATE_KEY` variable only: never from a flag, where it would
//! land in shell history and process listings. Keys are never printed.

use std::path::{Path, PathBuf};

use alloy::signers::local::PrivateKeySigner;
use anyhow::{bail, Context, Result};

/// Environment variable that may hold a raw hex private key.
pub const PRIVATE_KEY_VAR: &str = "HEALTHSENSE_PRIVATE_KEY";
/// Environment variable that may hold the keystore password.
pub const PASSWORD_VAR: &str = "HEALTHSENSE_PASSWORD";

/// Where the signing key comes from.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyArgs {
    /// Encrypted JSON keystore (Web3 Secret Storage, as made by `cast wallet new`).
    #[arg(long, env = "HEALTHSENSE_KEYSTORE", global = true)]
    pub keystore: Option<PathBuf>,
    /// File whose first line is the keystore password.
    #[arg(long, env = "HEALTHSENSE_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
}

impl KeyArgs {
    /// Loads the signer, or says what to provide.
    pub fn signer(&self) -> Result<PrivateKeySigner> {
        if let Some(path) = &self.keystore {
            return open_keystore(path, self.password_file.as_deref());
        }
        if let Ok(raw) = std::env::var(PRIVATE_KEY_VAR) {
            // The parse error would echo the input; say only what is wrong.
            return raw
                .trim()
                .parse::<PrivateKeySigner>()
                .map_err(|_| anyhow::anyhow!("{PRIVATE_KEY_VAR} is not a 32-byte hex private key"));
        }
        bail!("no signing key: pass --keystore FILE (with --password-file or {PASSWORD_VAR}), or set {PRIVATE_KEY_VAR}")
    }

}

/// Decrypts a keystore with the password from `password_file`, else
/// `HEALTHSENSE_PASSWORD`, else a prompt.
pub fn open_keystore(path: &Path, password_file: Option<&Path>) -> Result<PrivateKeySigner> {
    let password = password(path, password_file)?;
    PrivateKeySigner::decrypt_keystore(path, password)
        .map_err(|e| anyhow::anyhow!("cannot open keystore {}: {e} (wrong password?)", path.display()))
}

fn password(keystore: &Path, password_file: Option<&Path>) -> Result<String> {
    if let Some(file) = password_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading password file {}", file.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_string());
    }
    if let Ok(p) = std::env::var(PASSWORD_VAR) {
        return Ok(p);
    }
    rpassword::prompt_password(format!("password of keystore {}: ", keystore.display()))
        .context("no keystore password: pass --password-file or set HEALTHSENSE_PASSWORD")
}
