//! Colour-mode conversions match `PIL.Image.open(p).convert("RGB")` (Pillow 13). The expected
//! values were obtained by running Pillow on the same hand-made PNGs.

mod common;

use std::path::Path;

use common::{be16, png};
use resnet_data::{decode_image_bytes, DEFAULT_MAX_PIXELS};

const VALUES_16: [u16; 8] = [0, 255, 256, 1000, 65535, 32768, 0x80ff, 0x7f80];

/// Decodes and returns the red channel, checking that the image is grey (R = G = B).
fn decode_red(png_bytes: &[u8]) -> Vec<u8> {
    let image = decode_image_bytes(png_bytes, Path::new("test.png"), DEFAULT_MAX_PIXELS).unwrap();
    image.pixels.chunks_exact(3).map(|p| p[0]).collect()
}

fn decode_grey(png_bytes: &[u8]) -> Vec<u8> {
    let image = decode_image_bytes(png_bytes, Path::new("test.png"), DEFAULT_MAX_PIXELS).unwrap();
    for p in image.pixels.chunks_exact(3) {
        assert!(p[0] == p[1] && p[1] == p[2], "not grey: {p:?}");
    }
    image.pixels.chunks_exact(3).map(|p| p[0]).collect()
}

#[test]
fn grey16_png_is_clipped_not_scaled() {
    // Pillow opens this as mode I;16 and convert("RGB") saturates at 255.
    let file = png(8, 1, 16, 0, &[], &[be16(&VALUES_16)]);
    assert_eq!(decode_grey(&file), [0, 255, 255, 255, 255, 255, 255, 255]);
}

#[test]
fn grey16_png_with_transparency_key_is_still_clipped() {
    let trns = (b"tRNS", 1000u16.to_be_bytes().to_vec());
    let file = png(8, 1, 16, 0, &[trns], &[be16(&VALUES_16)]);
    assert_eq!(decode_grey(&file), [0, 255, 255, 255, 255, 255, 255, 255]);
}

#[test]
fn sixteen_bit_colour_and_grey_alpha_keep_the_high_byte() {
    let expected = [0, 0, 1, 3, 255, 128, 128, 127];
    let rgb: Vec<u16> = VALUES_16.iter().flat_map(|&v| [v, v, v]).collect();
    assert_eq!(decode_grey(&png(8, 1, 16, 2, &[], &[be16(&rgb)])), expected);
    let rgba: Vec<u16> = VALUES_16.iter().flat_map(|&v| [v, v, v, 1234]).collect();
    assert_eq!(decode_grey(&png(8, 1, 16, 6, &[], &[be16(&rgba)])), expected);
    let grey_alpha: Vec<u16> = VALUES_16.iter().flat_map(|&v| [v, 1234]).collect();
    assert_eq!(decode_grey(&png(8, 1, 16, 4, &[], &[be16(&grey_alpha)])), expected);
}

#[test]
fn low_bit_depth_grey_is_scaled_to_full_range() {
    assert_eq!(decode_grey(&png(4, 1, 2, 0, &[], &[vec![0b0001_1011]])), [0, 85, 170, 255]);
    assert_eq!(decode_grey(&png(4, 1, 4, 0, &[], &[vec![0x01, 0x8f]])), [0, 17, 136, 255]);
    assert_eq!(decode_grey(&png(4, 1, 1, 0, &[], &[vec![0b1010_0000]])), [255, 0, 255, 0]);
}

#[test]
fn alpha_is_dropped_without_compositing() {
    // A fully transparent red pixel stays red: Pillow does not composite onto a background.
    let file = png(2, 1, 8, 6, &[], &[vec![255, 0, 0, 0, 10, 20, 30, 128]]);
    let image = decode_image_bytes(&file, Path::new("a.png"), DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(image.pixels, [255, 0, 0, 10, 20, 30]);
}

#[test]
fn palette_png_is_looked_up_and_its_alpha_ignored() {
    let palette = (b"PLTE", vec![10, 20, 30, 200, 100, 50]);
    let trns = (b"tRNS", vec![0, 255]);
    let file = png(3, 1, 8, 3, &[palette, trns], &[vec![1, 0, 1]]);
    let image = decode_image_bytes(&file, Path::new("p.png"), DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!(image.pixels, [200, 100, 50, 10, 20, 30, 200, 100, 50]);
    assert_eq!(decode_red(&file), [200, 10, 200]);
}

#[test]
fn grey8_is_replicated() {
    let file = png(3, 2, 8, 0, &[], &[vec![0, 7, 255], vec![1, 2, 3]]);
    let image = decode_image_bytes(&file, Path::new("g.png"), DEFAULT_MAX_PIXELS).unwrap();
    assert_eq!((image.width, image.height), (3, 2));
    assert_eq!(decode_grey(&file), [0, 7, 255, 1, 2, 3]);
}

/// A bottom-up 16-bit BMP holding one row of pixels; `masks` selects BI_BITFIELDS.
fn bmp16(pixels: &[u16], masks: Option<[u32; 3]>) -> Vec<u8> {
    let mut row: Vec<u8> = pixels.iter().flat_map(|p| p.to_le_bytes()).collect();
    row.resize(row.len().div_ceil(4) * 4, 0);
    let extra: Vec<u8> = masks.map_or(Vec::new(), |m| m.iter().flat_map(|v| v.to_le_bytes()).collect());
    let data_offset = 14 + 40 + extra.len() as u32;
    let mut file = b"BM".to_vec();
    file.extend((data_offset + row.len() as u32).to_le_bytes());
    file.extend([0; 4]);
    file.extend(data_offset.to_le_bytes());
    file.extend(40u32.to_le_bytes());
    file.extend((pixels.len() as i32).to_le_bytes());
    file.extend(1i32.to_le_bytes());
    file.extend(1u16.to_le_bytes());
    file.extend(16u16.to_le_bytes());
    let compression: u32 = if masks.is_some() { 3 } else { 0 }; // BI_BITFIELDS or BI_RGB
    file.extend(compression.to_le_bytes());
    file.extend((row.len() as u32).to_le_bytes());
    file.extend([0; 16]); // resolution and palette counts
    file.extend(extra);
    file.extend(row);
    file
}

#[test]
fn sixteen_bit_bmp_channels_are_widened_rounding_down() {
    // Pillow: v * 255 / 31 (or / 63 for 6-bit green) in integer arithmetic; e.g. 3 -> 24, where
    // rounding to nearest would give 25.
    let widen = |v: u16, max: u16| (u32::from(v) * 255 / u32::from(max)) as u8;
    let values: [u16; 4] = [0, 3, 17, 31];
    let rgb555: Vec<u16> = values.iter().map(|&v| (v << 10) | (v << 5) | v).collect();
    let image = decode_image_bytes(&bmp16(&rgb555, None), Path::new("555.bmp"), DEFAULT_MAX_PIXELS).unwrap();
    let expected: Vec<u8> = values.iter().flat_map(|&v| [widen(v, 31); 3]).collect();
    assert_eq!(image.pixels, expected);

    let greens: [u16; 4] = [0, 1, 11, 63];
    let rgb565: Vec<u16> = values.iter().zip(greens).map(|(&v, g)| (v << 11) | (g << 5) | v).collect();
    let masks = Some([0xF800, 0x07E0, 0x001F]);
    let image = decode_image_bytes(&bmp16(&rgb565, masks), Path::new("565.bmp"), DEFAULT_MAX_PIXELS).unwrap();
    let expected: Vec<u8> =
        values.iter().zip(greens).flat_map(|(&v, g)| [widen(v, 31), widen(g, 63), widen(v, 31)]).collect();
    assert_eq!(image.pixels, expected);
}
