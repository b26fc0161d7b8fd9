//! Watching files for changes: one digest over their contents, compared on each poll. Used
//! for the TLS files and the JWT key file alike.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::digest;

/// A set of files and the digest of their contents when last looked at.
pub struct FileWatch {
    paths: Vec<PathBuf>,
    digest: Mutex<Vec<u8>>,
}

impl FileWatch {
    pub fn new(paths: Vec<PathBuf>) -> FileWatch {
        let d = files_digest(&paths);
        FileWatch {
            paths,
            digest: Mutex::new(d),
        }
    }

    /// Whether the contents changed since the last call (always true with `force`). The new
    /// digest is remembered either way, so a broken file is reported once, not every poll.
    pub fn changed(&self, force: bool) -> bool {
        let d = files_digest(&self.paths);
        let mut last = self.digest.lock().unwrap_or_else(|p| p.into_inner());
        let changed = force || *last != d;
        *last = d;
        changed
    }

    pub fn first(&self) -> Option<&Path> {
        self.paths.first().map(PathBuf::as_path)
    }
}

/// SHA-256 over the contents of `paths` (a missing file counts as a marker).
fn files_digest(paths: &[PathBuf]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in paths {
        match std::fs::read(p) {
            Ok(b) => {
                ctx.update(&(b.len() as u64).to_be_bytes());
                ctx.update(&b);
            }
            Err(_) => ctx.update(b"\0missing"),
        }
    }
    ctx.finish().as_ref().to_vec()
}
