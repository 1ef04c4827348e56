//! Training kernels against PyTorch, from fixtures written by
//! tools/reference/gen_kernel_fixtures.py (stored in our layouts: NHWC, OHWI).
//!
//! The expected values are PyTorch's computed in float64 from the float32 inputs, i.e. the
//! exact answer. Tolerance: max |ours − expected| ≤ 1e-5 · max |expected| per tensor (a
//! relative error on the tensor's scale, so values near zero are not held to an impossible
//! per-element relative bound). Our f32 kernels land within a few 1e-7 (see the messages
//! printed with `--nocapture`); PyTorch's own float32 kernels are off by the same amount,
//! except BatchNorm with a large mean, where PyTorch's float32 is off by up to 2e-4 and
//! ours, which subtracts the mean in f64, is not.

use std::path::PathBuf;

use resnet_core::kernels::activation::relu_forward;
use resnet_core::kernels::batchnorm::{
    batch_norm_backward, batch_norm_eval_forward, batch_norm_relu_backward, batch_norm_train_forward,
    update_running_stats,
};
use resnet_core::kernels::conv_backward::{conv2d_nhwc_backward_input, conv2d_nhwc_backward_weight};
use resnet_core::kernels::linear::{linear_backward, linear_forward};
use resnet_core::kernels::loss::softmax_cross_entropy;
use resnet_core::kernels::pool_backward::{max_pool2d_nhwc_backward, max_pool2d_nhwc_with_indices};
use resnet_core::kernels::{conv2d_nhwc, Conv2dGeometry, Epilogue};
use resnet_core::Tensor;
use safetensors::{Dtype, SafeTensors};

const TOLERANCE: f64 = 1e-5;

struct Fixture {
    name: &'static str,
    bytes: Vec<u8>,
}

impl Fixture {
    fn open(name: &'static str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tools/reference/fixtures/kernels")
            .join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixture { name, bytes }
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn tensor(&self, key: &str) -> Tensor {
        let st = self.tensors();
        let view = st.tensor(key).unwrap_or_else(|e| panic!("{}: {key}: {e}", self.name));
        assert_eq!(view.dtype(), Dtype::F32, "{}: {key} is not f32", self.name);
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Tensor::from_vec(view.shape(), data).unwrap_or_else(|| panic!("{}: {key}: bad length", self.name))
    }

    fn ints(&self, key: &str) -> Vec<usize> {
        let st = self.tensors();
        let view = st.tensor(key).unwrap_or_else(|e| panic!("{}: {key}: {e}", self.name));
        assert_eq!(view.dtype(), Dtype::I64, "{}: {key} is not i64", self.name);
        view.data()
            .chunks_exact(8)
            .map(|b| {
                let v = i64::from_le_bytes(b.try_into().unwrap());
                usize::try_from(v).unwrap_or_else(|_| panic!("{}: {key} holds {v}", self.name))
            })
            .collect()
    }
}

/// Asserts `ours` is within the tolerance of `expected`; returns the relative error.
fn assert_close(what: &str, ours: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(ours.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(1e-30f64, |m, &v| m.max((v as f64).abs()));
    let diff = ours.iter().zip(expected).fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    let relative = diff / scale;
    eprintln!("{what}: max |diff| {diff:.2e}, relative to max |expected| {scale:.2}: {relative:.2e}");
    assert!(relative <= TOLERANCE, "{what}: relative error {relative:.2e} exceeds {TOLERANCE:.0e}");
    relative
}

#[test]
fn conv2d_gradients_equal_pytorch() {
    let f = Fixture::open("conv2d");
    for case in ["stem", "s1", "s2", "pointwise", "downsample", "grouped", "grouped_s1"] {
        let g = f.ints(&format!("{case}.geometry"));
        let geom = Conv2dGeometry {
            in_channels: g[0],
            out_channels: g[1],
            kernel_h: g[2],
            kernel_w: g[2],
            stride: g[3],
            padding: g[4],
            groups: g[5],
        };
        let input = f.tensor(&format!("{case}.input"));
        let weight = f.tensor(&format!("{case}.weight"));
        let grad_out = f.tensor(&format!("{case}.grad_output"));
        let output = conv2d_nhwc(&input, &weight.data, &geom, &Epilogue::default());
        assert_close(&format!("conv2d {case} output"), &output.data, &f.tensor(&format!("{case}.output")).data);
        let hw = (input.shape[1], input.shape[2]);
        let grad_input = conv2d_nhwc_backward_input(&grad_out, &weight.data, &geom, hw);
        assert_eq!(grad_input.shape, input.shape);
        assert_close(
            &format!("conv2d {case} grad_input"),
            &grad_input.data,
            &f.tensor(&format!("{case}.grad_input")).data,
        );
        let grad_weight = conv2d_nhwc_backward_weight(&input, &grad_out, &geom);
        assert_close(
            &format!("conv2d {case} grad_weight"),
            &grad_weight,
            &f.tensor(&format!("{case}.grad_weight")).data,
        );
    }
}

#[test]
fn batchnorm_training_equals_pytorch() {
    const EPS: f32 = 1e-5;
    let f = Fixture::open("batchnorm");
    for case in ["plain", "offset"] {
        let t = |key: &str| f.tensor(&format!("{case}.{key}"));
        let (x, gamma, beta, grad_out) = (t("input"), t("gamma").data, t("beta").data, t("grad_output"));
        let (y, saved) = batch_norm_train_forward(&x, &gamma, &beta, EPS).expect("fixture has a batch");
        assert_close(&format!("batchnorm {case} output"), &y.data, &t("output").data);

        let grads = batch_norm_backward(&grad_out, &saved, &gamma);
        assert_close(&format!("batchnorm {case} grad_input"), &grads.grad_input.data, &t("grad_input").data);
        assert_close(&format!("batchnorm {case} grad_gamma"), &grads.grad_gamma, &t("grad_gamma").data);
        assert_close(&format!("batchnorm {case} grad_beta"), &grads.grad_beta, &t("grad_beta").data);

        let relu = batch_norm_relu_backward(&grad_out, &relu_forward(&y), &saved, &gamma);
        assert_close(&format!("batchnorm+relu {case} grad_input"), &relu.grad_input.data, &t("relu_grad_input").data);
        assert_close(&format!("batchnorm+relu {case} grad_gamma"), &relu.grad_gamma, &t("relu_grad_gamma").data);
        assert_close(&format!("batchnorm+relu {case} grad_beta"), &relu.grad_beta, &t("relu_grad_beta").data);

        let (mut running_mean, mut running_var) = (t("running_mean_before").data, t("running_var_before").data);
        let y_eval = batch_norm_eval_forward(&x, &gamma, &beta, &running_mean, &running_var, EPS);
        assert_close(&format!("batchnorm {case} eval output"), &y_eval.data, &t("eval_output").data);
        update_running_stats(&mut running_mean, &mut running_var, &saved, 0.1);
        assert_close(&format!("batchnorm {case} running_mean"), &running_mean, &t("running_mean_after").data);
        assert_close(&format!("batchnorm {case} running_var"), &running_var, &t("running_var_after").data);
    }
}

#[test]
fn max_pool_indices_and_gradient_equal_pytorch() {
    let f = Fixture::open("maxpool");
    let input = f.tensor("input");
    for case in ["k3s2p1", "k2s2p0"] {
        let g = f.ints(&format!("{case}.geometry"));
        let (out, indices) = max_pool2d_nhwc_with_indices(&input, g[0], g[1], g[2]);
        assert_eq!(out, f.tensor(&format!("{case}.output")), "max pool {case} output");
        assert_eq!(
            indices.iter().map(|&i| i as usize).collect::<Vec<_>>(),
            f.ints(&format!("{case}.indices")),
            "max pool {case}: argmax (first maximum wins)"
        );
        let grad_out = f.tensor(&format!("{case}.grad_output"));
        let grad_input = max_pool2d_nhwc_backward(&grad_out, &indices, (input.shape[1], input.shape[2]));
        assert_close(
            &format!("max pool {case} grad_input"),
            &grad_input.data,
            &f.tensor(&format!("{case}.grad_input")).data,
        );
    }
}

#[test]
fn cross_entropy_equals_pytorch() {
    let f = Fixture::open("cross_entropy");
    let logits = f.tensor("logits");
    let labels = f.ints("labels");
    for smoothing in [0.0f32, 0.1] {
        let (loss, grad) = softmax_cross_entropy(&logits, &labels, smoothing).expect("labels in range");
        let key = format!("smoothing_{smoothing:?}");
        assert_close(&format!("cross entropy {key} loss"), &[loss], &f.tensor(&format!("{key}.loss")).data);
        assert_close(&format!("cross entropy {key} grad"), &grad.data, &f.tensor(&format!("{key}.grad_logits")).data);
    }
}

#[test]
fn linear_equals_pytorch() {
    let f = Fixture::open("linear");
    let (x, weight, bias, grad_out) =
        (f.tensor("input"), f.tensor("weight"), f.tensor("bias"), f.tensor("grad_output"));
    let y = linear_forward(&x, &weight.data, Some(&bias.data), weight.shape[0]);
    assert_close("linear output", &y.data, &f.tensor("output").data);
    let grads = linear_backward(&x, &weight.data, &grad_out);
    assert_close("linear grad_input", &grads.grad_input.data, &f.tensor("grad_input").data);
    assert_close("linear grad_weight", &grads.grad_weight, &f.tensor("grad_weight").data);
    assert_close("linear grad_bias", &grads.grad_bias, &f.tensor("grad_bias").data);
}
