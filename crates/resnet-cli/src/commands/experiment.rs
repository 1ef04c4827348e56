//! `resnet experiment`: the paper's experiments end to end, from training to figures.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use resnet_core::model::Shortcut;
use resnet_core::{BlockKind, ResNetConfig};
use resnet_data::{Dataset, DatasetKind};
use resnet_train::{ErrorCurves, GradientNorms, CHECKPOINT_FILE, METRICS_FILE};
use serde_json::json;

use super::train::{build_model, open_splits, seed_parameters_kaiming, stop_on_ctrl_c, train_options, Recipe, Splits};

/// Reproduce an experiment of the ResNet paper (He et al., 2015).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub experiment: Experiment,
}

#[derive(clap::Subcommand, Debug)]
pub enum Experiment {
    Degradation(Degradation),
}

/// Plain versus residual nets of growing depth, one recipe: the degradation problem
///
/// The paper's Figure 6: a deeper plain network trains to a *higher* training error than a
/// shallower one (degradation), while with identity shortcuts the deeper residual network
/// does better. This trains each of --archs in turn with the same recipe and seed, then
/// draws the figure.
///
/// Writes into DIR:
///   <arch>/                 one run directory per architecture (metrics.jsonl, curves.png,
///                           weights, checkpoint), exactly as `resnet train --out` writes it
///   degradation.png         training error (thin) and test error (thick) per epoch; plain
///                           nets dashed on the left, residual nets solid on the right, one
///                           colour per depth, the same scale on both sides
///   gradient_norms.png/json the L2 norm of each conv layer's weight gradient at
///                           initialisation (one batch, train-mode forward and backward), for
///                           the deepest plain and the deepest residual net
///   summary.json            final training/test error and best test error per architecture
///                           (also printed as a table)
///   experiment.json         the architectures and recipe, to see what was run
///
/// Interrupt it with Ctrl-C at any time: the current run saves a checkpoint. Running the same
/// command again skips the finished runs and resumes the interrupted one; a single run can
/// also be continued with `resnet train --arch <arch> <same recipe flags> --resume DIR/<arch>`.
///
/// Example:
///   resnet experiment degradation --dataset fashion-mnist --epochs 30 --batch 128 --lr 0.1
///     --out runs/degradation
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct Degradation {
    /// Architectures to train, in order (comma-separated): plainN (no shortcuts) and resnetN
    /// (identity shortcuts) for N = 20, 32, 44, 56, 110.
    #[arg(long, value_delimiter = ',', default_value = "plain20,plain56,resnet20,resnet56")]
    pub archs: Vec<String>,
    #[command(flatten)]
    pub recipe: Recipe,
    /// Experiment directory (default: runs/degradation-<dataset>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.experiment {
        Experiment::Degradation(a) => degradation(a),
    }
}

/// One architecture of the experiment.
#[derive(Clone, Debug)]
struct Arch {
    /// Lower case, also the name of its run directory.
    name: String,
    /// Weighted layers: convs on the main path plus the final linear layer.
    depth: usize,
    residual: bool,
}

/// Checks every name before any training starts.
fn parse_archs(names: &[String]) -> anyhow::Result<Vec<Arch>> {
    let mut archs: Vec<Arch> = Vec::new();
    for raw in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let name = raw.to_ascii_lowercase().replace('-', "_");
        let config = ResNetConfig::from_name(&name).with_context(|| format!("--archs {raw}"))?;
        if archs.iter().any(|a| a.name == name) {
            anyhow::bail!("--archs names {name} twice");
        }
        let per_block = if config.block == BlockKind::Basic { 2 } else { 3 };
        let depth = 2 + per_block * config.layers.iter().sum::<usize>();
        archs.push(Arch { name, depth, residual: config.shortcut != Shortcut::None });
    }
    if archs.is_empty() {
        anyhow::bail!("--archs is empty; e.g. --archs plain20,plain56,resnet20,resnet56");
    }
    Ok(archs)
}

/// Where an architecture's run directory stands.
#[derive(Debug, PartialEq)]
enum RunState {
    Fresh,
    Resume { epochs_done: u64 },
    Finished,
}

fn run_state(run_dir: &Path, recipe: &Recipe) -> anyhow::Result<RunState> {
    if !run_dir.join(CHECKPOINT_FILE).exists() {
        return Ok(RunState::Fresh);
    }
    let state = resnet_train::load_train_state(run_dir)?;
    let finished = state.epoch >= recipe.epochs || recipe.max_steps.is_some_and(|m| state.step >= m);
    Ok(if finished { RunState::Finished } else { RunState::Resume { epochs_done: state.epoch } })
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    resnet_train::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Warns about recipe flags that differ from the ones `experiment.json` recorded last time.
fn warn_about_changes(path: &Path, recipe: &serde_json::Value) {
    let Ok(old) = std::fs::read_to_string(path) else { return };
    let Ok(old) = serde_json::from_str::<serde_json::Value>(&old) else { return };
    let Some(new) = recipe.as_object() else { return };
    for (key, value) in new.iter().filter(|(k, _)| !matches!(k.as_str(), "workers" | "log_every")) {
        let before = &old["recipe"][key];
        if before != value {
            eprintln!(
                "warning: --{} is {value} now but was {before} when this experiment last ran; runs \
                 trained before keep the old setting",
                key.replace('_', "-")
            );
        }
    }
}

fn degradation(args: Degradation) -> anyhow::Result<()> {
    let archs = parse_archs(&args.archs)?;
    let recipe = &args.recipe;
    let Splits { kind, train, test } = open_splits(recipe)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(format!("degradation-{}", kind.name())));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let recipe_json = serde_json::to_value(recipe)?;
    let experiment_file = out.join("experiment.json");
    warn_about_changes(&experiment_file, &recipe_json);
    let names: Vec<&str> = archs.iter().map(|a| a.name.as_str()).collect();
    write_json(&experiment_file, &json!({ "experiment": "degradation", "archs": names, "recipe": recipe_json }))?;
    let stop = stop_on_ctrl_c()?;
    eprintln!(
        "degradation experiment: {} on {} ({} train / {} test samples), {} epochs each, in {}",
        names.join(", "),
        kind.name(),
        train.len(),
        test.as_ref().map_or(0, |t| t.len()),
        recipe.epochs,
        out.display()
    );

    gradient_norms(&archs, recipe, kind, train.clone(), &out)?;

    let mut interrupted = false;
    for arch in &archs {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let run_dir = out.join(&arch.name);
        let resume = match run_state(&run_dir, recipe)? {
            RunState::Finished => {
                eprintln!("{}: finished earlier, skipped ({})", arch.name, run_dir.display());
                continue;
            }
            RunState::Resume { epochs_done } => {
                eprintln!("{}: resuming after epoch {epochs_done}", arch.name);
                true
            }
            RunState::Fresh => {
                // Records of an attempt that never reached a checkpoint would mix with the new run's.
                let stale = run_dir.join(METRICS_FILE);
                if stale.exists() {
                    std::fs::remove_file(&stale).with_context(|| format!("cannot remove {}", stale.display()))?;
                }
                false
            }
        };
        let mut model = build_model(&arch.name, train.channels(), train.num_classes(), recipe.projection_shortcuts)?;
        seed_parameters_kaiming(&mut model, recipe.seed);
        let opts = train_options(recipe, kind, train.len(), run_dir.clone(), false)?;
        eprintln!("{}: training ({} parameters) into {}", arch.name, model.parameter_count(), run_dir.display());
        let summary = resnet_train::train(&mut model, train.clone(), test.clone(), &opts, resume, &stop)
            .with_context(|| format!("training {}", arch.name))?;
        if summary.interrupted {
            interrupted = true;
            break;
        }
    }

    let curves = archs.iter().map(|a| error_curves(a, &out)).collect::<anyhow::Result<Vec<_>>>()?;
    let title = format!("{}: plain vs residual networks, {} epochs", kind.name(), recipe.epochs);
    let figure = out.join("degradation.png");
    resnet_train::plot_degradation(&curves, &title, &figure)?;
    let runs: Vec<serde_json::Value> = curves.iter().map(summary_entry).collect();
    let mut complete = !interrupted;
    for arch in &archs {
        complete &= run_state(&out.join(&arch.name), recipe)? == RunState::Finished;
    }
    write_json(
        &out.join("summary.json"),
        &json!({
            "experiment": "degradation",
            "dataset": kind.name(),
            "epochs": recipe.epochs,
            "complete": complete,
            "errors_are": "percent of images misclassified: 100 * (1 - accuracy)",
            "runs": runs,
        }),
    )?;
    print_table(&curves);
    eprintln!("figures: {} and {}", figure.display(), out.join("gradient_norms.png").display());
    if interrupted {
        eprintln!("interrupted: run the same command again to continue (finished runs are skipped)");
    }
    Ok(())
}

/// The architecture's error curves from its metrics file (none yet if it has not started).
fn error_curves(arch: &Arch, out: &Path) -> anyhow::Result<ErrorCurves> {
    let metrics = out.join(&arch.name).join(METRICS_FILE);
    let records = if metrics.exists() { resnet_train::read_metrics(&metrics)? } else { Vec::new() };
    Ok(ErrorCurves::from_records(&arch.name, arch.depth, arch.residual, &records))
}

fn summary_entry(c: &ErrorCurves) -> serde_json::Value {
    json!({
        "arch": c.label,
        "depth": c.depth,
        "residual": c.residual,
        "epochs_done": c.points.len(),
        "final_train_error": c.final_train_error(),
        "final_test_error": c.final_test_error(),
        "best_test_error": c.best_test_error(),
    })
}

fn print_table(curves: &[ErrorCurves]) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}%"));
    println!(
        "{:<10} {:>5} {:>6} {:>17} {:>16} {:>15}",
        "arch", "depth", "epochs", "final train error", "final test error", "best test error"
    );
    for c in curves {
        println!(
            "{:<10} {:>5} {:>6} {:>17} {:>16} {:>15}",
            c.label,
            c.depth,
            c.points.len(),
            pct(c.final_train_error()),
            pct(c.final_test_error()),
            pct(c.best_test_error())
        );
    }
}

/// Gradient norms per conv layer at initialisation for the deepest plain and the deepest
/// residual net of `archs`: the first training batch, Kaiming-initialised weights (the same
/// as training starts from), one train-mode forward and backward.
fn gradient_norms(
    archs: &[Arch],
    recipe: &Recipe,
    kind: DatasetKind,
    train: Arc<dyn Dataset>,
    out: &Path,
) -> anyhow::Result<()> {
    let deepest = |residual: bool| archs.iter().filter(|a| a.residual == residual).max_by_key(|a| a.depth);
    let (channels, classes) = (train.channels(), train.num_classes());
    let opts = train_options(recipe, kind, train.len(), out.to_path_buf(), false)?;
    let (x, labels) = resnet_train::first_batch(train, &opts)?;
    let mut nets = Vec::new();
    for arch in [deepest(false), deepest(true)].into_iter().flatten() {
        let mut model = build_model(&arch.name, channels, classes, recipe.projection_shortcuts)?;
        seed_parameters_kaiming(&mut model, recipe.seed);
        let layers = resnet_train::conv_gradient_norms(&mut model, &x, &labels)
            .with_context(|| format!("gradient norms of {}", arch.name))?;
        if let (Some(first), Some(last)) = (layers.first(), layers.last()) {
            eprintln!(
                "{}: gradient norm at initialisation {:.3e} at the first conv layer, {:.3e} at the last",
                arch.name, first.norm, last.norm
            );
        }
        nets.push(GradientNorms { label: arch.name.clone(), residual: arch.residual, layers });
    }
    write_json(
        &out.join("gradient_norms.json"),
        &json!({
            "what": "L2 norm of each conv layer's weight gradient, network order, at initialisation",
            "dataset": kind.name(),
            "batch": labels.len(),
            "seed": recipe.seed,
            "loss": "mean softmax cross-entropy, train-mode BatchNorm",
            "nets": nets,
        }),
    )?;
    let title = format!("Conv weight gradient norms at initialisation, one batch of {}", labels.len());
    resnet_train::plot_gradient_norms(&nets, &title, &out.join("gradient_norms.png"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archs_are_checked_and_described() {
        let names = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        let archs = parse_archs(&names("plain20, ResNet56,resnet110")).unwrap();
        let described: Vec<(&str, usize, bool)> =
            archs.iter().map(|a| (a.name.as_str(), a.depth, a.residual)).collect();
        assert_eq!(described, [("plain20", 20, false), ("resnet56", 56, true), ("resnet110", 110, true)]);
        assert_eq!(parse_archs(&names("resnet18")).unwrap()[0].depth, 18);
        assert_eq!(parse_archs(&names("resnet50")).unwrap()[0].depth, 50);
        let err = |s: &str| parse_archs(&names(s)).unwrap_err().to_string();
        assert!(err("plain21").contains("plain21"));
        assert!(err("plain20,plain20").contains("twice"));
        assert!(err(" ,").contains("empty"));
    }
}
