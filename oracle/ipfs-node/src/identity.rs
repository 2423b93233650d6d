//! The node's libp2p identity, kept in the repository so the peer ID that
//! `/api/v0/id` reports survives restarts (as Kubo keeps it in its config).

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::Path;

use anyhow::Context;
use rust_ipfs::Keypair;

/// File name of the identity inside the repository.
pub(crate) const IDENTITY_FILE: &str = "identity.key";

/// Loads the repository's keypair, creating an Ed25519 one on first start.
pub(crate) fn load_or_create(repo: &Path) -> anyhow::Result<Keypair> {
    let path = repo.join(IDENTITY_FILE);
    if path.exists() {
        load(&path)
    } else {
        create(&path)
    }
}

fn create(path: &Path) -> anyhow::Result<Keypair> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .context("cannot encode the new node identity")?;
    let mut options = OpenOptions::new();
    // create_new: if another start raced us, keep its key rather than overwrite it.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write the node identity {}", path.display()))?;
            Ok(keypair)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => load(path),
        Err(e) => {
            Err(e).with_context(|| format!("cannot create the node identity {}", path.display()))
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Keypair> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the node identity {}", path.display()))?;
    Keypair::from_protobuf_encoding(&bytes).with_context(|| {
        format!("{} is not a libp2p private key; restore it from a backup, or remove it to start with a new peer ID", path.display())
    })
}
