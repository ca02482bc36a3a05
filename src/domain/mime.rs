//! MIME types as the service compares them: a canonical form (lowercase, parameters dropped,
//! common aliases folded: `image/jpg` and `image/pjpeg` are JPEG, `image/x-png` is PNG,
//! `image/heif` is HEIC, …), the default allowlist, and which types an operator may allow at all.
//! `application/octet-stream` and an absent type declare nothing.

/// The default allowlist (`MEDIA_ALLOWED_TYPES`).
pub const DEFAULT_ALLOWED: [&str; 8] =
    ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff", "image/avif", "image/heic"];

/// The canonical form of a MIME type (see the module docs); `None` for "declares nothing".
pub fn canonical(mime: &str) -> Option<String> {
    let base = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let folded = match base.as_str() {
        "" | "application/octet-stream" | "binary/octet-stream" => return None,
        "image/jpg" | "image/pjpeg" | "image/jpe" => "image/jpeg",
        "image/x-png" | "image/apng" => "image/png",
        "image/x-ms-bmp" | "image/x-bmp" | "image/ms-bmp" => "image/bmp",
        "image/heif" | "image/heic-sequence" | "image/heif-sequence" => "image/heic",
        "image/tif" | "image/x-tiff" => "image/tiff",
        other => other,
    };
    Some(folded.to_owned())
}

/// Whether an operator may put `name` in `MEDIA_ALLOWED_TYPES`: a type the bytes can be sniffed as,
/// never a scriptable one (SVG, `text/*`).
pub fn may_be_allowed(name: &str) -> bool {
    canonical(name).is_some_and(|t| t.contains('/') && t != "image/svg+xml" && !t.starts_with("text/"))
}
