//! `resnet bench`: inference speed and memory, median of timed runs after warm-up.

use std::time::Instant;

use resnet_core::kernels::packed_gemm_bf16::{best_bf16_path, Bf16Path};
use resnet_core::model::seeded::{seed_parameters, seeded_values};
use resnet_core::model::{CompileOptions, Precision};
use resnet_core::{ResNet, Tensor};

use crate::model_source::{PlanArgs, PrecisionArg};
use serde::Serialize;

/// Measure inference or training speed, memory, and this CPU's peak.
///
/// For each batch size, median latency and images per second over
/// timed runs after warm-up, and the process's peak resident memory. Weights are seeded
/// (speed does not depend on their values). `--train` times whole training steps,
/// `--peak` the CPU's multiply-add limit, `--layers` each convolution shape against that
/// limit. Compare with PyTorch and ONNX Runtime using tools/bench/compare.py on the same
/// machine and thread count.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture to measure.
    #[arg(long, default_value = "resnet50")]
    arch: String,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Input height and width.
    #[arg(long, default_value_t = 224)]
    input: usize,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed runs per batch size (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// One JSON object per batch size on stdout (JSON Lines).
    #[arg(long)]
    json: bool,
    /// Measure training steps (forward, cross-entropy, backward, SGD momentum step) instead
    /// of inference, and the memory the forward keeps for the backward (activations and
    /// BatchNorm's normalised inputs); e.g. --train --arch resnet20 --batch 128 --input 32.
    #[arg(long)]
    train: bool,
    /// Measure this CPU's fp32 (and, with AVX512-BF16, bf16) multiply-add peak in GFLOP/s
    /// with a register-only kernel on every thread; nothing else is run.
    #[arg(long)]
    peak: bool,
    /// Time every distinct convolution shape of --arch at --input and the first --batch
    /// size: ms, GFLOP/s and share of the measured fp32 peak (forward; with --train also
    /// both backwards).
    #[arg(long)]
    layers: bool,
    /// Run the network as built for training (BN as a separate scale/shift, weights packed
    /// by the GEMM on every call) instead of the compiled inference plan; to compare the two.
    #[arg(long)]
    uncompiled: bool,
    #[command(flatten)]
    plan: PlanArgs,
}

#[derive(Serialize)]
struct TrainBenchResult {
    arch: String,
    batch: usize,
    input: usize,
    threads: usize,
    iters: usize,
    step_ms_median: f64,
    train_images_per_sec_median: f64,
    /// What the forward keeps for the backward (activations, BN's normalised inputs).
    activation_mb: f64,
    peak_rss_mb: f64,
}

/// Full training steps on seeded data: the same work `resnet train` does per batch.
fn run_train(args: &Args, threads: usize) -> anyhow::Result<()> {
    let config = resnet_core::ResNetConfig::from_name(&args.arch)?;
    let classes = config.num_classes;
    let mut model = ResNet::new(config)?;
    seed_parameters(&mut model, 0);
    let mut sgd = resnet_train::Sgd::new(resnet_train::SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: false,
        weight_decay: 5e-4,
    })?;
    for &batch in &args.batch {
        let s = args.input;
        let x = Tensor::nchw_to_nhwc([batch, 3, s, s], &seeded_values(1, batch * 3 * s * s, -2.0, 2.0));
        let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
        let mut times = Vec::new();
        let mut activation_bytes = 0;
        for i in 0..args.warmup + args.iters {
            let t = Instant::now();
            let (logits, cache) = model.forward_train(&x)?;
            activation_bytes = cache.activation_bytes();
            let (_, grad) = resnet_core::kernels::loss::softmax_cross_entropy(&logits, &labels, 0.0)?;
            model.backward(&grad, cache);
            resnet_train::sgd_step_model(&mut model, &mut sgd, 0.01, false, false)?;
            if i >= args.warmup {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let med = median(&mut times);
        let r = TrainBenchResult {
            arch: args.arch.clone(),
            batch,
            input: s,
            threads,
            iters: args.iters,
            step_ms_median: med,
            train_images_per_sec_median: batch as f64 * 1e3 / med,
            activation_mb: activation_bytes as f64 / (1024.0 * 1024.0),
            peak_rss_mb: peak_rss_mb(),
        };
        let line = if args.json {
            serde_json::to_string(&r)?
        } else {
            format!(
                "train {} batch {} @{}px, {} threads: median {:.1} ms/step, {:.1} images/s, activations {:.0} MB, peak RSS {:.0} MB",
                r.arch, batch, s, threads, med, r.train_images_per_sec_median, r.activation_mb, r.peak_rss_mb
            )
        };
        crate::output::emit(&format!("{line}\n"))?;
    }
    Ok(())
}

/// What runs the inference benchmark.
enum Engine {
    Direct(Box<ResNet>),
    Compiled(Box<resnet_core::model::CompiledResNet>),
}

#[derive(Serialize)]
struct BenchResult {
    arch: String,
    precision: &'static str,
    batch: usize,
    input: usize,
    threads: usize,
    iters: usize,
    latency_ms_median: f64,
    latency_ms_min: f64,
    images_per_sec_median: f64,
    peak_rss_mb: f64,
}

/// Peak resident set size of this process (VmHWM), in MiB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run(args: Args, threads: usize) -> anyhow::Result<()> {
    if args.iters == 0 || args.batch.contains(&0) {
        anyhow::bail!("--iters and every --batch size must be at least 1");
    }
    if args.input < 32 {
        anyhow::bail!("--input {} is too small; use at least 32", args.input);
    }
    if args.peak {
        return super::bench_layers::run_peak(args.json);
    }
    // The compiled plan takes --no-winograd through its options; training's convolutions
    // through this switch.
    resnet_core::kernels::winograd::set_enabled_for_training(!args.plan.no_winograd);
    let bf16 = args.plan.precision == PrecisionArg::Bf16;
    if bf16 && (args.train || args.uncompiled) {
        anyhow::bail!("--precision bf16 applies to the compiled inference plan; drop --train / --uncompiled");
    }
    if bf16 && best_bf16_path() == Bf16Path::Emulated {
        eprintln!(
            "note: this CPU lacks AVX512-BF16 (or RESNET_PORTABLE_KERNELS=1 is set): bf16 runs emulated in f32, slower than fp32"
        );
    }
    if args.layers {
        let batch = args.batch[0];
        let precision = args.plan.precision.into();
        return super::bench_layers::run_layers(
            &args.arch, args.input, batch, args.iters, args.train, precision, args.json,
        );
    }
    if args.train {
        return run_train(&args, threads);
    }
    let mut model = ResNet::from_name(&args.arch, 1000)?;
    seed_parameters(&mut model, 0);
    let engine = if args.uncompiled {
        Engine::Direct(Box::new(model))
    } else {
        let options = args.plan.options();
        Engine::Compiled(Box::new(model.into_compiled_with(options)))
    };
    let forward = |x: &Tensor| match &engine {
        Engine::Direct(m) => m.forward(x),
        Engine::Compiled(c) => c.forward(x),
    };
    for &batch in &args.batch {
        let s = args.input;
        let x = Tensor::nchw_to_nhwc([batch, 3, s, s], &seeded_values(1, batch * 3 * s * s, -2.0, 2.0));
        for _ in 0..args.warmup {
            forward(&x)?;
        }
        let mut times = Vec::with_capacity(args.iters);
        for _ in 0..args.iters {
            let t = Instant::now();
            std::hint::black_box(forward(&x)?);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut times);
        let r = BenchResult {
            arch: args.arch.clone(),
            precision: args.plan.precision.name(),
            batch,
            input: s,
            threads,
            iters: args.iters,
            latency_ms_median: med,
            latency_ms_min: min,
            images_per_sec_median: batch as f64 * 1e3 / med,
            peak_rss_mb: peak_rss_mb(),
        };
        if args.json {
            crate::output::emit(&format!("{}\n", serde_json::to_string(&r)?))?;
        } else {
            crate::output::emit(&format!(
                "{} {} batch {:>3} @{}px, {} threads: median {:8.2} ms (min {:8.2}), {:7.2} images/s, peak RSS {:.0} MB\n",
                r.arch, r.precision, batch, s, threads, med, min, r.images_per_sec_median, r.peak_rss_mb
            ))?;
        }
    }
    drop(engine);
    if bf16 {
        // After the timings, so its two extra networks stay out of their peak RSS; the seeded
        // weights are rebuilt identically.
        let mut model = ResNet::from_name(&args.arch, 1000)?;
        seed_parameters(&mut model, 0);
        report_bf16_agreement(&model, args.input)?;
    }
    Ok(())
}

/// bf16 against fp32 on 4 seeded inputs, on stderr: top-1 agreement and the largest logit
/// difference (the parity tests check the same against torchvision's own logits).
fn report_bf16_agreement(model: &ResNet, side: usize) -> anyhow::Result<()> {
    let batch = 4;
    let x = Tensor::nchw_to_nhwc([batch, 3, side, side], &seeded_values(2, batch * 3 * side * side, -2.0, 2.0));
    let f32_logits =
        model.clone().into_compiled_with(CompileOptions { precision: Precision::F32, winograd: false }).forward(&x)?;
    let bf16_logits = model.clone().into_compiled_with(Precision::Bf16).forward(&x)?;
    let classes = f32_logits.shape[1];
    let top1 = |row: &[f32]| resnet_core::kernels::elementwise::top_k(row, 1)[0];
    let agree = f32_logits
        .data
        .chunks(classes)
        .zip(bf16_logits.data.chunks(classes))
        .filter(|(a, b)| top1(a) == top1(b))
        .count();
    let max_diff = f32_logits.data.iter().zip(&bf16_logits.data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let max_logit = f32_logits.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "bf16 vs fp32 on {batch} seeded inputs: top-1 agrees on {agree}/{batch}, max |logit diff| {max_diff:.4} \
         ({:.2}% of max |logit| {max_logit:.3})",
        100.0 * max_diff / max_logit.max(f32::MIN_POSITIVE)
    );
    Ok(())
}
