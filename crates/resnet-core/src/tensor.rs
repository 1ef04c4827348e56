//! A plain owned f32 tensor. Activations are NHWC (channels last); see DESIGN.md for why.

/// Row-major f32 tensor. For activations the shape is `[N, H, W, C]` (or `[N, C]` after
/// pooling); for weights the layout is documented where they are stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor { shape: shape.to_vec(), data: vec![0.0; shape.iter().product()] }
    }

    /// Wraps `data`; returns `None` when its length does not match `shape`.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Option<Tensor> {
        (shape.iter().product::<usize>() == data.len()).then(|| Tensor { shape: shape.to_vec(), data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// NCHW -> NHWC (PyTorch's layout to ours).
    pub fn nchw_to_nhwc(shape_nchw: [usize; 4], data: &[f32]) -> Tensor {
        let [n, c, h, w] = shape_nchw;
        let mut out = vec![0.0; n * c * h * w];
        for ni in 0..n {
            for ci in 0..c {
                for hi in 0..h {
                    for wi in 0..w {
                        out[((ni * h + hi) * w + wi) * c + ci] = data[((ni * c + ci) * h + hi) * w + wi];
                    }
                }
            }
        }
        Tensor { shape: vec![n, h, w, c], data: out }
    }

    /// NHWC -> NCHW data (ours to PyTorch's layout). Panics if the tensor is not 4-d,
    /// which only code (not user input) can cause.
    pub fn to_nchw(&self) -> Vec<f32> {
        let (n, h, w, c) = (self.shape[0], self.shape[1], self.shape[2], self.shape[3]);
        let mut out = vec![0.0; self.data.len()];
        for ni in 0..n {
            for hi in 0..h {
                for wi in 0..w {
                    for ci in 0..c {
                        out[((ni * c + ci) * h + hi) * w + wi] = self.data[((ni * h + hi) * w + wi) * c + ci];
                    }
                }
            }
        }
        out
    }
}
