//! Output buffers reused across inference layers.
//!
//! A fresh `vec![0.0; n]` for every convolution's output costs a pass of zeroing (glibc's
//! `calloc` clears reused heap memory) or page faults (fresh memory), about a tenth of a
//! bf16 ResNet-50 forward. The compiled network hands each activation back with [`recycle`]
//! once the next layer has read it, and [`take_buffer`] gives it out again for an output
//! the GEMM overwrites completely, so after the first image no activation is allocated.
//! Training keeps a larger pool ([`keep_buffers_for_training`]): a step's backward hands
//! back every activation and gradient once used, so the next step's forward finds its
//! buffers there (the 1.3 GB a ResNet-50 step at batch 16 keeps) instead of having `calloc`
//! clear them again, ~5% of that step.
//! The pool is per thread (layers allocate on the thread that runs the network), holds at
//! most 8 buffers (4096 in training), and is plain safe Rust: a reused
//! buffer holds stale values, never uninitialised memory.

use std::cell::{Cell, RefCell};

use crate::tensor::Tensor;

/// Enough for a bottleneck block's activations in flight (input, three outputs, shortcut).
const MAX_POOLED: usize = 8;
/// Enough for every tensor a training step keeps (a ResNet-152 keeps ~1,500).
const MAX_POOLED_TRAINING: usize = 4096;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static LIMIT: Cell<usize> = const { Cell::new(MAX_POOLED) };
}

/// Keeps up to 4096 buffers on this thread (`MAX_POOLED_TRAINING`), so that one training step's
/// tensors serve the next. Called by each training forward.
pub fn keep_buffers_for_training() {
    LIMIT.set(MAX_POOLED_TRAINING);
}

/// Back to 8 buffers on this thread (`MAX_POOLED`), freeing all but the largest (inference
/// after training).
pub fn keep_buffers_for_inference() {
    if LIMIT.replace(MAX_POOLED) > MAX_POOLED {
        FREE.with_borrow_mut(|free| {
            free.sort_by_key(|b| std::cmp::Reverse(b.capacity()));
            free.truncate(MAX_POOLED);
        });
    }
}

/// A buffer of `len` values with unspecified contents (zeros or an earlier tensor's
/// values): the caller must overwrite every one. Reuses the smallest pooled buffer that
/// fits, else allocates.
pub fn take_buffer(len: usize) -> Vec<f32> {
    let reused = FREE.with_borrow_mut(|free| {
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| free.swap_remove(i))
    });
    match reused {
        Some(mut b) => {
            if b.len() >= len {
                b.truncate(len);
            } else {
                b.resize(len, 0.0);
            }
            b
        }
        None => vec![0.0; len],
    }
}

/// Gives `t`'s storage back for [`take_buffer`]; when the pool is full the smallest buffer
/// is freed instead.
pub fn recycle(t: Tensor) {
    let data = t.data;
    if data.capacity() == 0 {
        return;
    }
    FREE.with_borrow_mut(|free| {
        if free.len() < LIMIT.get() {
            free.push(data);
        } else if let Some((i, smallest)) = free.iter().enumerate().min_by_key(|(_, b)| b.capacity()) {
            if smallest.capacity() < data.capacity() {
                free[i] = data;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let t = Tensor::from_vec(&[4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let ptr = t.data.as_ptr();
        recycle(t);
        let b = take_buffer(3);
        assert_eq!(b.len(), 3);
        assert_eq!(b.as_ptr(), ptr, "the recycled storage is handed out again");
        let bigger = take_buffer(100);
        assert_eq!(bigger.len(), 100);
        for _ in 0..2 * MAX_POOLED {
            recycle(Tensor::zeros(&[10]));
        }
        FREE.with_borrow(|free| assert!(free.len() <= MAX_POOLED));
        // Training keeps more, and inference afterwards frees all but the largest.
        keep_buffers_for_training();
        for len in 1..=2 * MAX_POOLED {
            recycle(Tensor::zeros(&[len]));
        }
        FREE.with_borrow(|free| assert!(free.len() > MAX_POOLED));
        keep_buffers_for_inference();
        FREE.with_borrow(|free| {
            assert_eq!(free.len(), MAX_POOLED);
            assert!(free.iter().all(|b| b.capacity() > MAX_POOLED));
        });
    }
}
