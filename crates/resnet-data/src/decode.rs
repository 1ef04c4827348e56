//! Decoding image files into 8-bit RGB the way `PIL.Image.open(p).convert("RGB")` does.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use crate::error::one_line;
use crate::{DataError, RgbImage8};

/// Reads and decodes the image file at `path` (format detected from content, not extension).
///
/// Images whose header claims more than `max_pixels` pixels are refused before any pixel data
/// is decoded. See [`decode_image_bytes`] for how colour modes are converted.
pub fn decode_image(path: &Path, max_pixels: u64) -> Result<RgbImage8, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Read { path: path.to_path_buf(), source })?;
    decode_image_bytes(&bytes, path, max_pixels)
}

/// Decodes an in-memory JPEG, PNG, WebP, BMP or GIF image; `name_for_errors` is only used in
/// error messages.
///
/// The conversion to RGB matches Pillow 13's `convert("RGB")`:
/// * grey (`L`) is replicated into R, G and B; 1, 2 and 4-bit grey PNGs are scaled to 0..255;
/// * an alpha channel is dropped without compositing onto any background (Pillow does not
///   composite either), so fully transparent pixels keep whatever colour they store;
/// * palette images are looked up in their palette;
/// * 16-bit grey PNGs: Pillow opens them as mode `I;16` and converting to RGB *clips* each
///   value to 255 rather than scaling, so we do the same (`min(v, 255)`);
/// * 16-bit grey+alpha, RGB and RGBA PNGs: Pillow keeps the high byte (`v >> 8`);
/// * GIF: the first frame only, drawn on the logical screen (enlarged if the frame sticks out),
///   with uncovered pixels set to the frame's transparent index (else index 0), then looked up
///   in the palette; indices beyond the palette are black;
/// * 16-bit BMPs: channels widened as Pillow does (`v * 255 / 31`, rounded down);
/// * EXIF orientation and ICC profiles are ignored, as Pillow's `open` + `convert` ignore them.
///
/// JPEG: decoded by libjpeg-turbo-rs, a Rust port of the libjpeg-turbo that Pillow links, with
/// the same defaults (accurate integer IDCT, "fancy" chroma upsampling), so the pixels are
/// identical to Pillow's. CMYK/YCCK JPEGs are inverted (Adobe convention) and converted with
/// Pillow's `cmyk2rgb` formula. 12-bit JPEGs are refused, as Pillow refuses them.
pub fn decode_image_bytes(bytes: &[u8], name_for_errors: &Path, max_pixels: u64) -> Result<RgbImage8, DataError> {
    let path = name_for_errors;
    if bytes.is_empty() {
        return Err(DataError::EmptyFile { path: path.to_path_buf() });
    }
    // The decoders are third-party code fed untrusted bytes; should one of them panic, report
    // a corrupt file instead of taking the whole program down.
    catch_unwind(AssertUnwindSafe(|| decode_checked(bytes, path, max_pixels)))
        .unwrap_or_else(|_| Err(corrupt(path, "the decoder crashed on this file")))
}

fn decode_checked(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage8, DataError> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| corrupt(path, e))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::WebP | ImageFormat::Bmp)) => f,
        Some(ImageFormat::Jpeg) => return decode_jpeg(bytes, path, max_pixels),
        Some(ImageFormat::Gif) => return decode_gif(bytes, path, max_pixels),
        _ => return Err(DataError::NotAnImage { path: path.to_path_buf() }),
    };

    let mut reader = reader;
    reader.limits(decoder_limits(max_pixels));
    // Constructing the decoder parses only the header, which is all we need to refuse a
    // decompression bomb before the pixel data is touched.
    let decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let (width, height) = decoder.dimensions();
    check_pixel_budget(path, u64::from(width), u64::from(height), max_pixels)?;
    let image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;

    // Only a 16-bit *grey* PNG (colour type 0) is clipped; the image crate reports one with a
    // tRNS chunk as grey+alpha, which is otherwise shifted, so consult the header.
    let png_grey16 = format == ImageFormat::Png && png_colour_type(bytes) == Some(0);
    let mut pixels = to_rgb8(image, png_grey16).ok_or_else(|| DataError::UnsupportedImage {
        path: path.to_path_buf(),
        detail: "unexpected colour type from the decoder".into(),
    })?;
    if format == ImageFormat::Bmp {
        if let Some(green_bits) = bmp16_green_bits(bytes) {
            rescale_bmp16_like_pillow(&mut pixels, green_bits);
        }
    }
    Ok(RgbImage8 { width, height, pixels })
}

/// The image crate's allocation cap must admit any image within the pixel budget (its default
/// of 512 MiB would refuse some), with room for 16-bit RGBA plus decoder scratch space.
fn decoder_limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(256 << 20).max(512 << 20));
    limits
}

fn check_pixel_budget(path: &Path, width: u64, height: u64, max_pixels: u64) -> Result<(), DataError> {
    if width == 0 || height == 0 {
        return Err(corrupt(path, format!("header gives a size of {width}x{height}")));
    }
    if width.saturating_mul(height) > max_pixels {
        return Err(DataError::TooManyPixels { path: path.to_path_buf(), width, height, max_pixels });
    }
    Ok(())
}

/// Colour type byte of a PNG's IHDR chunk, which always directly follows the signature.
fn png_colour_type(bytes: &[u8]) -> Option<u8> {
    (bytes.get(12..16) == Some(b"IHDR")).then(|| bytes.get(25).copied())?
}

/// For a 16-bit-per-pixel BMP in one of the two layouts Pillow reads (5-5-5, or 5-6-5 given
/// by bit masks), the number of green bits; `None` for every other BMP.
fn bmp16_green_bits(bytes: &[u8]) -> Option<u32> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    // File header (14 bytes), then an info header of at least 40 bytes: bits per pixel at
    // offset 28, compression at 30; BI_BITFIELDS masks (R, G, B) follow at 54.
    if u32_at(14)? < 40 || u16_at(28)? != 16 {
        return None;
    }
    match (u32_at(30)?, u32_at(54), u32_at(58), u32_at(62)) {
        (0, ..) => Some(5), // BI_RGB: 5-5-5
        (3, Some(0x7C00), Some(0x03E0), Some(0x001F)) => Some(5),
        (3, Some(0xF800), Some(0x07E0), Some(0x001F)) => Some(6),
        _ => None,
    }
}

/// Pillow widens an n-bit BMP channel value v to `v * 255 / (2^n - 1)` rounded down; the image
/// crate rounds to nearest. Its mapping is one-to-one, so recover v and redo the widening.
fn rescale_bmp16_like_pillow(pixels: &mut [u8], green_bits: u32) {
    let rescale = |value: u8, bits: u32| {
        let max = (1u32 << bits) - 1;
        let original = (u32::from(value) * max + 127) / 255;
        (original * 255 / max) as u8
    };
    for pixel in pixels.chunks_exact_mut(3) {
        pixel[0] = rescale(pixel[0], 5);
        pixel[1] = rescale(pixel[1], green_bits);
        pixel[2] = rescale(pixel[2], 5);
    }
}

/// Converts any 8 or 16-bit decoder output to interleaved RGB bytes (rules: see
/// [`decode_image_bytes`]). `None` for float images, which the enabled formats never produce.
fn to_rgb8(image: DynamicImage, png_grey16: bool) -> Option<Vec<u8>> {
    let clip = |v: u16| v.min(255) as u8;
    let high_byte = |v: u16| (v >> 8) as u8;
    let rgb = match image {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        DynamicImage::ImageRgba8(buf) => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        DynamicImage::ImageLuma8(buf) => buf.iter().flat_map(|&v| [v; 3]).collect(),
        DynamicImage::ImageLumaA8(buf) => buf.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        DynamicImage::ImageLuma16(buf) => buf.iter().flat_map(|&v| [clip(v); 3]).collect(),
        DynamicImage::ImageLumaA16(buf) => {
            let grey = if png_grey16 { clip } else { high_byte };
            buf.chunks_exact(2).flat_map(|p| [grey(p[0]); 3]).collect()
        }
        DynamicImage::ImageRgb16(buf) => buf.iter().map(|&v| high_byte(v)).collect(),
        DynamicImage::ImageRgba16(buf) => {
            buf.chunks_exact(4).flat_map(|p| [high_byte(p[0]), high_byte(p[1]), high_byte(p[2])]).collect()
        }
        _ => return None,
    };
    Some(rgb)
}

/// JPEGs are decoded with libjpeg-turbo-rs rather than the image crate's zune-jpeg, whose chroma
/// upsampling rounds differently from libjpeg-turbo: on a 4:2:0 photo 8% of zune's pixels were
/// more than one level away from Pillow's, versus none here.
fn decode_jpeg(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage8, DataError> {
    use libjpeg_turbo_rs::{ColorSpace, DecodeLimits, Decoder, PixelFormat};

    let jpeg_error = |e: libjpeg_turbo_rs::JpegError| corrupt(path, e);
    let limits = DecodeLimits {
        max_pixels, // ours is checked first; this only stops the crate's lower default applying
        ..DecodeLimits::default()
    };
    // Parses the markers (for progressive files it also locates the scans) but decodes nothing.
    let mut decoder = Decoder::new_with_limits(bytes, limits).map_err(jpeg_error)?;
    let header = decoder.header();
    let (width, height) = (u32::from(header.width), u32::from(header.height));
    check_pixel_budget(path, u64::from(width), u64::from(height), max_pixels)?;
    if header.precision != 8 {
        let detail = format!("{}-bit samples", header.precision);
        return Err(DataError::UnsupportedImage { path: path.to_path_buf(), detail });
    }

    let format = match decoder.jpeg_color_space() {
        ColorSpace::Grayscale => PixelFormat::Grayscale,
        ColorSpace::YCbCr | ColorSpace::Rgb => PixelFormat::Rgb,
        ColorSpace::Cmyk | ColorSpace::Ycck => PixelFormat::Cmyk,
        ColorSpace::Unknown => {
            let detail = format!("{} colour components", header.components.len());
            return Err(DataError::UnsupportedImage { path: path.to_path_buf(), detail });
        }
    };
    decoder.set_output_format(format);
    let image = decoder.decode_image().map_err(jpeg_error)?;
    let expected_len = width as usize * height as usize * format.bytes_per_pixel();
    if (image.width, image.height, image.data.len()) != (width as usize, height as usize, expected_len) {
        return Err(corrupt(path, "decoder returned an unexpected image size"));
    }
    let pixels = match format {
        PixelFormat::Grayscale => image.data.iter().flat_map(|&v| [v; 3]).collect(),
        PixelFormat::Cmyk => image.data.chunks_exact(4).flat_map(adobe_cmyk_to_rgb).collect(),
        _ => image.data,
    };
    Ok(RgbImage8 { width, height, pixels })
}

/// Pillow reads 4-channel JPEG samples as inverted CMYK (Adobe's convention, raw mode
/// `CMYK;I`) and converts with `R = K' - K' * C / 255` (K' = 255 - K), using its integer
/// `MULDIV255` rounding. On the stored (uninverted) samples that becomes the code below.
fn adobe_cmyk_to_rgb(stored: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: u32, b: u32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let not_black = u32::from(stored[3]); // = 255 - inverted K
    let channel = |stored_c: u8| (not_black - muldiv255(255 - u32::from(stored_c), not_black)) as u8;
    [channel(stored[0]), channel(stored[1]), channel(stored[2])]
}

/// GIFs are decoded to palette indices with the gif crate directly (not through the image
/// crate, which composites onto transparent black) so that the first frame can be assembled
/// the way Pillow does it before the palette lookup.
fn decode_gif(bytes: &[u8], path: &Path, max_pixels: u64) -> Result<RgbImage8, DataError> {
    let gif_error = |e: gif::DecodingError| corrupt(path, e);
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    // The indexed frame buffer is one byte per pixel; the budget check below runs first, so
    // this only guards against frames the check cannot see.
    let frame_bytes =
        std::num::NonZeroU64::new(max_pixels.max(1)).map_or(gif::MemoryLimit::Unlimited, gif::MemoryLimit::Bytes);
    options.set_memory_limit(frame_bytes);
    let mut decoder = options.read_info(bytes).map_err(gif_error)?;
    let (screen_width, screen_height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    let global_palette = decoder.global_palette().map(<[u8]>::to_vec);

    let frame = match decoder.next_frame_info().map_err(gif_error)? {
        Some(frame) => frame,
        None => return Err(corrupt(path, "the GIF contains no image")),
    };
    let (left, top) = (u32::from(frame.left), u32::from(frame.top));
    let (frame_width, frame_height) = (u32::from(frame.width), u32::from(frame.height));
    let transparent = frame.transparent;
    let palette = frame.palette.clone().or(global_palette).unwrap_or_default();
    // Pillow grows the canvas when the first frame extends past the logical screen.
    let width = screen_width.max(left + frame_width);
    let height = screen_height.max(top + frame_height);
    check_pixel_budget(path, u64::from(width), u64::from(height), max_pixels)?;

    let mut frame_indices = vec![0u8; decoder.buffer_size()];
    decoder.read_into_buffer(&mut frame_indices).map_err(gif_error)?;

    let (width_us, frame_width_us) = (width as usize, frame_width as usize);
    let mut canvas = vec![transparent.unwrap_or(0); width_us * height as usize];
    if frame_width_us > 0 {
        for (row, indices) in frame_indices.chunks_exact(frame_width_us).enumerate() {
            let start = (top as usize + row) * width_us + left as usize;
            if let Some(dest) = canvas.get_mut(start..start + frame_width_us) {
                dest.copy_from_slice(indices);
            }
        }
    }

    // Pillow treats a palette that is the identity grey ramp as "no palette": mode L, where the
    // index itself is the grey level (this only matters for indices beyond the palette).
    let identity_ramp = palette.chunks_exact(3).enumerate().all(|(i, c)| c.iter().all(|&v| usize::from(v) == i));
    let pixels = canvas
        .iter()
        .flat_map(|&index| {
            let i = usize::from(index);
            match palette.get(3 * i..3 * i + 3) {
                _ if identity_ramp => [index; 3],
                Some(colour) => [colour[0], colour[1], colour[2]],
                None => [0; 3],
            }
        })
        .collect();
    Ok(RgbImage8 { width, height, pixels })
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> DataError {
    DataError::CorruptImage { path: path.to_path_buf(), detail: one_line(detail) }
}

fn image_error(path: &Path, error: ImageError) -> DataError {
    match error {
        ImageError::Unsupported(e) => DataError::UnsupportedImage { path: path.to_path_buf(), detail: one_line(e) },
        ImageError::Limits(e) => DataError::UnsupportedImage {
            path: path.to_path_buf(),
            detail: format!("{}; a larger --max-pixels raises the memory allowance", one_line(e)),
        },
        other => corrupt(path, other),
    }
}
