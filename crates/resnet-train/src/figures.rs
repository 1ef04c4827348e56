//! The experiment figures, drawn with the machinery of `plot.rs`:
//!
//! - [`plot_degradation`]: the paper's Figure 6. Training and test error per epoch of plain
//!   and residual networks of several depths; plain nets on the left, residual nets on the
//!   right on the same scale, one colour per depth, thin lines for training error and thick
//!   for test error, plain nets dashed and residual nets solid.
//! - [`plot_gradient_norms`]: the L2 norm of each conv layer's weight gradient at
//!   initialisation, layer by layer in network order, on a log scale: plain against residual.

use std::path::Path;

use serde::Serialize;

use crate::gradnorm::LayerGradient;
use crate::metrics::MetricRecord;
use crate::plot::{axis, encode_png, epoch_records, text_width, tick_label, Canvas, GRID, INK};
use crate::{write_atomic, TrainError};

/// Matplotlib's "tab10": one colour per depth, in order of increasing depth.
const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
const PLAIN_DASH: Option<(f32, f32)> = Some((12.0, 7.0));
const TRAIN_WIDTH: f32 = 1.5;
const TEST_WIDTH: f32 = 3.5;

/// One epoch of an [`ErrorCurves`]; errors are percentages, `None` where not measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorPoint {
    /// Epochs completed (1 for the first epoch).
    pub epoch: u64,
    pub train_error: Option<f64>,
    pub test_error: Option<f64>,
}

/// The error curves of one trained network.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorCurves {
    /// What the legend calls it, e.g. `plain56`.
    pub label: String,
    /// Weighted layers (`6n + 2` for the CIFAR nets); picks the colour.
    pub depth: usize,
    /// Residual (solid, right panel) or plain (dashed, left panel).
    pub residual: bool,
    pub points: Vec<ErrorPoint>,
}

impl ErrorCurves {
    /// The curves of a run from its metrics records: `100 · (1 − accuracy)` of each epoch
    /// record (the last record of an epoch counts, as after a resume).
    pub fn from_records(label: &str, depth: usize, residual: bool, records: &[MetricRecord]) -> ErrorCurves {
        let error = |a: Option<f64>| a.filter(|a| a.is_finite()).map(|a| 100.0 * (1.0 - a));
        let points = epoch_records(records)
            .into_iter()
            .map(|r| ErrorPoint {
                epoch: r.epoch + 1,
                train_error: error(r.accuracy),
                test_error: error(r.test_accuracy),
            })
            .collect();
        ErrorCurves { label: label.to_string(), depth, residual, points }
    }

    /// Training error of the last epoch, in percent.
    pub fn final_train_error(&self) -> Option<f64> {
        self.points.last()?.train_error
    }

    /// Test error of the last epoch, in percent.
    pub fn final_test_error(&self) -> Option<f64> {
        self.points.last()?.test_error
    }

    /// The lowest test error of any epoch, in percent.
    pub fn best_test_error(&self) -> Option<f64> {
        self.points.iter().filter_map(|p| p.test_error).reduce(f64::min)
    }
}

/// The per-layer gradient norms of one network.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradientNorms {
    pub label: String,
    /// Residual (solid) or plain (dashed).
    pub residual: bool,
    /// Conv layers in network order.
    pub layers: Vec<LayerGradient>,
}

/// Draws the degradation figure (see the module documentation) into `out_png`.
pub fn plot_degradation(curves: &[ErrorCurves], title: &str, out_png: &Path) -> Result<(), TrainError> {
    save(&render_degradation(curves, title), out_png)
}

/// Draws gradient norm against layer index, log scale, one line per network, into `out_png`.
pub fn plot_gradient_norms(nets: &[GradientNorms], title: &str, out_png: &Path) -> Result<(), TrainError> {
    save(&render_gradient_norms(nets, title), out_png)
}

fn save(c: &Canvas, out_png: &Path) -> Result<(), TrainError> {
    let png = encode_png(c).map_err(|e| TrainError::io(out_png, std::io::Error::other(e)))?;
    write_atomic(out_png, &png)
}

/// A plot area in pixels and the data ranges it shows; `log_y` plots `log10` of the values.
struct Frame {
    left: f32,
    right: f32,
    top: f32,
    bottom: f32,
    x: (f64, f64),
    y: (f64, f64),
    log_y: bool,
}

impl Frame {
    fn px(&self, x: f64) -> f32 {
        self.left + ((x - self.x.0) / (self.x.1 - self.x.0)) as f32 * (self.right - self.left)
    }

    /// The pixel row of value `v`, `None` for values the axis cannot show (≤ 0 on a log axis).
    fn py(&self, v: f64) -> Option<f32> {
        let v = if self.log_y { (v > 0.0).then(|| v.log10())? } else { v };
        v.is_finite().then(|| self.bottom - ((v - self.y.0) / (self.y.1 - self.y.0)) as f32 * (self.bottom - self.top))
    }

    /// Grid lines and labels at `y_ticks` (axis units: log10 on a log axis), x ticks every
    /// `x_step`, the axes, and `x_label` under the x axis.
    fn draw(&self, c: &mut Canvas, y_ticks: &[(f64, String)], minor_y: &[f64], x_step: f64, x_label: &str) {
        let row = |v: f64| self.bottom - ((v - self.y.0) / (self.y.1 - self.y.0)) as f32 * (self.bottom - self.top);
        for &v in minor_y {
            c.line(self.left, row(v), self.right, row(v), 1.0, [242, 242, 242]);
        }
        for (v, label) in y_ticks {
            c.line(self.left, row(*v), self.right, row(*v), 1.0, GRID);
            c.text(self.left - 8.0 - text_width(label, 1) as f32, row(*v) - 4.0, label, 1, INK);
        }
        let ticks = ((self.x.1 - self.x.0) / x_step).round().max(0.0) as usize;
        for i in 0..=ticks {
            let v = self.x.0 + i as f64 * x_step;
            c.line(self.px(v), self.bottom, self.px(v), self.bottom + 5.0, 1.0, INK);
            c.text_centered(self.px(v), self.bottom + 10.0, &tick_label(v, x_step), 1, INK);
        }
        c.text_centered((self.left + self.right) / 2.0, self.bottom + 30.0, x_label, 2, INK);
        c.line(self.left, self.top, self.left, self.bottom, 1.5, INK);
        c.line(self.left, self.bottom, self.right, self.bottom, 1.5, INK);
    }

    /// One curve: the points present joined by a line, or a dot where there is only one.
    fn curve(
        &self,
        c: &mut Canvas,
        points: &[(f64, Option<f64>)],
        width: f32,
        color: [u8; 3],
        dash: Option<(f32, f32)>,
    ) {
        let present: Vec<(f32, f32)> = points.iter().filter_map(|&(x, v)| Some((self.px(x), self.py(v?)?))).collect();
        c.polyline(&present, width, color, dash);
        if present.len() == 1 {
            c.dot(present[0].0, present[0].1, width + 1.5, color);
        }
    }
}

/// A legend entry: a line sample in its style, then the label.
struct Entry {
    label: String,
    color: [u8; 3],
    width: f32,
    dash: Option<(f32, f32)>,
}

const SAMPLE: f32 = 44.0;

fn entry_width(e: &Entry) -> f32 {
    SAMPLE + 10.0 + text_width(&e.label, 2) as f32
}

/// Lays `entries` out in rows no wider than `max_width`; returns the rows as index ranges.
fn legend_rows(entries: &[Entry], max_width: f32) -> Vec<std::ops::Range<usize>> {
    let gap = 30.0;
    let (mut rows, mut start, mut width) = (Vec::new(), 0, 0.0);
    for (i, e) in entries.iter().enumerate() {
        let w = entry_width(e);
        if i > start && width + gap + w > max_width {
            rows.push(start..i);
            (start, width) = (i, 0.0);
        }
        width += if i > start { gap + w } else { w };
    }
    if start < entries.len() {
        rows.push(start..entries.len());
    }
    rows
}

/// Draws `entries` centred on `cx` from row `y` down, 26 pixels a row; returns the rows used.
fn legend(c: &mut Canvas, entries: &[Entry], cx: f32, y: f32, max_width: f32) -> usize {
    let gap = 30.0;
    let rows = legend_rows(entries, max_width);
    for (r, range) in rows.iter().enumerate() {
        let row = &entries[range.clone()];
        let total: f32 = row.iter().map(entry_width).sum::<f32>() + gap * (row.len() - 1) as f32;
        let (mut x, y) = (cx - total / 2.0, y + 26.0 * r as f32);
        for e in row {
            c.polyline(&[(x, y), (x + SAMPLE, y)], e.width, e.color, e.dash.map(|(on, off)| (on * 0.7, off * 0.7)));
            c.text(x + SAMPLE + 10.0, y - 8.0, &e.label, 2, INK);
            x += entry_width(e) + gap;
        }
    }
    rows.len()
}

fn depth_colors(curves: &[ErrorCurves]) -> Vec<[u8; 3]> {
    let mut depths: Vec<usize> = curves.iter().map(|c| c.depth).collect();
    depths.sort_unstable();
    depths.dedup();
    curves.iter().map(|c| PALETTE[depths.iter().position(|&d| d == c.depth).unwrap_or(0) % PALETTE.len()]).collect()
}

fn render_degradation(curves: &[ErrorCurves], title: &str) -> Canvas {
    const WIDTH: usize = 1200;
    const HEIGHT: usize = 640;
    let mut c = Canvas::new(WIDTH, HEIGHT);
    c.text_centered(WIDTH as f32 / 2.0, 12.0, title, 2, INK);
    let key = [
        Entry { label: "training error".into(), color: INK, width: TRAIN_WIDTH, dash: None },
        Entry { label: "test error".into(), color: INK, width: TEST_WIDTH, dash: None },
    ];
    legend(&mut c, &key, WIDTH as f32 / 2.0, 48.0, WIDTH as f32);

    let colors = depth_colors(curves);
    let families: Vec<bool> = [false, true].into_iter().filter(|&r| curves.iter().any(|c| c.residual == r)).collect();
    let panel_width = WIDTH as f32 / families.len().max(1) as f32;
    let entries = |residual: bool| -> Vec<Entry> {
        let mut members: Vec<(usize, &ErrorCurves)> =
            curves.iter().enumerate().filter(|(_, c)| c.residual == residual).collect();
        members.sort_by_key(|(_, c)| c.depth);
        let dash = if residual { None } else { PLAIN_DASH };
        members.iter().map(|&(i, c)| Entry { label: c.label.clone(), color: colors[i], width: 2.5, dash }).collect()
    };
    let legend_rows_needed =
        families.iter().map(|&r| legend_rows(&entries(r), panel_width - 40.0).len()).max().unwrap_or(0);
    let top = 124.0 + 26.0 * legend_rows_needed as f32;

    // One scale for both panels, so plain and residual errors compare at a glance.
    let all = curves.iter().flat_map(|c| &c.points);
    let x_max = all.clone().map(|p| p.epoch).max().unwrap_or(1) as f64;
    let y_max = all.flat_map(|p| [p.train_error, p.test_error]).flatten().fold(0.0, f64::max);
    let (x_lo, x_hi, x_step) = axis((x_max - 1.0).clamp(0.0, 1.0), x_max, 8, true);
    let (y_lo, y_hi, y_step) = axis(0.0, (y_max * 1.05).max(1.0), 6, false);
    let y_hi = y_hi.min(100.0f64.max(y_lo + y_step));
    let ticks = ((y_hi - y_lo) / y_step + 1e-9).floor() as usize;
    let y_ticks: Vec<(f64, String)> =
        (0..=ticks).map(|i| y_lo + i as f64 * y_step).map(|v| (v, tick_label(v, y_step))).collect();

    if families.is_empty() {
        c.text_centered(WIDTH as f32 / 2.0, HEIGHT as f32 / 2.0, "no runs to draw yet", 2, INK);
    }
    for (k, &residual) in families.iter().enumerate() {
        let x0 = k as f32 * panel_width;
        let frame = Frame {
            left: x0 + 80.0,
            right: x0 + panel_width - 30.0,
            top,
            bottom: HEIGHT as f32 - 60.0,
            x: (x_lo, x_hi),
            y: (y_lo, y_hi),
            log_y: false,
        };
        let name = if residual { "Residual networks: error (%)" } else { "Plain networks: error (%)" };
        c.text_centered(x0 + panel_width / 2.0, 82.0, name, 2, INK);
        legend(&mut c, &entries(residual), x0 + panel_width / 2.0, 114.0, panel_width - 40.0);
        frame.draw(&mut c, &y_ticks, &[], x_step, "epoch");
        for (curve, &color) in curves.iter().zip(&colors).filter(|(c, _)| c.residual == residual) {
            let dash = if residual { None } else { PLAIN_DASH };
            let series = |f: fn(&ErrorPoint) -> Option<f64>| -> Vec<(f64, Option<f64>)> {
                curve.points.iter().map(|p| (p.epoch as f64, f(p))).collect()
            };
            frame.curve(&mut c, &series(|p| p.train_error), TRAIN_WIDTH, color, dash);
            frame.curve(&mut c, &series(|p| p.test_error), TEST_WIDTH, color, dash);
        }
    }
    c
}

/// `10^e` as a tick label: plain decimals near 1, `1e-7` style beyond.
fn decade_label(e: i32) -> String {
    if (-3..=4).contains(&e) {
        let v = 10f64.powi(e);
        format!("{}", if e < 0 { v } else { v.round() })
    } else {
        format!("1e{e}")
    }
}

fn render_gradient_norms(nets: &[GradientNorms], title: &str) -> Canvas {
    const WIDTH: usize = 1200;
    const HEIGHT: usize = 600;
    let mut c = Canvas::new(WIDTH, HEIGHT);
    c.text_centered(WIDTH as f32 / 2.0, 12.0, title, 2, INK);
    let colors: Vec<[u8; 3]> = nets.iter().map(|n| if n.residual { PALETTE[0] } else { PALETTE[3] }).collect();
    let entries: Vec<Entry> = nets
        .iter()
        .zip(&colors)
        .map(|(n, &color)| Entry {
            label: n.label.clone(),
            color,
            width: 2.5,
            dash: if n.residual { None } else { PLAIN_DASH },
        })
        .collect();
    let rows = legend(&mut c, &entries, WIDTH as f32 / 2.0, 48.0, WIDTH as f32 - 80.0);

    let norms = nets.iter().flat_map(|n| &n.layers).map(|l| l.norm).filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = norms.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (mut e_lo, mut e_hi) = if lo <= hi { (lo.log10().floor(), hi.log10().ceil()) } else { (-3.0, 0.0) };
    if e_hi <= e_lo {
        // All norms equal to a power of ten: one decade either side.
        (e_lo, e_hi) = (e_lo - 1.0, e_hi + 1.0);
    }
    // Every decade gets a grid line; labels thin out when there are many.
    let label_every = ((e_hi - e_lo) / 8.0).ceil().max(1.0) as i32;
    let y_ticks: Vec<(f64, String)> = (e_lo as i32..=e_hi as i32)
        .map(|e| (e as f64, if (e - e_lo as i32) % label_every == 0 { decade_label(e) } else { String::new() }))
        .collect();
    let minor: Vec<f64> = if e_hi - e_lo <= 4.0 {
        (e_lo as i32..e_hi as i32).flat_map(|e| (2..10).map(move |m| e as f64 + (m as f64).log10())).collect()
    } else {
        Vec::new()
    };
    let layers = nets.iter().map(|n| n.layers.len()).max().unwrap_or(1).max(1) as f64;
    let (x_lo, x_hi, x_step) = axis((layers - 1.0).clamp(0.0, 1.0), layers, 10, true);
    let frame = Frame {
        left: 100.0,
        right: WIDTH as f32 - 40.0,
        top: 80.0 + 26.0 * rows as f32,
        bottom: HEIGHT as f32 - 60.0,
        x: (x_lo, x_hi),
        y: (e_lo, e_hi),
        log_y: true,
    };
    c.text(frame.left - 60.0, frame.top - 22.0, "gradient L2 norm (log scale)", 1, INK);
    frame.draw(&mut c, &y_ticks, &minor, x_step, "conv layer, input to output");
    for (net, &color) in nets.iter().zip(&colors) {
        let points: Vec<(f64, Option<f64>)> =
            net.layers.iter().enumerate().map(|(i, l)| ((i + 1) as f64, Some(l.norm))).collect();
        frame.curve(&mut c, &points, 2.5, color, if net.residual { None } else { PLAIN_DASH });
        if points.len() <= 120 {
            for (x, v) in &points {
                if let Some(y) = v.and_then(|v| frame.py(v)) {
                    c.dot(frame.px(*x), y, 3.0, color);
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RecordKind;
    use crate::plot::tests::{count_near, decode};

    fn scratch(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("resnet-train-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Error curves that fall from `start` towards `floor` percent over `epochs` epochs.
    fn run(label: &str, depth: usize, residual: bool, epochs: u64, floor: f64) -> ErrorCurves {
        let records: Vec<MetricRecord> = (0..epochs)
            .map(|e| {
                let mut r = MetricRecord::new(RecordKind::Epoch, e, (e + 1) * 10);
                let fall = (-(e as f64) / 4.0).exp();
                r.accuracy = Some(1.0 - (floor + 40.0 * fall) / 100.0);
                r.test_accuracy = Some(1.0 - (floor + 3.0 + 35.0 * fall) / 100.0);
                r
            })
            .collect();
        ErrorCurves::from_records(label, depth, residual, &records)
    }

    #[test]
    fn error_curves_come_from_epoch_records() {
        let mut records = vec![MetricRecord::new(RecordKind::Step, 0, 5)];
        for (epoch, acc, test) in [(0, 0.5, 0.6), (1, 0.75, 0.8), (1, 0.8, 0.7)] {
            let mut r = MetricRecord::new(RecordKind::Epoch, epoch, 10);
            r.accuracy = Some(acc);
            r.test_accuracy = Some(test);
            records.push(r);
        }
        let curves = ErrorCurves::from_records("plain20", 20, false, &records);
        // The later record of epoch 1 (a resumed run) replaces the earlier one.
        assert_eq!(curves.points.len(), 2);
        assert_eq!(curves.points[1].epoch, 2);
        assert!((curves.final_train_error().unwrap() - 20.0).abs() < 1e-9);
        assert!((curves.final_test_error().unwrap() - 30.0).abs() < 1e-9);
        assert!((curves.best_test_error().unwrap() - 30.0).abs() < 1e-9);
        let empty = ErrorCurves::from_records("resnet20", 20, true, &[]);
        assert_eq!((empty.final_train_error(), empty.best_test_error()), (None, None));
    }

    #[test]
    fn degradation_figure_is_a_decodable_png() {
        let dir = scratch("figure-degradation");
        let out = dir.join("degradation.png");
        let curves = [
            run("plain20", 20, false, 30, 6.0),
            run("plain56", 56, false, 30, 9.0),
            run("resnet20", 20, true, 30, 5.0),
            run("resnet56", 56, true, 30, 3.0),
        ];
        plot_degradation(&curves, "Degradation", &out).unwrap();
        let (info, rgb) = decode(&out);
        assert_eq!((info.width, info.height, info.color_type), (1200, 640, png::ColorType::Rgb));
        // Both depths' colours are drawn, and text.
        assert!(count_near(&rgb, PALETTE[0]) > 1_500 && count_near(&rgb, PALETTE[1]) > 1_500);
        assert!(count_near(&rgb, INK) > 2_000);
        // Dashed plain nets leave gaps: fewer coloured pixels on the left than on the right.
        let half = |rgb: &[u8], right: bool, color| {
            let rows: Vec<u8> = rgb
                .chunks_exact(1200 * 3)
                .flat_map(|row| if right { &row[1800..] } else { &row[..1800] })
                .copied()
                .collect();
            count_near(&rows, color)
        };
        assert!(half(&rgb, false, PALETTE[0]) < half(&rgb, true, PALETTE[0]));

        // Edge cases draw too: one epoch (dots), one family, nothing at all.
        plot_degradation(&[run("resnet20", 20, true, 1, 5.0)], "One", &out).unwrap();
        decode(&out);
        plot_degradation(&[], "Nothing yet", &out).unwrap();
        decode(&out);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn gradient_norm_figure_is_a_decodable_png() {
        let dir = scratch("figure-gradnorm");
        let out = dir.join("gradient_norms.png");
        let net = |label: &str, residual: bool, decay: f64| GradientNorms {
            label: label.into(),
            residual,
            layers: (0..55)
                .map(|i| LayerGradient { name: format!("conv{i}.weight"), norm: 0.5 * decay.powi(55 - i) })
                .collect(),
        };
        plot_gradient_norms(&[net("plain56", false, 0.8), net("resnet56", true, 0.99)], "Norms", &out).unwrap();
        let (info, rgb) = decode(&out);
        assert_eq!((info.width, info.height), (1200, 600));
        assert!(count_near(&rgb, PALETTE[0]) > 1_000 && count_near(&rgb, PALETTE[3]) > 1_000);
        // Degenerate input: equal norms, a zero and a NaN (skipped on a log axis), no nets.
        let flat = GradientNorms {
            label: "flat".into(),
            residual: true,
            layers: [1.0, 0.0, f64::NAN, 1.0].iter().map(|&norm| LayerGradient { name: "w".into(), norm }).collect(),
        };
        plot_gradient_norms(&[flat], "Flat", &out).unwrap();
        decode(&out);
        plot_gradient_norms(&[], "None", &out).unwrap();
        decode(&out);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn decade_labels_read_naturally() {
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(decade_label(-7), "1e-7");
    }
}
