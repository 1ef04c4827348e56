//! Row-wise softmax and top-k, used to turn logits into probabilities and labels.

/// Softmax of each row of `[rows, cols]` logits, computed stably (max subtracted) in f64.
pub fn softmax_rows(logits: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; logits.len()];
    if cols == 0 {
        return out;
    }
    for (row, dst) in logits.chunks(cols).zip(out.chunks_mut(cols)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        for (d, &v) in dst.iter_mut().zip(row) {
            *d = ((v as f64 - max).exp() / sum) as f32;
        }
    }
    out
}

/// Indices of the `k` largest values, largest first; ties keep the lower index first.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax_rows(&[1000.0, 1000.0, 0.0, 1.0, 2.0, 3.0], 3);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        assert!((p[3..].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_descending() {
        assert_eq!(top_k(&[0.1, 0.7, 0.2, 0.7], 3), vec![1, 3, 2]);
    }
}
