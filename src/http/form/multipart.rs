//! A `multipart/form-data` reader (RFC 7578 over RFC 2046's framing) that hands the bytes of a
//! part on as slices of the chunks the connection delivered: no copy into a parser buffer.
//!
//! The general parser this replaces (multer) appends every incoming chunk to its own buffer and
//! cuts the part's data out of it — one copy of every byte of a file and a buffer that grows with
//! whatever the socket holds. Here the search for the delimiter (`CRLF--boundary`, found with
//! `memchr::memmem`) runs over the received chunk itself and the data before it is returned as a
//! `Bytes` slice of that chunk. Only when a chunk ends with what may be the start of a delimiter
//! are those few bytes (fewer than the delimiter) joined with the start of the next chunk, in a
//! buffer of at most twice the delimiter's length. Part headers and the short text parts before the
//! file are small and are joined into a buffer as they arrive (bounded by [`HEADERS_MAX`] per
//! part, and by the caller's prefix guard).
//!
//! What it reads: an optional preamble; per part a delimiter line (transport padding of spaces
//! and tabs allowed), its header lines up to an empty line, and its body up to the next
//! delimiter; the closing `--boundary--` ends the form (the epilogue is not read, unless asked for
//! with the rest of the body after a part: [`Multipart::into_body_and_after`]). The first
//! delimiter need not follow a line break (multer's reading: a preamble ending in a bare LF). The whole body is bounded by `max`
//! bytes ([`FormError::TooLarge`]).
//!
//! [`reference`] (tests and the `multipart` fuzz target) checks it against multer on generated forms
//! and arbitrary bytes.

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use memchr::memmem::Finder;

/// Longest header block of one part.
pub const HEADERS_MAX: usize = 8 * 1024;

/// An error of the body's source (the connection, a deadline, the prefix guard).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Why a form could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    /// The body's source failed.
    #[error("reading the body failed: {0}")]
    Source(#[source] SourceError),
    /// The body is longer than allowed.
    #[error("the body is longer than {max} bytes")]
    TooLarge {
        /// The bound.
        max: u64,
    },
    /// A text part is longer than the caller allows.
    #[error("a text part is longer than {max} bytes")]
    TextTooLong {
        /// The bound.
        max: usize,
    },
    /// Not a well-formed multipart body.
    #[error("{0}")]
    Malformed(&'static str),
}

/// Bytes read from a form.
pub type FormStream = BoxStream<'static, Result<Bytes, FormError>>;

/// The headers of a part that matter to a form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartHead {
    /// `name` of its `Content-Disposition`.
    pub name: Option<String>,
    /// `filename` of its `Content-Disposition`.
    pub filename: Option<String>,
    /// Its `Content-Type`, as sent.
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Inside a part's body.
    Body,
    /// Just after a delimiter.
    Delimiter,
    /// After the closing delimiter.
    Done,
}

/// A multipart body being read (see the module docs).
pub struct Multipart {
    source: BoxStream<'static, Result<Bytes, SourceError>>,
    /// Received and not consumed yet.
    pending: Bytes,
    /// Received, to be read after `pending` (the rest of a chunk whose start was joined).
    queued: Option<Bytes>,
    delimiter: Vec<u8>,
    finder: Finder<'static>,
    /// `--boundary`: the first delimiter, which (as multer, and browsers' tolerance, have it) need
    /// not follow a line break.
    opening: Finder<'static>,
    state: State,
    read: u64,
    max: u64,
}

impl Multipart {
    /// A reader of `source` with this boundary, refusing more than `max` bytes in all.
    pub fn new(source: BoxStream<'static, Result<Bytes, SourceError>>, boundary: &str, max: u64) -> Self {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        let finder = Finder::new(&delimiter).into_owned();
        let opening = Finder::new(&delimiter[2..]).into_owned();
        let pending = Bytes::new();
        Self { source, pending, queued: None, delimiter, finder, opening, state: State::Preamble, read: 0, max }
    }

    /// The next chunk of input: the queued rest of a chunk, else the source's next non-empty one.
    async fn input(&mut self) -> Result<Option<Bytes>, FormError> {
        if let Some(queued) = self.queued.take() {
            return Ok(Some(queued));
        }
        while let Some(chunk) = self.source.next().await {
            let chunk = chunk.map_err(FormError::Source)?;
            self.read += chunk.len() as u64;
            if self.read > self.max {
                return Err(FormError::TooLarge { max: self.max });
            }
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
        Ok(None)
    }

    /// Appends the next input to `pending` (a copy: only for delimiter lines and headers). A buffer
    /// of the reader's own grows in place, doubling, so headers sent a byte at a time cost linear
    /// copying, not quadratic.
    async fn more(&mut self, ended: &'static str) -> Result<(), FormError> {
        let chunk = self.input().await?.ok_or(FormError::Malformed(ended))?;
        if self.pending.is_empty() {
            self.pending = chunk;
            return Ok(());
        }
        let mut joined = match std::mem::take(&mut self.pending).try_into_mut() {
            Ok(own) => own,
            Err(shared) => {
                let mut copy = BytesMut::with_capacity((shared.len() + chunk.len()).max(2 * shared.len()));
                copy.extend_from_slice(&shared);
                copy
            }
        };
        joined.extend_from_slice(&chunk);
        self.pending = joined.freeze();
        Ok(())
    }

    /// The next slice of the current part's body, or `None` once its closing delimiter is consumed.
    async fn body_slice(&mut self) -> Result<Option<Bytes>, FormError> {
        // Before the first part the delimiter is `--boundary`, after it `CRLF--boundary`.
        let skip = if self.state == State::Preamble { 2 } else { 0 };
        let len = self.delimiter.len() - skip;
        loop {
            let found = if skip == 0 { self.finder.find(&self.pending) } else { self.opening.find(&self.pending) };
            if let Some(at) = found {
                if at > 0 {
                    return Ok(Some(self.pending.split_to(at)));
                }
                self.pending.advance(len);
                return Ok(None);
            }
            let keep = delimiter_start_at_end(&self.pending, &self.delimiter[skip..]);
            if self.pending.len() > keep {
                let take = self.pending.len() - keep;
                return Ok(Some(self.pending.split_to(take)));
            }
            let chunk = self.input().await?.ok_or(FormError::Malformed("the body ends inside a part"))?;
            if self.pending.is_empty() {
                self.pending = chunk;
                continue;
            }
            // `pending` may be the start of a delimiter: join it with no more of the chunk than a
            // delimiter's length, and read the rest of the chunk after it, as it is.
            let head = chunk.len().min(len);
            let mut joined = BytesMut::with_capacity(self.pending.len() + head);
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&chunk[..head]);
            self.pending = joined.freeze();
            if head < chunk.len() {
                self.queued = Some(chunk.slice(head..));
            }
        }
    }

    /// The next part's headers, or `None` after the closing delimiter. The rest of the current
    /// part (or the preamble) is skipped.
    pub async fn next_part(&mut self) -> Result<Option<PartHead>, FormError> {
        if matches!(self.state, State::Preamble | State::Body) {
            while self.body_slice().await?.is_some() {}
            self.state = State::Delimiter;
        }
        if self.state == State::Done {
            return Ok(None);
        }
        while self.pending.len() < 2 {
            self.more("the body ends after a boundary").await?;
        }
        if self.pending.starts_with(b"--") {
            self.state = State::Done;
            return Ok(None);
        }
        let line = self.line(b"\r\n", "a boundary line does not end").await?;
        if !line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            return Err(FormError::Malformed("a boundary is followed by other text on its line"));
        }
        while self.pending.len() < 2 {
            self.more("the body ends inside a part's headers").await?;
        }
        // The headers end at the first empty line (CRLF CRLF); lines end with CRLF or a bare LF,
        // and a bare-LF empty line ends them early (what follows it up to CRLF CRLF is ignored) —
        // multer's reading, through httparse.
        let block = if self.pending.starts_with(b"\r\n") {
            self.pending.advance(2);
            Bytes::new()
        } else {
            self.line(b"\r\n\r\n", "a part's headers do not end").await?
        };
        let mut head = PartHead::default();
        for line in block.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            parse_header(line, &mut head)?;
        }
        self.state = State::Body;
        Ok(Some(head))
    }

    /// `pending` up to `end` (consumed with it), reading more as needed, at most [`HEADERS_MAX`].
    async fn line(&mut self, end: &[u8], unterminated: &'static str) -> Result<Bytes, FormError> {
        // Where `end` may still start: what was searched is not searched again.
        let mut from = 0;
        loop {
            if let Some(at) = memchr::memmem::find(&self.pending[from..], end) {
                let line = self.pending.split_to(from + at);
                self.pending.advance(end.len());
                return Ok(line);
            }
            if self.pending.len() > HEADERS_MAX {
                return Err(FormError::Malformed("a part's headers are longer than 8 KiB"));
            }
            from = self.pending.len().saturating_sub(end.len() - 1);
            self.more(unterminated).await?;
        }
    }

    /// The current part's whole body, refused past `max` bytes.
    pub async fn text(&mut self, max: usize) -> Result<Bytes, FormError> {
        let mut text = BytesMut::new();
        while let Some(slice) = self.body_slice().await? {
            if text.len() + slice.len() > max {
                return Err(FormError::TextTooLong { max });
            }
            text.extend_from_slice(&slice);
        }
        self.state = State::Delimiter;
        Ok(text.freeze())
    }

    /// The next slice of the current part's body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, FormError> {
        if self.state != State::Body {
            return Ok(None);
        }
        let slice = self.body_slice().await?;
        if slice.is_none() {
            self.state = State::Delimiter;
            // The part ends only at a real delimiter: `--` or the end of its line must follow,
            // else the form is malformed (and the file would be cut short silently).
            self.delimiter_line_ends().await?;
        }
        Ok(slice)
    }

    /// Whether what follows a delimiter is `--` or padding and a line break (not consumed).
    async fn delimiter_line_ends(&mut self) -> Result<(), FormError> {
        loop {
            let rest = &self.pending[..];
            if rest.starts_with(b"--") {
                return Ok(());
            }
            let pad = rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
            match &rest[pad..] {
                [b'\r', b'\n', ..] => return Ok(()),
                [] | [b'\r'] | [b'-'] if pad <= HEADERS_MAX => {}
                _ => return Err(FormError::Malformed("a boundary is followed by other text on its line")),
            }
            self.more("the body ends after a boundary").await?;
        }
    }

    /// The bytes of the body consumed so far: after [`Multipart::next_part`], where the part's
    /// body begins.
    pub fn consumed(&self) -> u64 {
        let unread = self.pending.len() + self.queued.as_ref().map_or(0, Bytes::len);
        self.read - unread as u64
    }

    /// The current part's body as a stream of slices (the reader goes with it).
    pub fn into_body(self) -> FormStream {
        self.into_body_and_after().0
    }

    /// The current part's body as a stream of slices, and the body's raw bytes after it (its
    /// delimiter, any parts after it, the closing delimiter, the epilogue), which come once the
    /// part's stream has ended, still bounded by the reader's `max`. The second stream fails when
    /// the first was dropped or failed before its end.
    pub fn into_body_and_after(self) -> (FormStream, FormStream) {
        let (ended, when_ended) = futures::channel::oneshot::channel::<Multipart>();
        let body = futures::stream::unfold(Some((self, ended)), |state| async move {
            let (mut form, ended) = state?;
            match form.chunk().await {
                Ok(Some(slice)) => Some((Ok(slice), Some((form, ended)))),
                Ok(None) => {
                    // The reader goes on to whoever wants the rest.
                    let _ = ended.send(form);
                    None
                }
                Err(err) => {
                    form.state = State::Done;
                    Some((Err(err), None))
                }
            }
        })
        .boxed();
        let after = futures::stream::once(async move {
            let unfinished = FormError::Malformed("the part before it did not end");
            let mut form = when_ended.await.map_err(|_| unfinished)?;
            // The part's closing delimiter was consumed with its end: it comes first.
            let delimiter = Bytes::from(form.delimiter.clone());
            let pending = std::mem::take(&mut form.pending);
            let first = [delimiter, pending, form.queued.take().unwrap_or_default()];
            let first = futures::stream::iter(first).map(Ok);
            let rest = futures::stream::unfold(Some(form), |form| async move {
                let mut form = form?;
                match form.input().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(form))),
                    Ok(None) => None,
                    Err(err) => Some((Err(err), None)),
                }
            });
            let nonempty =
                |chunk: &Result<Bytes, FormError>| futures::future::ready(!matches!(chunk, Ok(c) if c.is_empty()));
            Ok::<_, FormError>(first.chain(rest).filter(nonempty))
        })
        .map(|opened| match opened {
            Ok(rest) => rest.boxed(),
            Err(err) => futures::stream::iter([Err(err)]).boxed(),
        })
        .flatten()
        .boxed();
        (body, after)
    }
}

/// How many bytes at the end of `data` could begin `delimiter` (fewer than its length).
fn delimiter_start_at_end(data: &[u8], delimiter: &[u8]) -> usize {
    let from = data.len().saturating_sub(delimiter.len() - 1);
    // The earliest candidate gives the longest match.
    memchr::memchr_iter(delimiter[0], &data[from..])
        .map(|i| from + i)
        .find(|&start| delimiter.starts_with(&data[start..]))
        .map_or(0, |start| data.len() - start)
}

/// Takes a part's `Content-Disposition` or `Content-Type` header line into `head`.
fn parse_header(line: &[u8], head: &mut PartHead) -> Result<(), FormError> {
    let colon = line.iter().position(|b| *b == b':').ok_or(FormError::Malformed("a part header has no colon"))?;
    let (name, value) = (&line[..colon], String::from_utf8_lossy(&line[colon + 1..]));
    if name.eq_ignore_ascii_case(b"content-disposition") {
        for (param, value) in disposition_params(value.trim()) {
            match param.to_ascii_lowercase().as_str() {
                // The first wins, as multer has it.
                "name" => _ = head.name.get_or_insert(value),
                "filename" => _ = head.filename.get_or_insert(value),
                _ => {}
            }
        }
    } else if name.eq_ignore_ascii_case(b"content-type") {
        head.content_type.get_or_insert_with(|| value.trim().to_owned());
    }
    Ok(())
}

/// The parameters of a `Content-Disposition` value (`form-data; name="a"; filename=b`), values
/// unquoted (`\` escapes the next character in a quoted value).
fn disposition_params(value: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = value.split_once(';').map_or("", |(_, params)| params);
    while !rest.is_empty() {
        let (name, after) = match rest.split_once('=') {
            Some((name, after)) => (name.trim(), after.trim_start()),
            None => break,
        };
        let mut value = String::new();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            rest = "";
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '"' => {
                        rest = quoted[i + 1..].split_once(';').map_or("", |(_, next)| next);
                        break;
                    }
                    c => value.push(c),
                }
            }
        } else {
            let (token, next) = after.split_once(';').unwrap_or((after, ""));
            value = token.trim().to_owned();
            rest = next;
        }
        params.push((name.to_owned(), value));
    }
    params
}

#[cfg(any(test, feature = "fuzzing"))]
pub mod reference;
#[cfg(test)]
mod tests;
