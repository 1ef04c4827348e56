//! `resnet`: ResNet inference from one binary. Each subcommand lives in `commands/`.

mod commands;
mod inputs;
mod labels;
mod model_source;
mod output;
mod preprocessing;
mod pretrained;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// ResNet-family image models (torchvision-equal) on the CPU.
///
/// Classify images, extract embeddings or feature maps, inspect architectures, convert
/// checkpoints and measure speed. Weights come from torchvision checkpoints (`.pth`),
/// safetensors files, or `--weights imagenet` (downloaded once into the cache). Train and
/// evaluate on data sets (`train`, `eval`), and rerun the paper's plain-versus-residual
/// experiment (`experiment degradation`).
#[derive(Parser, Debug)]
#[command(name = "resnet", version, about, long_about, propagate_version = true)]
struct Cli {
    /// Worker threads for all computation (default: every core).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Classify(commands::classify::Args),
    Embed(commands::embed::Args),
    Summary(commands::summary::Args),
    Convert(commands::convert::Args),
    Bench(commands::bench::Args),
    Weights(commands::weights::Args),
    Train(commands::train::Args),
    Eval(commands::eval::Args),
    Experiment(commands::experiment::Args),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    resnet_core::kernels::memory::keep_freed_memory_for_reuse();
    let threads = cli.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        anyhow::bail!("--threads must be at least 1");
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {threads} worker threads: {e}"))?;
    match cli.command {
        Command::Classify(a) => commands::classify::run(a),
        Command::Embed(a) => commands::embed::run(a),
        Command::Summary(a) => commands::summary::run(a),
        Command::Convert(a) => commands::convert::run(a),
        Command::Bench(a) => commands::bench::run(a, threads),
        Command::Weights(a) => commands::weights::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Experiment(a) => commands::experiment::run(a),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined by ": ".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
