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
/// Two processes starting at once cannot both create it, nor read it half written: the key is
/// written to a file of its own and then linked to its name, which fails when the name is taken —
/// the loser reads the winner's complete file.
pub fn load_or_create(dir: &Path, name: &str, generate: impl FnOnce() -> String) -> Result<String, DevKeyError> {
    let path = dir.join(name);
    let error = |reason: String| DevKeyError { path: path.clone(), reason };
    std::fs::create_dir_all(dir).map_err(|e| error(format!("cannot create the directory: {e}")))?;
    if let Some(text) = read_existing(&path).map_err(error)? {
        return Ok(text);
    }
    let text = generate();
    let draft = dir.join(format!(".{name}.{}.{}", std::process::id(), rand::random::<u64>()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&draft)
        .and_then(|mut file| file.write_all(text.as_bytes()).and_then(|()| file.sync_all()))
        .and_then(|()| std::fs::hard_link(&draft, &path));
    let _ = std::fs::remove_file(&draft);
    match written {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                "GENERATED A DEV KEY: fine for local development, never for production (set MEDIA_PROFILE=production and explicit keys)"
            );
            Ok(text)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            read_existing(&path).map_err(error)?.ok_or_else(|| error("vanished while being created".into()))
        }
        Err(err) => Err(error(format!("cannot create: {err}"))),
    }
}

/// The text of an existing key file, `None` when there is none.
fn read_existing(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            tracing::warn!(path = %path.display(), "using a generated dev key");
            Ok(Some(text))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("cannot read: {err}")),
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
