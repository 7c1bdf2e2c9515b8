//! The repository's files, for tests that check what it ships.
use std::path::{Path, PathBuf};

/// The repository root (the `eds` crate's directory).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the repository root")
}

/// `relative` below the repository root.
pub fn path(relative: &str) -> PathBuf {
    root().join(relative)
}

/// A file's text; fails the test naming the file.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
