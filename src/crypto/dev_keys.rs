//! Generated dev key files: created once with mode 0600, read back on later starts, announced with a
//! loud warning because such keys are only as safe as the developer's disk.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a dev key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("dev key file {path}: {reason}")]
pub struct DevKeyError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Reads `dir/name`, or creates it with `generate()`'s text (mode 0600) when it does not exist yet.
/// Two processes starting at once cannot both create it: creation is exclusive, and the loser reads
/// the winner's file.
pub fn load_or_create(dir: &Path, name: &str, generate: impl FnOnce() -> String) -> Result<String, DevKeyError> {
    let path = dir.join(name);
    let error = |reason: String| DevKeyError { path: path.clone(), reason };
    std::fs::create_dir_all(dir).map_err(|e| error(format!("cannot create the directory: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            let text = generate();
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| error(format!("cannot write: {e}")))?;
            tracing::warn!(
                path = %path.display(),
                "GENERATED A DEV KEY: fine for local development, never for production (set MEDIA_PROFILE=production and explicit keys)"
            );
            Ok(text)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path).map_err(|e| error(format!("cannot read: {e}")))?;
            tracing::warn!(path = %path.display(), "using a generated dev key");
            Ok(text)
        }
        Err(err) => Err(error(format!("cannot create: {err}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_generated_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "k", || "one".into()).unwrap();
        let second = load_or_create(dir.path(), "k", || "two".into()).unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("k")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
