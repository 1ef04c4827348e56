//! `resnet bench --peak` and `--layers`: this CPU's arithmetic peak, and where each
//! convolution shape of a network stands against it.

use std::collections::BTreeMap;
use std::time::Duration;

use resnet_core::kernels::conv_backward::{conv2d_nhwc_backward_input, conv2d_nhwc_backward_weight};
use resnet_core::kernels::conv_packed::PackedConv;
use resnet_core::kernels::peak::{best_fp32_isa, has_avx512_bf16, measure_peak, Peak, PeakIsa};
use resnet_core::kernels::winograd::{self, WinogradConv};
use resnet_core::kernels::winograd_bf16::{self, WinogradBf16Conv};
use resnet_core::kernels::{conv2d_nhwc, Conv2dGeometry, Epilogue};
use resnet_core::model::seeded::seeded_values;
use resnet_core::model::summary::layer_table;
use resnet_core::model::Precision;
use resnet_core::timing::median_ms;
use resnet_core::{ResNet, Tensor};
use serde::Serialize;

/// How long each peak measurement runs.
const PEAK_DURATION: Duration = Duration::from_millis(1500);

#[derive(Serialize)]
struct PeakRecord {
    kind: &'static str,
    isa: &'static str,
    threads: usize,
    gflops: f64,
}

/// The fp32 peak of the best path, and the bf16 one when the CPU has AVX512-BF16.
fn measure_peaks() -> Vec<Peak> {
    let mut peaks = Vec::new();
    peaks.extend(measure_peak(best_fp32_isa(), PEAK_DURATION));
    peaks.extend(measure_peak(PeakIsa::Avx512Bf16, PEAK_DURATION));
    peaks
}

/// `resnet bench --peak`.
pub fn run_peak(json: bool) -> anyhow::Result<()> {
    for p in measure_peaks() {
        let line = if json {
            serde_json::to_string(&PeakRecord {
                kind: "peak",
                isa: p.isa.name(),
                threads: p.threads,
                gflops: p.gflops,
            })?
        } else {
            format!(
                "peak {:>8.1} GFLOP/s  ({:.1} per thread, {} threads)  {}",
                p.gflops,
                p.gflops / p.threads as f64,
                p.threads,
                p.isa.name()
            )
        };
        crate::output::emit(&format!("{line}\n"))?;
    }
    Ok(())
}

/// One distinct convolution of a network: its geometry, input size and where it occurs.
struct ConvShape {
    geometry: Conv2dGeometry,
    input_hw: (usize, usize),
    layers: Vec<String>,
}

/// The network's convolutions grouped by (geometry, input size), in order of first use.
fn conv_shapes(model: &ResNet, side: usize) -> Vec<ConvShape> {
    let mut order: Vec<ConvShape> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for row in layer_table(model, side) {
        let Some((geometry, input_hw)) = row.conv else { continue };
        let key = format!("{geometry:?}{input_hw:?}");
        match index.get(&key) {
            Some(&i) => order[i].layers.push(row.name),
            None => {
                index.insert(key, order.len());
                order.push(ConvShape { geometry, input_hw, layers: vec![row.name] });
            }
        }
    }
    order
}

/// A tensor of `shape` with seeded values in [-1, 1].
fn seeded_tensor(shape: &[usize], seed: u64) -> Tensor {
    let mut t = Tensor::zeros(shape);
    t.data = seeded_values(seed, t.len(), -1.0, 1.0);
    t
}

#[derive(Serialize)]
struct LayerRecord {
    kind: &'static str,
    pass: &'static str,
    shape: String,
    count: usize,
    first_layer: String,
    batch: usize,
    ms_median: f64,
    gflops: f64,
    share_of_peak: f64,
    /// For Winograd and bf16 passes: the largest difference from the direct f32
    /// convolution, relative to the largest output value.
    #[serde(skip_serializing_if = "Option::is_none")]
    error_vs_direct_f32: Option<f64>,
}

/// `max |got − reference| / max |reference|`.
fn relative_error(got: &Tensor, reference: &Tensor) -> f64 {
    let peak = reference.data.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs())).max(f64::MIN_POSITIVE);
    let err = got.data.iter().zip(&reference.data).fold(0.0f64, |m, (&a, &b)| m.max(f64::from(a - b).abs()));
    err / peak
}

/// `resnet bench --layers`: every distinct conv shape of `arch` at `side`, batch `batch`:
/// milliseconds, GFLOP/s and share of the measured fp32 peak, for the forward and (with
/// `train`) both backwards.
pub fn run_layers(
    arch: &str,
    side: usize,
    batch: usize,
    iters: usize,
    train: bool,
    precision: Precision,
    json: bool,
) -> anyhow::Result<()> {
    let model = ResNet::from_name(arch, 1000)?;
    // bf16 layers are measured against the bf16 peak where the CPU has one.
    let isa = if precision == Precision::Bf16 && has_avx512_bf16() { PeakIsa::Avx512Bf16 } else { best_fp32_isa() };
    let peak_name = if isa == PeakIsa::Avx512Bf16 { "bf16" } else { "fp32" };
    let peak = measure_peak(isa, PEAK_DURATION)
        .ok_or_else(|| anyhow::anyhow!("no peak measurement is available on this CPU"))?;
    let emit = |s: String| crate::output::emit(&format!("{s}\n"));
    if !json {
        emit(format!(
            "{arch} @{side}px batch {batch}, {} threads; {peak_name} peak {:.1} GFLOP/s ({})",
            peak.threads,
            peak.gflops,
            peak.isa.name()
        ))?;
        emit(format!(
            "{:<34} {:>5} {:<22} {:<18} {:>9} {:>9} {:>6} {:>9}",
            "conv (C_in→C_out k/s, input)", "count", "first layer", "pass", "ms", "GFLOP/s", "% peak", "error"
        ))?;
    }
    let mut totals: BTreeMap<&'static str, f64> = BTreeMap::new();
    for shape in conv_shapes(&model, side) {
        let g = &shape.geometry;
        let (h, w) = shape.input_hw;
        let (oh, ow) = g.output_hw(h, w);
        let input = seeded_tensor(&[batch, h, w, g.in_channels], 1);
        let weight = seeded_values(2, g.weight_len(), -0.1, 0.1);
        let grad_out = seeded_tensor(&[batch, oh, ow, g.out_channels], 3);
        let gflop = 2.0 * (batch * oh * ow * g.out_channels * g.filter_len()) as f64 / 1e9;
        // Inference runs the compiled conv (packed weights, fused epilogue); training the
        // plain one, whose weights change every step.
        let ones = vec![1.0; g.out_channels];
        let packed = PackedConv::with_precision(*g, &weight, &ones, vec![0.0; g.out_channels], precision);
        // Training's forward and 3x3 input gradient go by Winograd where it pays off
        // (filter transform on every call included); say so in the pass's name.
        let by_winograd = train && winograd::pays_off(g, batch, h, w);
        let mut passes: Vec<(&'static str, f64, Option<f64>)> = if train {
            let pass = if by_winograd { "forward (winograd)" } else { "forward" };
            vec![(pass, median_ms(iters, || drop(conv2d_nhwc(&input, &weight, g, &Epilogue::default()))), None)]
        } else {
            // Accuracy of the faster forms against the direct f32 convolution, on these inputs.
            let direct = (precision == Precision::Bf16 || winograd::fits(g))
                .then(|| PackedConv::new(*g, &weight, &ones, vec![0.0; g.out_channels]).forward(&input, None, true));
            let pass = if precision == Precision::Bf16 { "forward (bf16)" } else { "forward (compiled)" };
            let error = match (&direct, precision) {
                (Some(d), Precision::Bf16) => Some(relative_error(&packed.forward(&input, None, true), d)),
                _ => None,
            };
            let mut passes = vec![(pass, median_ms(iters, || drop(packed.forward(&input, None, true))), error)];
            if let (Precision::Bf16, true, Some(d)) = (precision, winograd_bf16::suits(g), &direct) {
                // Same layer by F(2x2, 3x3) in bf16; its GFLOP/s count direct convolution's multiplies.
                let conv =
                    WinogradBf16Conv::new(&weight, g.in_channels, g.out_channels, &ones, vec![0.0; g.out_channels]);
                let error = relative_error(&conv.forward(&input, None, true), d);
                passes.push((
                    "forward (bf16 winograd)",
                    median_ms(iters, || drop(conv.forward(&input, None, true))),
                    Some(error),
                ));
            }
            if let (Precision::F32, true, Some(d)) = (precision, winograd::fits(g), &direct) {
                // Same layer by F(4x4, 3x3); its GFLOP/s count direct convolution's multiplies.
                let conv = WinogradConv::new(&weight, g.in_channels, g.out_channels, &ones, vec![0.0; g.out_channels]);
                let error = relative_error(&conv.forward(&input, None, true), d);
                passes.push((
                    "forward (winograd)",
                    median_ms(iters, || drop(conv.forward(&input, None, true))),
                    Some(error),
                ));
            }
            passes
        };
        if train {
            passes.push((
                if by_winograd { "backward input (winograd)" } else { "backward input" },
                median_ms(iters, || drop(conv2d_nhwc_backward_input(&grad_out, &weight, g, (h, w)))),
                None,
            ));
            passes.push((
                "backward weight",
                median_ms(iters, || drop(conv2d_nhwc_backward_weight(&input, &grad_out, g))),
                None,
            ));
        }
        let label = format!(
            "{}→{} {}x{}/{}{} @{}x{}",
            g.in_channels,
            g.out_channels,
            g.kernel_h,
            g.kernel_w,
            g.stride,
            if g.groups > 1 { format!(" g{}", g.groups) } else { String::new() },
            h,
            w
        );
        for (pass, ms, error) in passes {
            let gflops = gflop / ms * 1e3;
            // Training's totals are per pass whatever the method (what one step costs).
            let total_key = if train { pass.trim_end_matches(" (winograd)") } else { pass };
            *totals.entry(total_key).or_default() += ms * shape.layers.len() as f64;
            let record = LayerRecord {
                kind: "layer",
                pass,
                shape: label.clone(),
                count: shape.layers.len(),
                first_layer: shape.layers[0].clone(),
                batch,
                ms_median: ms,
                gflops,
                share_of_peak: gflops / peak.gflops,
                error_vs_direct_f32: error,
            };
            emit(if json {
                serde_json::to_string(&record)?
            } else {
                format!(
                    "{:<34} {:>5} {:<22} {:<18} {:>9.2} {:>9.1} {:>5.0}% {:>9}",
                    record.shape,
                    record.count,
                    record.first_layer,
                    pass,
                    ms,
                    gflops,
                    100.0 * record.share_of_peak,
                    error.map_or(String::new(), |e| format!("{e:.1e}"))
                )
            })?;
        }
    }
    if !json {
        for (pass, ms) in totals {
            emit(format!("all convolutions, {pass}: {ms:.1} ms per batch of {batch}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_has_its_distinct_conv_shapes_once_each() {
        let model = ResNet::from_name("resnet50", 1000).unwrap();
        let shapes = conv_shapes(&model, 224);
        let total: usize = shapes.iter().map(|s| s.layers.len()).sum();
        assert_eq!(total, 53, "ResNet-50 has 53 convolutions");
        assert_eq!(shapes[0].layers, vec!["conv1+bn1".to_string()]);
        assert_eq!(shapes[0].input_hw, (224, 224));
        // layer3's repeated 3x3 (256→256 at 14x14) appears five times after the strided first.
        assert!(shapes.iter().any(|s| s.layers.len() == 5 && s.geometry.kernel_h == 3 && s.input_hw == (14, 14)));
    }
}
