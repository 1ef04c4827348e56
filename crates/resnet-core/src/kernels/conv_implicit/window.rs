//! The zero-padded input rows one tile of output pixels reads, copied into a per-thread
//! buffer just before the tile is computed.
//!
//! The implicit kernel needs its input zero-padded, so that every tap of every window is a
//! plain strided read. Padding the whole input first wrote a second copy of each activation
//! and read it back: three copies per 3x3 convolution in a training step (forward, weight
//! gradient, input gradient), about a tenth of a CIFAR ResNet-20 step, all of it memory
//! traffic. A tile needs only the padded rows under its own output rows (a tile of six
//! 32-wide output rows reads eight padded rows), and those fit in L1/L2: copied there, the
//! kernel reads them from cache right after, and the input is read from memory once.

use std::cell::RefCell;

use super::super::conv::Conv2dGeometry;
use crate::tensor::Tensor;

thread_local! {
    /// Reused by every tile this thread computes: sized by the largest window seen, and
    /// every value a window uses is written before it is read, so never cleared.
    static WINDOW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Where the output pixels of a window find their input: the padded rows held per image.
pub(super) struct RunGeometry {
    pub(super) oh: usize,
    pub(super) ow: usize,
    /// Padded row length in pixels (`W + 2·padding`).
    pub(super) wp: usize,
    pub(super) c: usize,
    pub(super) stride: usize,
    /// The first image whose rows the window holds.
    first_image: usize,
    /// Per image from `first_image` on: (first padded row held, that row's index in the
    /// window). An image's rows are consecutive, so every tap of a window is in its slab.
    slabs: Vec<(usize, usize)>,
}

impl RunGeometry {
    /// Output pixel `pixel`'s column, and where its window starts in the held rows.
    pub(super) fn place(&self, pixel: usize) -> (usize, usize) {
        let (image, rem) = (pixel / (self.oh * self.ow), pixel % (self.oh * self.ow));
        let (oy, ox) = (rem / self.ow, rem % self.ow);
        let (first_row, base) = self.slabs[image - self.first_image];
        (ox, ((base + oy * self.stride - first_row) * self.wp + ox * self.stride) * self.c)
    }

    /// A geometry over a whole padded input of `n` images (`oh × ow` outputs each, `hp`
    /// padded rows per image), for tests of the run layout.
    #[cfg(test)]
    pub(super) fn whole(n: usize, (oh, ow): (usize, usize), (hp, wp): (usize, usize), c: usize) -> RunGeometry {
        RunGeometry { oh, ow, wp, c, stride: 1, first_image: 0, slabs: (0..n).map(|i| (0, i * hp)).collect() }
    }
}

/// Runs `f(window, geometry)` with the zero-padded rows of NHWC `x` that output pixels
/// `first..first + len` of convolution `g` read, copied into this thread's buffer.
/// `len` must be at least 1 and the pixels within the output (caller bugs otherwise).
pub(super) fn with_window<R>(
    x: &Tensor,
    g: &Conv2dGeometry,
    first: usize,
    len: usize,
    f: impl FnOnce(&[f32], &RunGeometry) -> R,
) -> R {
    let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = g.output_hw(h, w);
    let per_image = oh * ow;
    assert!(len > 0 && first + len <= n * per_image, "pixels {first}+{len} outside the output");
    let p = g.padding;
    let wp = w + 2 * p;
    let last = first + len - 1;
    let (first_image, last_image) = (first / per_image, last / per_image);
    // Per image: padded rows from the first output row's window top to the last one's bottom.
    let mut spans = Vec::with_capacity(last_image - first_image + 1);
    let mut held = 0;
    for image in first_image..=last_image {
        let top = if image == first_image { (first % per_image) / ow } else { 0 };
        let bottom = if image == last_image { (last % per_image) / ow } else { oh - 1 };
        let (row0, row1) = (top * g.stride, bottom * g.stride + g.kernel_h);
        spans.push((image, row0, row1, held));
        held += row1 - row0;
    }
    let row_len = wp * c;
    WINDOW.with_borrow_mut(|buf| {
        if buf.len() < held * row_len {
            buf.resize(held * row_len, 0.0);
        }
        let window = &mut buf[..held * row_len];
        for &(image, row0, row1, base) in &spans {
            for (py, dst) in (row0..row1).zip(window[base * row_len..].chunks_exact_mut(row_len)) {
                // Padded row `py` is input row `py - p`, or all zeros above and below.
                match py.checked_sub(p).filter(|&y| y < h) {
                    Some(y) => {
                        dst[..p * c].fill(0.0);
                        dst[(w + p) * c..].fill(0.0);
                        let src = ((image * h + y) * w) * c;
                        dst[p * c..(w + p) * c].copy_from_slice(&x.data[src..src + w * c]);
                    }
                    None => dst.fill(0.0),
                }
            }
        }
        let slabs = spans.iter().map(|&(_, row0, _, base)| (row0, base)).collect();
        let geometry = RunGeometry { oh, ow, wp, c, stride: g.stride, first_image, slabs };
        f(window, &geometry)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every window position a pixel's taps read holds the padded input's value there.
    #[test]
    fn window_holds_the_padded_rows() {
        let (n, h, w, c) = (3, 5, 4, 2);
        let x = Tensor::from_vec(&[n, h, w, c], (0..n * h * w * c).map(|i| i as f32 + 1.0).collect()).unwrap();
        for (k, stride, p) in [(3, 1, 1), (5, 1, 2), (3, 2, 1), (1, 1, 0)] {
            let g = Conv2dGeometry {
                in_channels: c,
                out_channels: 1,
                kernel_h: k,
                kernel_w: k,
                stride,
                padding: p,
                groups: 1,
            };
            let (oh, ow) = g.output_hw(h, w);
            let total = n * oh * ow;
            for (first, len) in [(0, total), (1, 2), (ow + 1, oh * ow), (total - 1, 1)] {
                with_window(&x, &g, first, len, |window, geometry| {
                    for pixel in first..first + len {
                        let (image, rem) = (pixel / (oh * ow), pixel % (oh * ow));
                        let (oy, ox) = (rem / ow, rem % ow);
                        assert_eq!(geometry.place(pixel).0, ox);
                        let start = geometry.place(pixel).1;
                        for ky in 0..k {
                            for kx in 0..k {
                                let (y, xx) = (
                                    (oy * stride + ky) as isize - p as isize,
                                    (ox * stride + kx) as isize - p as isize,
                                );
                                for ch in 0..c {
                                    let expected = if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                                        0.0
                                    } else {
                                        x.data[((image * h + y as usize) * w + xx as usize) * c + ch]
                                    };
                                    let got = window[start + (ky * geometry.wp + kx) * c + ch];
                                    assert_eq!(got, expected, "k{k} s{stride} pixel {pixel} tap {ky},{kx}");
                                }
                            }
                        }
                    }
                });
            }
        }
    }
}
