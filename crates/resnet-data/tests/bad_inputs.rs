//! Bad files give a one-line error naming the file (never a panic), and headers claiming huge
//! images are refused before any pixel data is decoded.

mod common;

use std::path::Path;

use common::{fixture, png_with_idat, scratch_dir, zlib_stored};
use resnet_data::{decode_image, decode_image_bytes, read_npy_f32, write_npy_f32, DataError, DEFAULT_MAX_PIXELS};

fn decode_error(bytes: &[u8], name: &str) -> DataError {
    match decode_image_bytes(bytes, Path::new(name), DEFAULT_MAX_PIXELS) {
        Ok(image) => panic!("{name}: expected an error, decoded {}x{}", image.width, image.height),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(name), "message does not name the file: {message}");
            assert!(!message.contains('\n'), "message is not one line: {message}");
            e
        }
    }
}

fn read_fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

#[test]
fn corrupt_png_data_is_reported() {
    // Valid signature and header, but the image data is not a zlib stream.
    let file = png_with_idat(4, 4, 8, 2, &[], b"this is not deflate data at all");
    let error = decode_error(&file, "broken.png");
    assert!(matches!(error, DataError::CorruptImage { .. }), "{error}");
}

#[test]
fn corrupt_jpeg_header_is_reported() {
    let mut file = read_fixture("photo.jpg");
    file[4..40].fill(0x5A); // clobber the first marker segment after the SOI and its marker
    let error = decode_error(&file, "broken.jpg");
    assert!(matches!(error, DataError::CorruptImage { .. }), "{error}");
}

#[test]
fn truncated_images_are_reported() {
    for name in ["photo.jpg", "alpha.png", "palette.gif", "photo.webp", "photo.bmp"] {
        let file = read_fixture(name);
        // A quarter lies inside the first GIF frame (the second frame may be missing).
        for keep in [file.len() / 4, 40] {
            let error = decode_error(&file[..keep], name);
            assert!(matches!(error, DataError::CorruptImage { .. }), "{name} cut to {keep}: {error}");
            assert!(error.to_string().contains("corrupt or truncated"), "{error}");
        }
    }
}

#[test]
fn text_file_named_jpg_is_not_an_image() {
    let dir = scratch_dir("text_file_named_jpg_is_not_an_image");
    let path = dir.join("notes.jpg");
    std::fs::write(&path, "just some text, not a picture\n").unwrap();
    let error = decode_image(&path, DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(error, DataError::NotAnImage { .. }), "{error}");
    assert!(error.to_string().contains("notes.jpg"), "{error}");
}

#[test]
fn unsupported_format_is_not_an_image() {
    // A TIFF header: a real image format, but not one we decode (nor list in is_image_path).
    let error = decode_error(b"II*\0\x08\0\0\0\0\0\0\0", "scan.tiff");
    assert!(matches!(error, DataError::NotAnImage { .. }), "{error}");
}

#[test]
fn empty_file_is_reported() {
    let dir = scratch_dir("empty_file_is_reported");
    let path = dir.join("empty.png");
    std::fs::write(&path, b"").unwrap();
    let error = decode_image(&path, DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(error, DataError::EmptyFile { .. }), "{error}");
    assert!(error.to_string().contains("empty.png"), "{error}");
}

#[test]
fn missing_file_is_reported() {
    let error = decode_image(Path::new("/nonexistent/dir/cat.jpg"), DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(matches!(error, DataError::Read { .. }), "{error}");
    assert!(error.to_string().contains("cat.jpg"), "{error}");
}

fn assert_refused_as_too_large(bytes: &[u8], name: &str, width: u64, height: u64) {
    let error = decode_error(bytes, name);
    match &error {
        DataError::TooManyPixels { width: w, height: h, max_pixels, .. } => {
            assert_eq!((*w, *h, *max_pixels), (width, height, DEFAULT_MAX_PIXELS));
        }
        other => panic!("{name}: expected TooManyPixels, got {other}"),
    }
    assert!(error.to_string().contains("--max-pixels"), "{error}");
}

#[test]
fn enormous_png_header_is_refused_before_decoding() {
    // 100000 x 100000 RGB would need 30 GB; the file holds a few bytes of pixel data. Decoding
    // would fail or exhaust memory, so getting TooManyPixels shows the header check ran first.
    let file = png_with_idat(100_000, 100_000, 8, 2, &[], &zlib_stored(&[0; 16]));
    assert_refused_as_too_large(&file, "bomb.png", 100_000, 100_000);
}

#[test]
fn enormous_jpeg_and_gif_headers_are_refused_before_decoding() {
    // Patch the frame size in the JPEG's SOF0 segment (FF C0, length, precision, height, width).
    let mut jpeg = read_fixture("photo.jpg");
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("SOF0 marker");
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xF0, 0xFF, 0xF0]);
    assert_refused_as_too_large(&jpeg, "bomb.jpg", 65_520, 65_520);

    // The GIF logical screen size sits right after the 6-byte signature.
    let mut gif = read_fixture("palette.gif");
    gif[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert_refused_as_too_large(&gif, "bomb.gif", 65_535, 65_535);
}

#[test]
fn raising_max_pixels_allows_a_large_image() {
    let file = read_fixture("photo.jpg"); // 500 x 375 = 187500 pixels
    let error = decode_image_bytes(&file, Path::new("photo.jpg"), 187_499).unwrap_err();
    assert!(matches!(error, DataError::TooManyPixels { .. }), "{error}");
    let image = decode_image_bytes(&file, Path::new("photo.jpg"), 187_500).unwrap();
    assert_eq!((image.width, image.height), (500, 375));
}

#[test]
fn mangled_files_never_panic() {
    // Deterministic byte-flipping over every fixture format: errors are fine, panics are not
    // (decode_image_bytes would report a caught panic as "the decoder crashed").
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for name in ["photo.jpg", "alpha.png", "palette.gif", "photo.webp", "photo.bmp", "cmyk.jpg"] {
        let original = read_fixture(name);
        for _ in 0..60 {
            let mut file = original.clone();
            for _ in 0..1 + next() % 6 {
                let at = next() as usize % file.len();
                file[at] = next() as u8;
            }
            if let Err(e) = decode_image_bytes(&file, Path::new(name), DEFAULT_MAX_PIXELS) {
                assert!(!e.to_string().contains("crashed"), "{name}: {e}");
            }
        }
    }
}

// ---- .npy ----------------------------------------------------------------------------------

fn npy_error(bytes: &[u8], test_name: &str) -> String {
    let dir = scratch_dir(test_name);
    let path = dir.join("tensor.npy");
    std::fs::write(&path, bytes).unwrap();
    let error = read_npy_f32(&path).unwrap_err();
    assert!(matches!(error, DataError::InvalidNpy { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("tensor.npy"), "{message}");
    message
}

/// A version 1.0 .npy file with the given header dict and data bytes.
fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    let padding = (64 - (10 + header.len() + 1) % 64) % 64; // align the data to 64 bytes
    header.push_str(&" ".repeat(padding));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn npy_round_trips_and_accepts_f64() {
    let dir = scratch_dir("npy_round_trips_and_accepts_f64");
    let path = dir.join("x.npy");
    let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
    for shape in [vec![2, 3, 4], vec![24], vec![1, 24, 1]] {
        write_npy_f32(&path, &shape, &values).unwrap();
        assert_eq!(read_npy_f32(&path).unwrap(), (shape, values.clone()));
    }
    write_npy_f32(&path, &[], &[7.5]).unwrap();
    assert_eq!(read_npy_f32(&path).unwrap(), (vec![], vec![7.5]));
    // Only the final file remains: the temporary file was renamed over it.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["x.npy"]);

    let doubles: Vec<u8> = [1.5f64, -2.25].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f8 = npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", &doubles);
    std::fs::write(&path, f8).unwrap();
    assert_eq!(read_npy_f32(&path).unwrap(), (vec![2], vec![1.5, -2.25]));
}

#[test]
fn npy_write_rejects_mismatched_shape() {
    let dir = scratch_dir("npy_write_rejects_mismatched_shape");
    let error = write_npy_f32(&dir.join("x.npy"), &[2, 2], &[1.0; 3]).unwrap_err();
    assert!(matches!(error, DataError::InvalidNpy { .. }), "{error}");
}

#[test]
fn npy_truncated_data_is_reported() {
    let file = npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", &[0; 20]);
    let message = npy_error(&file, "npy_truncated_data_is_reported");
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn npy_truncated_header_is_reported() {
    let file = npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", &[]);
    let message = npy_error(&file[..30], "npy_truncated_header_is_reported");
    assert!(message.contains("truncated"), "{message}");
}

#[test]
fn npy_wrong_dtypes_are_reported() {
    for descr in ["<i4", ">f4", "<f2", "|u1"] {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2,), }}");
        let message = npy_error(&npy_bytes(&dict, &[0; 8]), "npy_wrong_dtypes_are_reported");
        assert!(message.contains(descr) && message.contains("float32"), "{message}");
    }
}

#[test]
fn npy_fortran_order_is_reported() {
    let file = npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", &[0; 16]);
    let message = npy_error(&file, "npy_fortran_order_is_reported");
    assert!(message.contains("Fortran"), "{message}");
}

#[test]
fn non_npy_file_is_reported() {
    let message = npy_error(b"not a numpy file at all", "non_npy_file_is_reported");
    assert!(message.contains("magic"), "{message}");
}
