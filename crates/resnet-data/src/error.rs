//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while reading images or `.npy` files.
///
/// Every message is one line, names the file, and says what the user can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be read (missing, permissions, I/O error).
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    /// The file could not be written.
    #[error("cannot write {}: {source}; check that the directory exists and is writable", path.display())]
    Write { path: PathBuf, source: std::io::Error },

    /// The file has no content at all.
    #[error("{}: the file is empty; expected a JPEG, PNG, WebP, BMP or GIF image", path.display())]
    EmptyFile { path: PathBuf },

    /// The content is not in one of the supported image formats.
    #[error(
        "{}: not a supported image (JPEG, PNG, WebP, BMP or GIF); convert it or remove it",
        path.display()
    )]
    NotAnImage { path: PathBuf },

    /// The image format was recognised but the data is damaged or cut short.
    #[error("{}: corrupt or truncated image ({detail}); re-export the image or remove it", path.display())]
    CorruptImage { path: PathBuf, detail: String },

    /// A recognised format using a feature this crate does not decode.
    #[error("{}: unsupported image variant ({detail}); convert it to an 8-bit RGB PNG or JPEG", path.display())]
    UnsupportedImage { path: PathBuf, detail: String },

    /// The header claims more pixels than allowed; refused before decoding, so a small
    /// malicious file cannot make the decoder allocate gigabytes.
    #[error(
        "{}: image is {width}x{height} = {pixels} pixels, more than the limit of {max_pixels}; \
         if you trust the file, pass --max-pixels {pixels} (or higher) to allow it",
        path.display(),
        pixels = *width as u128 * *height as u128
    )]
    TooManyPixels { path: PathBuf, width: u64, height: u64, max_pixels: u64 },

    /// A `.npy` file that is malformed or holds something other than float32/float64 data.
    #[error("{}: invalid .npy file: {detail}", path.display())]
    InvalidNpy { path: PathBuf, detail: String },
}

/// Error details from third-party decoders sometimes span lines; keep messages on one line.
pub(crate) fn one_line(detail: impl std::fmt::Display) -> String {
    detail.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}
