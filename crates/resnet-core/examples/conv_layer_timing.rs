//! Times one convolution's forward and both backwards on given shapes, in GFLOP/s, to see
//! which part of a training step is slow.
//!   cargo run --release -p resnet-core --example conv_layer_timing -- N H C_IN C_OUT K STRIDE [direct]
//! (`direct`: no Winograd for the 3x3 stride-1 layers that would use it).

use resnet_core::kernels::conv_backward::{conv2d_nhwc_backward_input, conv2d_nhwc_backward_weight};
use resnet_core::kernels::winograd::{self, WinogradConv};
use resnet_core::kernels::{conv2d_nhwc, Conv2dGeometry, Epilogue};
use resnet_core::model::seeded::seeded_values;
use resnet_core::timing::median_ms;
use resnet_core::Tensor;

fn main() {
    resnet_core::kernels::memory::keep_freed_memory_for_reuse();
    if std::env::args().any(|a| a == "direct") {
        winograd::set_enabled_for_training(false);
    }
    let a: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    let [n, h, c_in, c_out, k, stride] =
        [0, 1, 2, 3, 4, 5].map(|i| a.get(i).copied().unwrap_or([128, 28, 16, 16, 3, 1][i]));
    let geom = Conv2dGeometry {
        in_channels: c_in,
        out_channels: c_out,
        kernel_h: k,
        kernel_w: k,
        stride,
        padding: k / 2,
        groups: 1,
    };
    let x = Tensor::from_vec(&[n, h, h, c_in], seeded_values(1, n * h * h * c_in, -1.0, 1.0)).expect("shape");
    let weight = seeded_values(2, geom.weight_len(), -0.1, 0.1);
    let (oh, ow) = geom.output_hw(h, h);
    let g = Tensor::from_vec(&[n, oh, ow, c_out], seeded_values(3, n * oh * ow * c_out, -1.0, 1.0)).expect("shape");
    let gflop = 2.0 * (n * oh * ow * c_out * geom.filter_len()) as f64 / 1e9;
    let bwd_in = median_ms(7, || drop(conv2d_nhwc_backward_input(&g, &weight, &geom, (h, h))));
    let fwd = median_ms(7, || drop(conv2d_nhwc(&x, &weight, &geom, &Epilogue::default())));
    let bwd_w = median_ms(7, || drop(conv2d_nhwc_backward_weight(&x, &g, &geom)));
    let mut rows = vec![("forward", fwd), ("backward input", bwd_in), ("backward weight", bwd_w)];
    if winograd::fits(&geom) {
        // What training's Winograd pays on every call before any product.
        let transform = median_ms(7, || drop(WinogradConv::from_filters(&weight, c_in, c_out, None, vec![0.0; c_out])));
        rows.push(("filter transform", transform));
        // The forward by Winograd (filter transform included), whether or not training
        // would choose it for this shape.
        let by_winograd = median_ms(7, || {
            drop(WinogradConv::from_filters(&weight, c_in, c_out, None, vec![0.0; c_out]).forward(&x, None, false))
        });
        rows.push(("winograd forward", by_winograd));
    }
    for (name, ms) in rows {
        println!("{name:>16}: {ms:7.2} ms  {:6.1} GFLOP/s", gflop / ms * 1e3);
    }
}
