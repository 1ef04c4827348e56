//! Times forward_train + backward for a network (no optimizer), to see where training time
//! goes.  cargo run --release -p resnet-core --example train_step_timing -- resnet20 128 32
use std::time::Instant;

use resnet_core::kernels::loss::softmax_cross_entropy;
use resnet_core::model::seeded::{seed_parameters, seeded_values};
use resnet_core::{ResNet, ResNetConfig, Tensor};

fn main() {
    resnet_core::kernels::memory::keep_freed_memory_for_reuse();
    let args: Vec<String> = std::env::args().collect();
    let arch = args.get(1).map_or("resnet20", |s| s.as_str());
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(32);
    let Ok(config) = ResNetConfig::from_name(arch) else {
        eprintln!("unknown architecture {arch}");
        return;
    };
    let classes = config.num_classes;
    let Ok(mut model) = ResNet::new(config) else { return };
    seed_parameters(&mut model, 1);
    let x = Tensor::nchw_to_nhwc([batch, 3, size, size], &seeded_values(2, batch * 3 * size * size, -2.0, 2.0));
    let labels: Vec<usize> = (0..batch).map(|i| i % classes).collect();
    for i in 0..4 {
        let t = Instant::now();
        let Ok((logits, cache)) = model.forward_train(&x) else { return };
        let t_fwd = t.elapsed();
        let Ok((_, g)) = softmax_cross_entropy(&logits, &labels, 0.0) else { return };
        model.backward(&g, cache);
        model.zero_grad();
        let total = t.elapsed();
        println!(
            "step {i}: forward {:.1} ms, backward {:.1} ms, {:.1} images/s",
            t_fwd.as_secs_f64() * 1e3,
            (total - t_fwd).as_secs_f64() * 1e3,
            batch as f64 / total.as_secs_f64()
        );
    }
}
