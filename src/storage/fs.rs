//! Filesystem blob store: the embedded default (`./data/blobs`).
//!
//! Writes go to a temporary file under `<root>/.tmp` and are renamed into place only once the whole
//! stream was written and synced, so a reader never sees a partial object and a failed or abandoned
//! upload leaves nothing behind (the temporary file is removed on error and on drop). Presigned URLs
//! are signed links to the service's `/v1/blobs/…` route (see [`super::links`]).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use super::links::LinkSigner;
use super::{
    validate_key, BlobMeta, BlobObject, BlobStore, ByteRange, ByteStream, PresignGet, PresignPut, PresignedRequest,
    StorageError,
};

const BACKEND: &str = "fs";
const TMP_DIR: &str = ".tmp";
const READ_CHUNK: usize = 64 * 1024;

/// Blobs as files under a root directory.
#[derive(Debug)]
pub struct FsBlobStore {
    root: PathBuf,
    links: Arc<LinkSigner>,
}

/// Removes a temporary file unless the write it belongs to completed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn io_error(operation: &'static str) -> impl Fn(std::io::Error) -> StorageError {
    move |err| match err.kind() {
        std::io::ErrorKind::NotFound => StorageError::NotFound,
        _ => StorageError::backend(BACKEND, operation, err),
    }
}

impl FsBlobStore {
    /// Opens (creating if needed) the store rooted at `root`.
    pub async fn open(root: &Path, links: Arc<LinkSigner>) -> Result<Self, StorageError> {
        tokio::fs::create_dir_all(root.join(TMP_DIR)).await.map_err(io_error("open"))?;
        let root = tokio::fs::canonicalize(root).await.map_err(io_error("open"))?;
        Ok(Self { root, links })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        if key == TMP_DIR || key.starts_with(".tmp/") {
            return Err(StorageError::InvalidKey("the .tmp prefix is reserved".into()));
        }
        Ok(self.root.join(key))
    }

    async fn write_stream(file: &mut tokio::fs::File, mut body: ByteStream) -> Result<u64, StorageError> {
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StorageError::Source)?;
            file.write_all(&chunk).await.map_err(io_error("put"))?;
            written += chunk.len() as u64;
        }
        file.sync_all().await.map_err(io_error("put"))?;
        Ok(written)
    }
}

#[async_trait]
impl BlobStore for FsBlobStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn put(&self, key: &str, _content_type: &str, body: ByteStream) -> Result<u64, StorageError> {
        let target = self.path_of(key)?;
        let mut name = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut name);
        let mut temp = TempFile { path: self.root.join(TMP_DIR).join(hex::encode(name)), keep: false };
        let mut file = tokio::fs::File::create(&temp.path).await.map_err(io_error("put"))?;
        let written = Self::write_stream(&mut file, body).await?;
        drop(file);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_error("put"))?;
        }
        tokio::fs::rename(&temp.path, &target).await.map_err(io_error("put"))?;
        temp.keep = true;
        Ok(written)
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<BlobObject, StorageError> {
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path).await.map_err(io_error("get"))?;
        let metadata = file.metadata().await.map_err(io_error("get"))?;
        if !metadata.is_file() {
            return Err(StorageError::NotFound); // a "directory" made by longer keys is not an object
        }
        let total_size = metadata.len();
        let (first, last, served) = match range {
            Some(range) => {
                let (first, last) = range.resolve(total_size)?;
                (first, last, Some((first, last)))
            }
            None => (0, total_size.saturating_sub(1), None),
        };
        let content_length = if total_size == 0 { 0 } else { last - first + 1 };
        file.seek(SeekFrom::Start(first)).await.map_err(io_error("get"))?;
        let body = ReaderStream::with_capacity(file.take(content_length), READ_CHUNK).boxed();
        Ok(BlobObject { body, content_length, total_size, range: served })
    }

    async fn head(&self, key: &str) -> Result<BlobMeta, StorageError> {
        let metadata = tokio::fs::metadata(self.path_of(key)?).await.map_err(io_error("head"))?;
        if !metadata.is_file() {
            return Err(StorageError::NotFound);
        }
        Ok(BlobMeta { size: metadata.len(), content_type: None })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path_of(key)?).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(StorageError::backend(BACKEND, "delete", err)),
        }
    }

    async fn presign_get(&self, key: &str, options: &PresignGet) -> Result<PresignedRequest, StorageError> {
        validate_key(key)?;
        Ok(self.links.sign_get(key, options.ttl, &options.content_type, &options.content_disposition))
    }

    fn unsized_puts_unbounded(&self) -> bool {
        false
    }

    async fn presign_put(&self, key: &str, options: &PresignPut) -> Result<PresignedRequest, StorageError> {
        validate_key(key)?;
        Ok(self.links.sign_put(key, options.ttl, &options.content_type, options.content_length))
    }

    async fn check(&self) -> Result<(), StorageError> {
        let mut name = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut name);
        let probe = self.root.join(TMP_DIR).join(format!("ready-{}", hex::encode(name)));
        tokio::fs::write(&probe, b"ok").await.map_err(io_error("check"))?;
        tokio::fs::remove_file(&probe).await.map_err(io_error("check"))?;
        Ok(())
    }

    async fn abort_stale_uploads(&self, prefix: &str, older_than: std::time::Duration) -> Result<u64, StorageError> {
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut removed = 0u64;
        for dir in [
            self.root.join(TMP_DIR),
            self.path_of(&format!("{prefix}staging/x"))?.parent().map(Path::to_path_buf).unwrap_or_default(),
        ] {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_error("sweep")(err)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(io_error("sweep"))? {
                let modified = entry.metadata().await.and_then(|m| m.modified()).ok();
                if modified.is_some_and(|m| m < cutoff) && tokio::fs::remove_file(entry.path()).await.is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    async fn list_older_than(
        &self,
        prefix: &str,
        older_than: std::time::Duration,
    ) -> Result<Vec<String>, StorageError> {
        let cutoff = std::time::SystemTime::now() - older_than;
        // The directory holding every key that starts with `prefix` (a prefix names directories).
        let start = match prefix.rsplit_once('/') {
            Some((dir, _)) if !dir.is_empty() => self.path_of(dir)?,
            _ => self.root.clone(),
        };
        let mut keys = Vec::new();
        let mut dirs = vec![start];
        while let Some(dir) = dirs.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(io_error("list")(err)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(io_error("list"))? {
                let path = entry.path();
                let metadata = entry.metadata().await.map_err(io_error("list"))?;
                if path == self.root.join(TMP_DIR) {
                    continue;
                }
                if metadata.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Some(key) = path.strip_prefix(&self.root).ok().and_then(|p| p.to_str()) else { continue };
                let key = key.replace(std::path::MAIN_SEPARATOR, "/");
                if key.starts_with(prefix) && metadata.modified().is_ok_and(|m| m < cutoff) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }
}
