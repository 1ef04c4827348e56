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
    assert_eq!(
        decode_grey(&png(8, 1, 16, 6, &[], &[be16(&rgba)])),
        expected
    );
    let grey_alpha: Vec<u16> = VALUES_16.iter().flat_map(|&v| [v, 1234]).collect();
    assert_eq!(
        decode_grey(&png(8, 1, 16, 4, &[], &[be16(&grey_alpha)])),
        expected
    );
}

#[test]
fn low_bit_depth_grey_is_scaled_to_full_range() {
    assert_eq!(
        decode_grey(&png(4, 1, 2, 0, &[], &[vec![0b0001_1011]])),
        [0, 85, 170, 255]
    );
    assert_eq!(
        decode_grey(&png(4, 1, 4, 0, &[], &[vec![0x01, 0x8f]])),
        [0, 17, 136, 255]
    );
    assert_eq!(
        decode_grey(&png(4, 1, 1, 0, &[], &[vec![0b1010_0000]])),
        [255, 0, 255, 0]
    );
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
