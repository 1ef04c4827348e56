//! Helpers shared by the integration tests: fixture paths, scratch directories and a tiny PNG
//! writer for hand-crafted files (odd bit depths, lying headers) that encoders won't produce.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/fixtures/preprocess").join(name)
}

/// A fresh empty directory under the target dir, unique per test name.
pub fn scratch_dir(test_name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test_name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A zlib stream made of uncompressed ("stored") deflate blocks.
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = if data.is_empty() { vec![&[]] } else { data.chunks(65_535).collect() };
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len())); // BFINAL on the last block, BTYPE 00
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

/// A PNG with the given header fields, extra chunks before the image data (e.g. PLTE, tRNS),
/// and `idat` as the raw IDAT payload.
pub fn png_with_idat(
    width: u32,
    height: u32,
    bit_depth: u8,
    colour_type: u8,
    extra_chunks: &[(&[u8; 4], Vec<u8>)],
    idat: &[u8],
) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, colour_type, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    for (kind, data) in extra_chunks {
        png.extend(png_chunk(kind, data));
    }
    png.extend(png_chunk(b"IDAT", idat));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

/// A valid PNG from unfiltered scanlines (each row's bytes, without the filter byte).
pub fn png(
    width: u32,
    height: u32,
    bit_depth: u8,
    colour_type: u8,
    extra_chunks: &[(&[u8; 4], Vec<u8>)],
    rows: &[Vec<u8>],
) -> Vec<u8> {
    let mut raw = Vec::new();
    for row in rows {
        raw.push(0); // filter type "none"
        raw.extend_from_slice(row);
    }
    png_with_idat(width, height, bit_depth, colour_type, extra_chunks, &zlib_stored(&raw))
}

/// Big-endian 16-bit samples, as PNG stores them.
pub fn be16(samples: &[u16]) -> Vec<u8> {
    samples.iter().flat_map(|v| v.to_be_bytes()).collect()
}
