//! Helpers shared by the process tests.

use std::path::{Path, PathBuf};

/// A scratch directory removed when the test ends, failed or not, so that
/// failing runs do not fill the disk with replicas' preallocated logs.
pub struct Scratch(PathBuf);

impl Scratch {
    /// An empty directory path under the system's temporary directory,
    /// unique to this test process and `tag`.
    pub fn new(prefix: &str, tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("palisade-{prefix}-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Scratch(d)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
