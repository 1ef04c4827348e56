//! Training curves as a PNG: loss and accuracy per epoch, train and test, side by side.
//!
//! Drawn directly into an RGB buffer (anti-aliased lines, markers, and the public-domain 8x8
//! bitmap font of `font8x8` for text) and encoded with `png`, so plotting needs no system fonts
//! or graphics libraries and gives the same picture everywhere. Only epoch records are drawn;
//! the x axis counts epochs completed (the record's 0-based `epoch` + 1). The file is replaced
//! atomically, so a viewer refreshing it during training never reads half an image.
//!
//! The drawing machinery ([`Canvas`], [`axis`], [`encode_png`]) is shared with the experiment
//! figures in `figures.rs`.

use std::path::Path;

use crate::metrics::{read_metrics, MetricRecord, RecordKind};
use crate::{write_atomic, TrainError};

const WIDTH: usize = 1200;
const HEIGHT: usize = 540;
const WHITE: [u8; 3] = [255, 255, 255];
pub(crate) const INK: [u8; 3] = [40, 40, 40];
pub(crate) const GRID: [u8; 3] = [225, 225, 225];
const TRAIN: [u8; 3] = [31, 119, 180];
const TEST: [u8; 3] = [230, 110, 0];

/// Reads `metrics` (a `metrics.jsonl`) and draws its curves into `out_png`.
pub fn plot_metrics_file(metrics: &Path, out_png: &Path) -> Result<(), TrainError> {
    plot_curves(&read_metrics(metrics)?, out_png)
}

/// Draws loss and accuracy per epoch, train and test, from the epoch records in `records`
/// (a later record for the same epoch, as after a resume, replaces an earlier one).
pub fn plot_curves(records: &[MetricRecord], out_png: &Path) -> Result<(), TrainError> {
    let png = encode_png(&render(records)).map_err(|e| TrainError::io(out_png, std::io::Error::other(e)))?;
    write_atomic(out_png, &png)
}

/// One curve: (x, y) points, `None` where the value is missing.
type Series = Vec<(f64, Option<f64>)>;

/// The epoch records of `records` in epoch order; a later record for the same epoch (as after
/// a resume) replaces an earlier one.
pub(crate) fn epoch_records(records: &[MetricRecord]) -> Vec<&MetricRecord> {
    let mut epochs: Vec<&MetricRecord> = Vec::new();
    for r in records.iter().filter(|r| r.kind == RecordKind::Epoch) {
        epochs.retain(|e| e.epoch != r.epoch);
        epochs.push(r);
    }
    epochs.sort_by_key(|r| r.epoch);
    epochs
}

fn render(records: &[MetricRecord]) -> Canvas {
    let epochs = epoch_records(records);
    let series = |f: &dyn Fn(&MetricRecord) -> Option<f64>| -> Series {
        epochs.iter().map(|r| (r.epoch as f64 + 1.0, f(r).filter(|v| v.is_finite()))).collect()
    };
    let percent = |v: Option<f64>| v.map(|a| a * 100.0);
    let loss = [series(&|r| r.loss), series(&|r| r.test_loss)];
    let accuracy = [series(&|r| percent(r.accuracy)), series(&|r| percent(r.test_accuracy))];

    let mut c = Canvas::new(WIDTH, HEIGHT);
    let count = match epochs.len() {
        0 => "no epoch records yet".to_string(),
        1 => "1 epoch".to_string(),
        n => format!("{n} epochs"),
    };
    let title = match epochs.iter().filter_map(|r| r.test_accuracy).filter(|a| a.is_finite()).reduce(f64::max) {
        Some(best) => format!("Training curves: {count}, best test accuracy {:.2}%", best * 100.0),
        None => format!("Training curves: {count}"),
    };
    c.text_centered(WIDTH as f32 / 2.0, 12.0, &title, 2, INK);
    legend(&mut c, WIDTH as f32 / 2.0, 48.0);
    let half = WIDTH as f32 / 2.0;
    // Loss from 0; accuracy around its values. Both with a margin so no point sits on the frame.
    let loss_top = loss.iter().flatten().filter_map(|p| p.1).fold(0.0, f64::max);
    panel(&mut c, (0.0, half), "Loss", &loss, (0.0, if loss_top > 0.0 { loss_top * 1.05 } else { 1.0 }), None);
    let (lo, hi) = value_range(&accuracy).unwrap_or((0.0, 100.0));
    let margin = (hi - lo).max(1.0) * 0.05;
    panel(&mut c, (half, WIDTH as f32), "Accuracy (%)", &accuracy, (lo - margin, hi + margin), Some((0.0, 100.0)));
    c
}

fn value_range(series: &[Series]) -> Option<(f64, f64)> {
    let values = series.iter().flatten().filter_map(|p| p.1);
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo <= hi).then_some((lo, hi))
}

/// One chart in the horizontal band `x_span` of the canvas.
fn panel(
    c: &mut Canvas,
    x_span: (f32, f32),
    name: &str,
    series: &[Series; 2],
    y: (f64, f64),
    clamp: Option<(f64, f64)>,
) {
    let (left, right, top, bottom) = (x_span.0 + 80.0, x_span.1 - 30.0, 110.0, HEIGHT as f32 - 60.0);
    let x_max = series[0].last().map_or(1.0, |p| p.0);
    let x_min = series[0].first().map_or(0.0, |p| p.0).min(x_max - 1.0);
    let (x_lo, x_hi, x_step) = axis(x_min.max(0.0), x_max, 8, true);
    let (lo, hi) = clamp.map_or(y, |(min, max)| (y.0.max(min), y.1.min(max)));
    let (mut y_lo, mut y_hi, y_step) = axis(lo, hi, 6, false);
    if let Some((min, max)) = clamp {
        y_lo = y_lo.max(min);
        y_hi = y_hi.min(max).max(y_lo + y_step);
    }
    let px = |x: f64| left + ((x - x_lo) / (x_hi - x_lo)) as f32 * (right - left);
    let py = |v: f64| bottom - ((v - y_lo) / (y_hi - y_lo)) as f32 * (bottom - top);

    c.text_centered((left + right) / 2.0, top - 26.0, name, 2, INK);
    for i in 0..=((y_hi - y_lo) / y_step).round() as usize {
        let v = y_lo + i as f64 * y_step;
        c.line(left, py(v), right, py(v), 1.0, GRID);
        let label = tick_label(v, y_step);
        c.text(left - 8.0 - text_width(&label, 1) as f32, py(v) - 4.0, &label, 1, INK);
    }
    for i in 0..=((x_hi - x_lo) / x_step).round() as usize {
        let v = x_lo + i as f64 * x_step;
        c.line(px(v), bottom, px(v), bottom + 5.0, 1.0, INK);
        c.text_centered(px(v), bottom + 10.0, &tick_label(v, x_step), 1, INK);
    }
    c.text_centered((left + right) / 2.0, bottom + 30.0, "epoch", 2, INK);
    c.line(left, top, left, bottom, 1.5, INK);
    c.line(left, bottom, right, bottom, 1.5, INK);

    for (points, color) in series.iter().zip([TRAIN, TEST]) {
        // Missing values are skipped: the line joins the values on either side.
        let present: Vec<(f32, f32)> = points.iter().filter_map(|&(x, v)| Some((px(x), py(v?)))).collect();
        for pair in present.windows(2) {
            c.line(pair[0].0, pair[0].1, pair[1].0, pair[1].1, 2.5, color);
        }
        // Markers while they stay apart.
        if present.len() <= 60 {
            for &(x, y) in &present {
                c.dot(x, y, 3.5, color);
            }
        }
    }
}

/// The colour key shared by both charts, centred on `cx`.
fn legend(c: &mut Canvas, cx: f32, y: f32) {
    let entries = [("train", TRAIN), ("test", TEST)];
    let entry_width = |label: &str| 40.0 + text_width(label, 2) as f32;
    let gap = 40.0;
    let total: f32 = entries.iter().map(|(l, _)| entry_width(l)).sum::<f32>() + gap * (entries.len() - 1) as f32;
    let mut x = cx - total / 2.0;
    for (label, color) in entries {
        c.line(x, y, x + 30.0, y, 2.5, color);
        c.dot(x + 15.0, y, 3.5, color);
        c.text(x + 40.0, y - 8.0, label, 2, INK);
        x += entry_width(label) + gap;
    }
}

/// A "nice" axis covering [lo, hi] with about `target` steps of 1, 2 or 5 times a power of ten.
pub(crate) fn axis(lo: f64, hi: f64, target: usize, integer: bool) -> (f64, f64, f64) {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let raw = (hi - lo) / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let nice = [1.0, 2.0, 5.0, 10.0].into_iter().find(|&m| raw <= m * magnitude).unwrap_or(10.0) * magnitude;
    let step = if integer { nice.max(1.0).round() } else { nice };
    ((lo / step).floor() * step, (hi / step).ceil() * step, step)
}

pub(crate) fn tick_label(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

/// An RGB image being drawn.
pub(crate) struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    pub(crate) fn new(width: usize, height: usize) -> Canvas {
        Canvas { width, height, rgb: WHITE.repeat(width * height) }
    }

    /// Mixes `color` into pixel (x, y) with opacity `alpha`; outside pixels are ignored.
    fn blend(&mut self, x: i64, y: i64, color: [u8; 3], alpha: f32) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height || alpha <= 0.0 {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        let a = alpha.min(1.0);
        for (dst, &src) in self.rgb[i..i + 3].iter_mut().zip(&color) {
            *dst = (*dst as f32 * (1.0 - a) + src as f32 * a).round() as u8;
        }
    }

    /// Paints each pixel in `bounds` ([x0, y0, x1, y1]) with opacity `coverage(centre x, centre y)`.
    fn shape(&mut self, bounds: [f32; 4], color: [u8; 3], coverage: impl Fn(f32, f32) -> f32) {
        let [x0, y0, x1, y1] = bounds;
        for y in y0.floor() as i64..=y1.ceil() as i64 {
            for x in x0.floor() as i64..=x1.ceil() as i64 {
                self.blend(x, y, color, coverage(x as f32 + 0.5, y as f32 + 0.5));
            }
        }
    }

    /// An anti-aliased segment `width` pixels wide.
    pub(crate) fn line(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, width: f32, color: [u8; 3]) {
        let r = width / 2.0 + 1.0;
        let bounds = [x0.min(x1) - r, y0.min(y1) - r, x0.max(x1) + r, y0.max(y1) + r];
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = (dx * dx + dy * dy).max(1e-12);
        self.shape(bounds, color, |x, y| {
            let t = (((x - x0) * dx + (y - y0) * dy) / len2).clamp(0.0, 1.0);
            let d = ((x - x0 - t * dx).powi(2) + (y - y0 - t * dy).powi(2)).sqrt();
            (width / 2.0 + 0.5 - d).clamp(0.0, 1.0)
        });
    }

    /// A polyline through `points`, solid, or with `dash = Some((on, off))` dashed: `on`
    /// pixels drawn, `off` skipped, the pattern running on across vertices so that lines of
    /// many short segments still read as dashed.
    pub(crate) fn polyline(&mut self, points: &[(f32, f32)], width: f32, color: [u8; 3], dash: Option<(f32, f32)>) {
        let Some((on, off)) = dash.filter(|&(on, off)| on > 0.0 && off > 0.0) else {
            for pair in points.windows(2) {
                self.line(pair[0].0, pair[0].1, pair[1].0, pair[1].1, width, color);
            }
            return;
        };
        let period = on + off;
        let mut phase = 0.0f32; // position in the pattern where the segment starts
        for pair in points.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
            let at = |s: f32| (x0 + (x1 - x0) * s / len, y0 + (y1 - y0) * s / len);
            let mut s = 0.0f32;
            while s < len {
                let in_period = (phase + s) % period;
                // At least a tenth of a pixel forward, so rounding can never stall the walk.
                if in_period < on {
                    let end = (s + (on - in_period).max(0.1)).min(len);
                    let ((ax, ay), (bx, by)) = (at(s), at(end));
                    self.line(ax, ay, bx, by, width, color);
                    s = end;
                } else {
                    s += (period - in_period).max(0.1);
                }
            }
            phase = (phase + len) % period;
        }
    }

    pub(crate) fn dot(&mut self, cx: f32, cy: f32, radius: f32, color: [u8; 3]) {
        let bounds = [cx - radius - 1.0, cy - radius - 1.0, cx + radius + 1.0, cy + radius + 1.0];
        self.shape(bounds, color, |x, y| (radius + 0.5 - ((x - cx).powi(2) + (y - cy).powi(2)).sqrt()).clamp(0.0, 1.0));
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel `scale` pixels square.
    pub(crate) fn text(&mut self, x: f32, y: f32, text: &str, scale: usize, color: [u8; 3]) {
        let (x, y) = (x.round() as i64, y.round() as i64);
        for (i, ch) in text.chars().enumerate() {
            let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) == 0 {
                        continue;
                    }
                    let s = scale as i64;
                    let (gx, gy) = (x + (i * 8 + col) as i64 * s, y + row as i64 * s);
                    for (dx, dy) in (0..s).flat_map(|dx| (0..s).map(move |dy| (dx, dy))) {
                        self.blend(gx + dx, gy + dy, color, 1.0);
                    }
                }
            }
        }
    }

    pub(crate) fn text_centered(&mut self, cx: f32, y: f32, text: &str, scale: usize, color: [u8; 3]) {
        let w = text_width(text, scale) as f32;
        self.text(cx - w / 2.0, y, text, scale, color);
    }
}

/// Width in pixels of `text` drawn at `scale` (8x8 glyphs).
pub(crate) fn text_width(text: &str, scale: usize) -> usize {
    text.chars().count() * 8 * scale
}

pub(crate) fn encode_png(c: &Canvas) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, c.width as u32, c.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&c.rgb)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn curves(epochs: u64) -> Vec<MetricRecord> {
        let mut records = Vec::new();
        for e in 0..epochs {
            let t = e as f64;
            let mut step = MetricRecord::new(RecordKind::Step, e, e * 100 + 50);
            step.loss = Some(9.0);
            records.push(step);
            let mut r = MetricRecord::new(RecordKind::Epoch, e, (e + 1) * 100);
            r.loss = Some(2.3 * (-t / 6.0).exp() + 0.1);
            r.test_loss = Some(2.2 * (-t / 7.0).exp() + 0.35);
            r.accuracy = Some(0.95 - 0.85 * (-t / 5.0).exp());
            r.test_accuracy = Some(0.80 - 0.68 * (-t / 6.0).exp());
            records.push(r);
        }
        records
    }

    pub(crate) fn decode(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    pub(crate) fn count_near(rgb: &[u8], color: [u8; 3]) -> usize {
        rgb.chunks_exact(3).filter(|p| p.iter().zip(&color).all(|(&a, &b)| a.abs_diff(b) < 20)).count()
    }

    #[test]
    fn plot_is_a_decodable_png_with_both_curves() {
        let dir = std::env::temp_dir().join(format!("resnet-train-{}-plot", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("curves.png");
        plot_curves(&curves(30), &out).unwrap();
        let (info, rgb) = decode(&out);
        assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert!(std::fs::metadata(&out).unwrap().len() > 5_000);
        assert!(count_near(&rgb, TRAIN) > 1_000 && count_near(&rgb, TEST) > 1_000);
        assert!(count_near(&rgb, INK) > 2_000, "text and axes are drawn");
        // Redrawing (as each epoch does) replaces the file and leaves nothing else.
        plot_curves(&curves(1), &out).unwrap();
        plot_curves(&[], &out).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["curves.png"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dashed_lines_leave_regular_gaps() {
        let ink = |dash| {
            let mut c = Canvas::new(400, 20);
            // Three segments of different lengths: the pattern runs on across the vertices.
            c.polyline(&[(10.0, 10.0), (57.0, 10.0), (211.0, 10.0), (390.0, 10.0)], 2.0, INK, dash);
            let row: Vec<bool> = (0..400).map(|x| c.rgb[(10 * 400 + x) * 3] < 128).collect();
            row
        };
        let solid = ink(None);
        let dashed = ink(Some((10.0, 6.0)));
        let count = |row: &[bool]| row.iter().filter(|&&b| b).count();
        assert!(count(&solid) >= 380, "{}", count(&solid));
        let on = count(&dashed) as f64 / count(&solid) as f64;
        assert!((0.55..0.9).contains(&on), "a 10-on 6-off dash (plus round caps) covers about 12/16: {on}");
        let dashes = dashed.windows(2).filter(|w| w[0] && !w[1]).count();
        assert!((20..=26).contains(&dashes), "380 px / 16 px per period: {dashes} dashes");
    }

    #[test]
    fn axes_get_round_ticks() {
        assert_eq!(axis(0.0, 2.37, 6, false), (0.0, 2.5, 0.5));
        assert_eq!(axis(1.0, 30.0, 8, true), (0.0, 30.0, 5.0));
        assert_eq!(axis(1.0, 3.0, 8, true), (1.0, 3.0, 1.0));
        assert_eq!(tick_label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(tick_label(25.0, 5.0), "25");
    }
}
