//! What a client says about an upload ([`Upload`]): declared types, filename, hint, and its length,
//! announced or probable ([`Expected`]), which the pipeline checks against the bytes.

use super::sniff::DeclaredBy;
use super::ByteStream;

/// What the client said about the file (everything is checked against the bytes).
#[derive(Debug, Default)]
pub struct Upload {
    /// Declared types and where they came from (the filename's extension is added by the pipeline).
    pub declared: Vec<(DeclaredBy, String)>,
    /// Original filename.
    pub filename: Option<String>,
    /// The jan `user_id` hint (recorded, never trusted).
    pub user_hint: Option<String>,
    /// The body's announced length, when known.
    pub content_length: Option<u64>,
    /// Without `content_length`: the length the body probably has (see [`Expected`]).
    pub expected: Option<Expected>,
}

/// A length a body probably has, from what the request says around it (a multipart form's file:
/// the form's `Content-Length` less what precedes the file and the closing delimiter), and what the
/// request holds after the body. The blob store may stream the body in one request announcing the
/// length and make a wrong guess good (see `BlobStore::put_expecting`).
pub struct Expected {
    /// The probable length of the body, in bytes.
    pub length: u64,
    /// The request's bytes after the body (read only when the body ends short of `length`).
    pub after: ByteStream,
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expected").field("length", &self.length).finish_non_exhaustive()
    }
}
