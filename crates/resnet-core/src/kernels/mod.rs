//! CPU kernels on NHWC f32 data.
