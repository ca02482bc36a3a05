//! The object cipher (DESIGN §9): media bytes encrypted in fixed segments of [`SEGMENT_LEN`]
//! plaintext bytes, so an object can be sealed while it streams and any byte range read back by
//! fetching and opening only the segments that hold it.
//!
//! Stored form: a [`HEADER_LEN`]-byte [`ObjectHeader`] — magic `JMO`, format, the DEK version, a
//! random 32-byte salt and a random 7-byte nonce prefix — then the segments, each its ciphertext and
//! a 16-byte GCM tag. Segments are RustCrypto's STREAM (`aead::stream::StreamBE32`) over
//! AES-256-GCM (aws-lc's, behind RustCrypto's trait: [`gcm`]): the nonce is the prefix, the
//! segment's 32-bit big-endian counter and a last-segment flag, so a segment moved, dropped,
//! repeated, or a stream cut at a segment boundary or extended past its last segment, fails to open. The key is per object: HKDF-SHA256 of the tenant DEK with
//! the salt, its info naming the format and the caller's context (tenant and storage key, each
//! length-prefixed), so
//! no two objects share a key and an object copied over another's key does not open there. Every
//! segment's associated data is the whole header, so a header edited in place fails too.
//!
//! Sizes: `sealed = HEADER_LEN + plain + TAG_LEN × segments`, where `segments = max(1, ⌈plain /
//! SEGMENT_LEN⌉)` (an empty object is one empty last segment); [`plain_len`] inverts it and refuses
//! lengths no object can have. [`span`] maps a plaintext range to the sealed range to fetch.

use std::ops::Range;

use aes_gcm::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::DataKey;
use super::CryptoError;

pub mod gcm;

use gcm::LcAes256Gcm;

/// Plaintext bytes per segment.
pub const SEGMENT_LEN: u64 = 64 * 1024;
/// GCM tag bytes per segment.
pub const TAG_LEN: u64 = 16;
/// Stored bytes of a full segment.
pub const SEALED_SEGMENT_LEN: u64 = SEGMENT_LEN + TAG_LEN;
/// Bytes before the first segment.
pub const HEADER_LEN: u64 = 48;
/// The only format so far.
pub const FORMAT_V1: u8 = 1;

const MAGIC: &[u8; 3] = b"JMO";
const SALT_LEN: usize = 32;
const PREFIX_LEN: usize = 7;
const HKDF_INFO: &[u8] = b"media-api object v1\0";

/// What precedes an object's segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHeader {
    /// The tenant DEK version the object key is derived from.
    pub dek_version: u32,
    salt: [u8; SALT_LEN],
    nonce_prefix: [u8; PREFIX_LEN],
}

impl ObjectHeader {
    /// A header with a fresh random salt and nonce prefix.
    fn fresh(dek_version: u32) -> Self {
        let mut header = Self { dek_version, salt: [0; SALT_LEN], nonce_prefix: [0; PREFIX_LEN] };
        rand::rngs::OsRng.fill_bytes(&mut header.salt);
        rand::rngs::OsRng.fill_bytes(&mut header.nonce_prefix);
        header
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN as usize] {
        let mut bytes = [0u8; HEADER_LEN as usize];
        bytes[..3].copy_from_slice(MAGIC);
        bytes[3] = FORMAT_V1;
        bytes[4..8].copy_from_slice(&self.dek_version.to_be_bytes());
        bytes[8..40].copy_from_slice(&self.salt);
        bytes[40..47].copy_from_slice(&self.nonce_prefix);
        bytes
    }

    /// Reads a header from the first [`HEADER_LEN`] bytes of an object; anything else (another
    /// magic or format, a set reserved byte, too few bytes) is [`CryptoError::Integrity`].
    pub fn parse(bytes: &[u8]) -> Result<Self, CryptoError> {
        let bytes = bytes.get(..HEADER_LEN as usize).ok_or(CryptoError::Integrity)?;
        if &bytes[..3] != MAGIC || bytes[3] != FORMAT_V1 || bytes[47] != 0 {
            return Err(CryptoError::Integrity);
        }
        let mut header = Self {
            dek_version: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            salt: [0; SALT_LEN],
            nonce_prefix: [0; PREFIX_LEN],
        };
        header.salt.copy_from_slice(&bytes[8..40]);
        header.nonce_prefix.copy_from_slice(&bytes[40..47]);
        Ok(header)
    }
}

/// Segments of an object of `plain` bytes (at least one).
pub fn segment_count(plain: u64) -> u64 {
    plain.div_ceil(SEGMENT_LEN).max(1)
}

/// Stored length of an object of `plain` bytes.
pub fn sealed_len(plain: u64) -> u64 {
    HEADER_LEN + plain + TAG_LEN * segment_count(plain)
}

/// Plaintext length of a stored object of `sealed` bytes; [`CryptoError::Integrity`] for a length
/// no object has (a cut or padded object).
pub fn plain_len(sealed: u64) -> Result<u64, CryptoError> {
    let body = sealed.checked_sub(HEADER_LEN + TAG_LEN).ok_or(CryptoError::Integrity)?;
    let segments = (body + TAG_LEN).div_ceil(SEALED_SEGMENT_LEN).max(1);
    let plain = sealed - HEADER_LEN - TAG_LEN * segments;
    if sealed_len(plain) != sealed {
        return Err(CryptoError::Integrity);
    }
    Ok(plain)
}

/// Where plaintext bytes `range` of an object of `plain` bytes are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Index of the first segment to fetch.
    pub first: u64,
    /// Index of the object's last segment (it opens with the last-segment flag).
    pub last_of_object: u64,
    /// Stored bytes to fetch: whole segments, from the first to the one holding the range's end.
    pub sealed: Range<u64>,
    /// Plaintext bytes to skip at the start of the first fetched segment.
    pub skip: u64,
}

/// The segments holding plaintext `range` of an object of `plain` bytes: a non-empty range within
/// it (or `0..0` of an empty object); anything else is [`CryptoError::Integrity`].
pub fn span(range: Range<u64>, plain: u64) -> Result<Span, CryptoError> {
    let empty_object = plain == 0 && range == (0..0);
    if !empty_object && (range.start >= range.end || range.end > plain || plain > u64::MAX / 2) {
        return Err(CryptoError::Integrity);
    }
    let first = range.start / SEGMENT_LEN;
    let end_segment = range.end.saturating_sub(1) / SEGMENT_LEN;
    let last_of_object = segment_count(plain) - 1;
    let start = HEADER_LEN + first * SEALED_SEGMENT_LEN;
    let end = (HEADER_LEN + (end_segment + 1) * SEALED_SEGMENT_LEN).min(sealed_len(plain));
    Ok(Span { first, last_of_object, sealed: start..end, skip: range.start - first * SEGMENT_LEN })
}

/// One object's key and header: seals or opens its segments, in any order.
pub struct ObjectCipher {
    stream: StreamBE32<LcAes256Gcm>,
    header: [u8; HEADER_LEN as usize],
}

impl ObjectCipher {
    /// The cipher of a new object under `dek` (fresh salt and nonce prefix). `context` names
    /// where the object lives (tenant, storage key): the same parts open it. Each part is
    /// length-prefixed in the key derivation, so no two different contexts derive alike.
    pub fn new_object(dek: &DataKey, context: &[&[u8]]) -> Self {
        Self::derive(dek, context, &ObjectHeader::fresh(dek.version))
    }

    /// The cipher of a stored object whose header is `header`; `dek` must be the version it names.
    pub fn existing(dek: &DataKey, context: &[&[u8]], header: &ObjectHeader) -> Result<Self, CryptoError> {
        if dek.version != header.dek_version {
            return Err(CryptoError::KeyMismatch);
        }
        Ok(Self::derive(dek, context, header))
    }

    fn derive(dek: &DataKey, context: &[&[u8]], header: &ObjectHeader) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        let lengths: Vec<[u8; 4]> =
            context.iter().map(|part| u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes()).collect();
        let mut info: Vec<&[u8]> = vec![HKDF_INFO];
        for (length, part) in lengths.iter().zip(context) {
            info.push(length);
            info.push(part);
        }
        Hkdf::<Sha256>::new(Some(&header.salt), dek.bytes())
            .expand_multi_info(&info, key.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let aead = LcAes256Gcm::new(&key);
        let stream = StreamBE32::from_aead(aead, header.nonce_prefix.as_slice().into());
        Self { stream, header: header.to_bytes() }
    }

    /// The header to store before the segments.
    pub fn header(&self) -> &[u8; HEADER_LEN as usize] {
        &self.header
    }

    /// Seals segment `index` in place: `buffer` holds its plaintext (a full segment unless `last`)
    /// and gets its ciphertext and tag.
    pub fn seal_segment(&self, index: u64, last: bool, buffer: &mut Vec<u8>) -> Result<(), CryptoError> {
        let position = u32::try_from(index).map_err(|_| CryptoError::Integrity)?;
        self.stream.encrypt_in_place(position, last, &self.header, buffer).map_err(|_| CryptoError::Integrity)
    }

    /// Opens segment `index` in place (`last`: the object's last segment); anything that does
    /// not authenticate there is [`CryptoError::Integrity`] and `buffer` is left unusable.
    pub fn open_segment(&self, index: u64, last: bool, buffer: &mut Vec<u8>) -> Result<(), CryptoError> {
        let position = u32::try_from(index).map_err(|_| CryptoError::Integrity)?;
        self.stream.decrypt_in_place(position, last, &self.header, buffer).map_err(|_| CryptoError::Integrity)
    }
}

/// Seals a stream: plaintext pushed in pieces of any size comes out as the header and whole
/// sealed segments. A full segment is held until more bytes come (only then is it known not to be
/// the last), so it keeps at most one segment of plaintext.
pub struct Sealer {
    cipher: ObjectCipher,
    pending: Vec<u8>,
    next: u64,
    started: bool,
}

impl Sealer {
    /// A sealer for a new object.
    pub fn new(cipher: ObjectCipher) -> Self {
        Self { cipher, pending: Vec::with_capacity(SEALED_SEGMENT_LEN as usize), next: 0, started: false }
    }

    /// Takes `data`, appending what is sealed so far (the header first) to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.start(out);
        while !data.is_empty() {
            if self.pending.len() as u64 == SEGMENT_LEN {
                self.seal_pending(false, out)?;
            }
            let room = SEGMENT_LEN as usize - self.pending.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = rest;
        }
        Ok(())
    }

    /// Seals what is held as the last segment and appends it to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.start(out);
        self.seal_pending(true, out)
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            out.extend_from_slice(self.cipher.header());
            self.started = true;
        }
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.cipher.seal_segment(self.next, last, &mut self.pending)?;
        hand_over(&mut self.pending, out);
        self.next += 1;
        Ok(())
    }
}

/// Opens the stored segments of a [`Span`] read in order: sealed bytes pushed in pieces of any
/// size come out as plaintext, one segment at a time, each only once it authenticated. Fewer or
/// more bytes than the span holds are [`CryptoError::Integrity`], never a short answer.
pub struct Opener {
    cipher: ObjectCipher,
    pending: Vec<u8>,
    next: u64,
    last_of_object: u64,
    remaining: u64,
}

impl Opener {
    /// An opener of the segments of `span`.
    pub fn new(cipher: ObjectCipher, span: &Span) -> Self {
        Self {
            cipher,
            pending: Vec::with_capacity(SEALED_SEGMENT_LEN as usize),
            next: span.first,
            last_of_object: span.last_of_object,
            remaining: span.sealed.end - span.sealed.start,
        }
    }

    /// Takes sealed bytes, appending the plaintext of every segment completed to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.remaining = self.remaining.checked_sub(data.len() as u64).ok_or(CryptoError::Integrity)?;
        while !data.is_empty() {
            if self.pending.len() as u64 == SEALED_SEGMENT_LEN {
                self.open_pending(out)?;
            }
            let room = SEALED_SEGMENT_LEN as usize - self.pending.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            self.pending.extend_from_slice(now);
            data = rest;
        }
        // A full segment opens at once unless it may be the span's end (opened by `finish`).
        if self.pending.len() as u64 == SEALED_SEGMENT_LEN && self.remaining > 0 {
            self.open_pending(out)?;
        }
        Ok(())
    }

    /// Opens the span's last segment; the whole span must have come.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if self.remaining != 0 || self.pending.is_empty() {
            return Err(CryptoError::Integrity);
        }
        self.open_pending(out)
    }

    fn open_pending(&mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if self.next > self.last_of_object {
            return Err(CryptoError::Integrity);
        }
        let last = self.next == self.last_of_object;
        self.cipher.open_segment(self.next, last, &mut self.pending)?;
        hand_over(&mut self.pending, out);
        self.next += 1;
        Ok(())
    }
}

/// Appends the finished segment in `pending` to `out` and empties `pending`: an empty `out` takes
/// the buffer itself (no copy; `pending` gets a fresh one), otherwise the bytes are copied.
fn hand_over(pending: &mut Vec<u8>, out: &mut Vec<u8>) {
    if out.is_empty() {
        let fresh = Vec::with_capacity(SEALED_SEGMENT_LEN as usize);
        *out = std::mem::replace(pending, fresh);
    } else {
        out.extend_from_slice(pending);
        pending.clear();
    }
}

/// Seals a whole object held in memory (tests, small objects).
pub fn seal_object(dek: &DataKey, context: &[&[u8]], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut sealer = Sealer::new(ObjectCipher::new_object(dek, context));
    let mut out = Vec::with_capacity(usize::try_from(sealed_len(plain.len() as u64)).unwrap_or(0));
    sealer.push(plain, &mut out)?;
    sealer.finish(&mut out)?;
    Ok(out)
}

/// Opens plaintext `range` of a stored object (`None`: all of it) held in memory, fetching from
/// `sealed` only the segments [`span`] names, as a ranged read would. `dek` must be the version its
/// header names.
pub fn open_object(
    dek: &DataKey,
    context: &[&[u8]],
    sealed: &[u8],
    range: Option<Range<u64>>,
) -> Result<Vec<u8>, CryptoError> {
    let plain = plain_len(sealed.len() as u64)?;
    let range = range.unwrap_or(0..plain);
    let header = ObjectHeader::parse(sealed)?;
    let span = span(range.clone(), plain)?;
    let mut opener = Opener::new(ObjectCipher::existing(dek, context, &header)?, &span);
    let mut out = Vec::new();
    opener.push(&sealed[span.sealed.start as usize..span.sealed.end as usize], &mut out)?;
    opener.finish(&mut out)?;
    let skip = span.skip as usize;
    Ok(out[skip..skip + (range.end - range.start) as usize].to_vec())
}

#[cfg(test)]
mod tests;
