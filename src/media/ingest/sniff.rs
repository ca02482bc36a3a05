//! Content types: what the bytes are (sniffed with `infer`, never taken from the client), whether
//! that type is allowed, and whether every type the client declared agrees with it.
//!
//! Types are compared in a canonical form: lowercase, parameters dropped, and common aliases folded
//! (`image/jpg` and `image/pjpeg` are JPEG, `image/x-png` is PNG, `image/heif` is HEIC, …).
//! `application/octet-stream` and an absent type declare nothing — except as the type of a filename's
//! extension (`x.exe`), which is a declaration like any other.

/// Bytes read before the type is decided (or the whole body, when shorter).
pub const SNIFF_BYTES: usize = 512;

pub use crate::domain::mime::{canonical, DEFAULT_ALLOWED};

/// Where a declared type came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclaredBy {
    /// The request's `Content-Type`.
    Header,
    /// The multipart part's `Content-Type`.
    Part,
    /// The data URL's media type.
    DataUrl,
    /// The remote server's `Content-Type`.
    Remote,
    /// `prepare-upload`'s `mime_type`.
    Prepared,
    /// The filename's extension (through `mime_guess`).
    Filename,
}

impl DeclaredBy {
    fn describe(self) -> &'static str {
        match self {
            Self::Header => "the Content-Type header",
            Self::Part => "the multipart part's Content-Type",
            Self::DataUrl => "the data URL",
            Self::Remote => "the remote server's Content-Type",
            Self::Prepared => "the prepared upload's mime_type",
            Self::Filename => "the filename's extension",
        }
    }
}

/// Why the content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// The sniffed type is not in the allowlist (or nothing was recognised).
    #[error("the content is {found}, which is not an accepted type (accepted: {accepted})")]
    Unsupported {
        /// What the bytes are, or `an unknown type`.
        found: String,
        /// The allowlist.
        accepted: String,
    },
    /// A declared type disagrees with the bytes.
    #[error("{by} says {declared} but the content is {sniffed}")]
    Mismatch {
        /// Where the declaration came from.
        by: &'static str,
        /// What was declared.
        declared: String,
        /// What the bytes are.
        sniffed: String,
    },
}

/// The content types accepted, in canonical form.
#[derive(Debug, Clone)]
pub struct Allowlist {
    types: Vec<String>,
}

impl Allowlist {
    /// An allowlist from type names (canonicalised).
    pub fn new<S: AsRef<str>>(types: &[S]) -> Self {
        Self { types: types.iter().filter_map(|t| canonical(t.as_ref())).collect() }
    }

    /// Whether a canonical type is allowed.
    pub fn allows(&self, canonical: &str) -> bool {
        self.types.iter().any(|t| t == canonical)
    }

    /// The sniffed, allowed type of `prefix` (the first bytes of the content), after checking that
    /// every declaration agrees with it.
    pub fn check(&self, prefix: &[u8], declared: &[(DeclaredBy, String)]) -> Result<String, TypeError> {
        let sniffed = infer::get(prefix).and_then(|kind| canonical(kind.mime_type()));
        let Some(sniffed) = sniffed.filter(|t| self.types.contains(t)) else {
            return Err(TypeError::Unsupported {
                found: infer::get(prefix).map_or_else(|| "an unknown type".to_owned(), |k| k.mime_type().to_owned()),
                accepted: self.types.join(", "),
            });
        };
        for (by, declared) in declared {
            // A header may say "octet-stream" to declare nothing; an extension that maps to it
            // (`.exe`, `.bin`) does declare something, and it is not an image.
            let declared_canonical = match by {
                DeclaredBy::Filename => Some(canonical(declared).unwrap_or_else(|| declared.to_ascii_lowercase())),
                _ => canonical(declared),
            };
            if let Some(declared_canonical) = declared_canonical {
                if declared_canonical != sniffed {
                    return Err(TypeError::Mismatch {
                        by: by.describe(),
                        declared: declared_canonical,
                        sniffed: sniffed.clone(),
                    });
                }
            }
        }
        Ok(sniffed)
    }
}

/// The type `mime_guess` gives a filename's extension, when it knows one.
pub fn from_filename(filename: &str) -> Option<(DeclaredBy, String)> {
    let extension = std::path::Path::new(filename).extension()?.to_str()?;
    let guess = mime_guess::from_ext(extension).first()?;
    Some((DeclaredBy::Filename, guess.essence_str().to_owned()))
}

/// The file extension for a canonical type, for download names of files uploaded without one.
pub fn extension(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "image/webp" => "webp",
        "image/gif" => "gif",
        "image/bmp" => "bmp",
        "image/tiff" => "tiff",
        "image/avif" => "avif",
        "image/heic" => "heic",
        _ => "bin",
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Minimal valid headers of common formats, for tests.

    /// A 1×1 PNG.
    pub const PNG: &[u8] = &[
        0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 0x0D, 0x49, 0x48, 0x44, 0x52, 0, 0, 0, 1, 0, 0, 0, 1,
        8, 6, 0, 0, 0, 0x1F, 0x15, 0xC4, 0x89, 0, 0, 0, 0x0A, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0, 1, 0, 0, 5,
        0, 1, 0x0D, 0x0A, 0x2D, 0xB4, 0, 0, 0, 0, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
    ];
    /// The start of a GIF.
    pub const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
}

#[cfg(test)]
mod tests {
    use super::samples::{GIF, PNG};
    use super::*;

    fn allow() -> Allowlist {
        Allowlist::new(&DEFAULT_ALLOWED)
    }

    #[test]
    fn the_bytes_decide_and_declarations_must_agree() {
        assert_eq!(allow().check(PNG, &[]).unwrap(), "image/png");
        let declared = [(DeclaredBy::Header, "IMAGE/PNG; charset=x".to_owned()), from_filename("a.png").unwrap()];
        assert_eq!(allow().check(PNG, &declared).unwrap(), "image/png");
        assert_eq!(
            allow().check(PNG, &[(DeclaredBy::Header, "application/octet-stream".into())]).unwrap(),
            "image/png"
        );
        let gif_as_jpeg = allow().check(GIF, &[(DeclaredBy::Header, "image/jpg".into())]).unwrap_err();
        assert_eq!(
            gif_as_jpeg.to_string(),
            "the Content-Type header says image/jpeg but the content is image/gif",
            "aliases fold before comparing"
        );
        let exe = allow().check(PNG, &[from_filename("x.exe").unwrap()]).unwrap_err();
        assert!(matches!(exe, TypeError::Mismatch { by: "the filename's extension", .. }), "{exe}");
        assert!(from_filename("noextension").is_none());
    }

    #[test]
    fn markup_scripts_documents_and_unknown_bytes_are_refused() {
        for body in [
            &b"<!DOCTYPE html><html><script>alert(1)</script></html>"[..],
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
            b"alert(document.cookie)",
            b"%PDF-1.7\n1 0 obj\n",
            b"",
        ] {
            let err = allow().check(body, &[(DeclaredBy::Header, "image/png".into())]).unwrap_err();
            assert!(matches!(err, TypeError::Unsupported { .. }), "{err}");
        }
        let png_only = Allowlist::new(&["image/png"]);
        assert!(matches!(png_only.check(GIF, &[]), Err(TypeError::Unsupported { .. })));
    }
}
