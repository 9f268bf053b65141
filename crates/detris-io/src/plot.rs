//! A PNG picture of a training run: training loss per epoch on the left,
//! validation mIoU (and oIoU when recorded) per epoch on the right.
//!
//! Drawn by hand on an `image` canvas with an embedded 5×7 bitmap font, so it
//! needs no system fonts and no plotting library.

mod font;

use std::io::Cursor;
use std::path::Path;

use ::image::{ImageFormat, Rgb, RgbImage};
use serde_json::Value;

use crate::error::{Error, Result};

pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 420;
const PANEL_W: i32 = (WIDTH / 2) as i32;
/// Plot area inside a panel: left/right offsets from the panel's left edge, top/bottom rows.
const AREA_L: i32 = 64;
const AREA_R: i32 = PANEL_W - 16;
const AREA_T: i32 = 40;
const AREA_B: i32 = HEIGHT as i32 - 44;

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([228, 228, 228]);
pub const LOSS_COLOUR: Rgb<u8> = Rgb([31, 119, 180]);
pub const MIOU_COLOUR: Rgb<u8> = Rgb([44, 160, 44]);
pub const OIOU_COLOUR: Rgb<u8> = Rgb([255, 127, 14]);

/// One line of a panel: its (epoch, value) points, colour and legend name.
type Line<'a> = (&'a [(f64, f64)], Rgb<u8>, &'a str);

/// Writes a 900×420 PNG of `history` (one JSON record per epoch with fields
/// `epoch`, `train_loss`, `val_miou`, optionally `val_oiou` and `val_split`).
/// Missing or non-finite values are skipped. The file is written to
/// `<path>.tmp` and renamed, so readers never see a half-written picture.
pub fn write_plot(path: &Path, history: &[Value]) -> Result<()> {
    let img = render(history);
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| Error::invalid(path, format!("cannot encode the plot as PNG: {e}")))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, &png).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Draws the two panels of `history` on a fresh canvas.
pub fn render(history: &[Value]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, BACKGROUND);
    let series = |field: &str| -> Vec<(f64, f64)> {
        history
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let x = r.get("epoch").and_then(Value::as_f64).unwrap_or(i as f64);
                let y = r.get(field).and_then(Value::as_f64)?;
                (x.is_finite() && y.is_finite()).then_some((x, y))
            })
            .collect()
    };
    let loss = series("train_loss");
    let miou = series("val_miou");
    let oiou = series("val_oiou");
    let split = history.iter().rev().find_map(|r| r.get("val_split").and_then(Value::as_str));
    let val_title = match split {
        Some(s) => format!("validation mIoU ({s})"),
        None => "validation mIoU".to_string(),
    };

    panel(&mut img, 0, "training loss", &[(&loss, LOSS_COLOUR, "loss")]);
    let mut val: Vec<Line> = vec![(&miou, MIOU_COLOUR, "mIoU")];
    if !oiou.is_empty() {
        val.push((&oiou, OIOU_COLOUR, "oIoU"));
    }
    panel(&mut img, PANEL_W, &val_title, &val);
    img
}

/// One panel at horizontal offset `x0`: title, axes, grid, tick labels, lines, legend.
fn panel(img: &mut RgbImage, x0: i32, title: &str, lines: &[Line]) {
    let all = || lines.iter().flat_map(|(pts, _, _)| pts.iter());
    let (xlo, xhi) = padded_range(all().map(|p| p.0), 1.0);
    let (ylo, yhi) = padded_range(all().map(|p| p.1), 0.1);
    let xticks = Ticks::new(xlo, xhi, true);
    let yticks = Ticks::new(ylo, yhi, false);
    let (xlo, xhi, ylo, yhi) = (xticks.lo, xticks.hi, yticks.lo, yticks.hi);
    let (l, r) = (x0 + AREA_L, x0 + AREA_R);
    let to_px = |(x, y): (f64, f64)| {
        let px = l as f64 + (x - xlo) / (xhi - xlo) * (r - l) as f64;
        let py = AREA_B as f64 - (y - ylo) / (yhi - ylo) * (AREA_B - AREA_T) as f64;
        (px, py)
    };

    text_centered(img, x0 + PANEL_W / 2, 12, title, 2, INK);
    for v in yticks.values() {
        let (_, py) = to_px((xlo, v));
        let py = py.round() as i32;
        hline(img, l, r, py, GRID);
        hline(img, l - 4, l, py, INK);
        let label = yticks.label(v);
        text(img, l - 7 - text_width(&label, 1), py - 3, &label, 1, INK);
    }
    for v in xticks.values() {
        let (px, _) = to_px((v, ylo));
        let px = px.round() as i32;
        vline(img, px, AREA_T, AREA_B, GRID);
        vline(img, px, AREA_B, AREA_B + 4, INK);
        text_centered(img, px, AREA_B + 8, &xticks.label(v), 1, INK);
    }
    text_centered(img, (l + r) / 2, AREA_B + 24, "epoch", 1, INK);
    hline(img, l, r, AREA_B, INK);
    vline(img, l, AREA_T, AREA_B, INK);

    for (pts, colour, _) in lines {
        let px: Vec<(f64, f64)> = pts.iter().map(|&p| to_px(p)).collect();
        for w in px.windows(2) {
            segment(img, w[0], w[1], *colour);
        }
        for &(x, y) in &px {
            fill_rect(img, x.round() as i32 - 2, y.round() as i32 - 2, 5, 5, *colour);
        }
    }
    if lines.len() > 1 {
        for (i, (_, colour, name)) in lines.iter().enumerate() {
            let y = AREA_T + 8 + 12 * i as i32;
            let x = r - 8 - text_width(name, 1);
            fill_rect(img, x - 20, y + 2, 14, 3, *colour);
            text(img, x, y, name, 1, INK);
        }
    }
}

/// The span of the finite `values`, never empty: a single value is widened
/// by `pad` (scaled to its size), and no values at all give 0..1.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
        let d = if pad >= 1.0 { pad } else { (lo.abs() * pad).max(0.05) };
        (lo - d, hi + d)
    } else {
        (lo, hi)
    }
}

/// Round tick positions covering lo..hi: steps of 1, 2 or 5 × 10ⁿ, about 5 of them.
struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
    decimals: usize,
}

impl Ticks {
    fn new(lo: f64, hi: f64, integer: bool) -> Self {
        let raw = (hi - lo) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let norm = raw / mag;
        let mut step = mag
            * if norm <= 1.0 {
                1.0
            } else if norm <= 2.0 {
                2.0
            } else if norm <= 5.0 {
                5.0
            } else {
                10.0
            };
        if integer {
            step = step.max(1.0).round();
        }
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        Ticks { lo, hi, step, decimals }
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        let n = ((self.hi - self.lo) / self.step).round() as usize;
        (0..=n).map(move |i| self.lo + i as f64 * self.step)
    }

    fn label(&self, v: f64) -> String {
        let s = format!("{:.*}", self.decimals, v);
        // "-0.0" reads oddly on an axis.
        if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
            s[1..].to_string()
        } else {
            s
        }
    }
}

fn put(img: &mut RgbImage, x: i32, y: i32, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}

fn fill_rect(img: &mut RgbImage, x: i32, y: i32, w: i32, h: i32, colour: Rgb<u8>) {
    for dy in 0..h {
        for dx in 0..w {
            put(img, x + dx, y + dy, colour);
        }
    }
}

fn hline(img: &mut RgbImage, x0: i32, x1: i32, y: i32, colour: Rgb<u8>) {
    fill_rect(img, x0, y, x1 - x0 + 1, 1, colour);
}

fn vline(img: &mut RgbImage, x: i32, y0: i32, y1: i32, colour: Rgb<u8>) {
    fill_rect(img, x, y0, 1, y1 - y0 + 1, colour);
}

/// A 2-pixel-wide straight line between two points.
fn segment(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: Rgb<u8>) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = ((x0 + t * (x1 - x0)).round() as i32, (y0 + t * (y1 - y0)).round() as i32);
        fill_rect(img, x, y, 2, 2, colour);
    }
}

fn text_width(s: &str, scale: i32) -> i32 {
    let n = s.chars().count() as i32;
    (n * (font::WIDTH as i32 + 1) - 1).max(0) * scale
}

fn text_centered(img: &mut RgbImage, cx: i32, y: i32, s: &str, scale: i32, colour: Rgb<u8>) {
    text(img, cx - text_width(s, scale) / 2, y, s, scale, colour);
}

/// Draws `s` with its top-left corner at (x, y), each font pixel `scale`×`scale`.
fn text(img: &mut RgbImage, x: i32, y: i32, s: &str, scale: i32, colour: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let gx = x + i as i32 * (font::WIDTH as i32 + 1) * scale;
        for (row, bits) in font::glyph(c).iter().enumerate() {
            for col in 0..font::WIDTH as i32 {
                if bits & (0x10 >> col) != 0 {
                    fill_rect(img, gx + col * scale, y + row as i32 * scale, scale, scale, colour);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmp_png(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("detris-plot-{}-{name}.png", std::process::id()))
    }

    fn count(img: &RgbImage, colour: Rgb<u8>, xs: std::ops::Range<u32>) -> usize {
        img.enumerate_pixels().filter(|(x, _, p)| xs.contains(x) && **p == colour).count()
    }

    fn read_back(path: &Path) -> RgbImage {
        let img = ::image::open(path).expect("the plot decodes as an image").to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        img
    }

    #[test]
    fn plot_five_epochs() {
        let history: Vec<Value> = (1..=5)
            .map(|e| {
                json!({"epoch": e, "train_loss": 1.0 / e as f64, "val_miou": 0.2 + 0.1 * e as f64,
                       "val_oiou": 0.25 + 0.1 * e as f64, "val_split": "val"})
            })
            .collect();
        let path = tmp_png("five");
        write_plot(&path, &history).unwrap();
        let img = read_back(&path);
        let half = WIDTH / 2;
        // The loss line lies in the left panel only; the IoU lines in the right one only.
        assert!(count(&img, LOSS_COLOUR, 0..half) > 200, "loss line drawn in the left panel");
        assert_eq!(count(&img, LOSS_COLOUR, half..WIDTH), 0);
        assert!(count(&img, MIOU_COLOUR, half..WIDTH) > 200);
        assert!(count(&img, OIOU_COLOUR, half..WIDTH) > 200);
        assert_eq!(count(&img, MIOU_COLOUR, 0..half), 0);
        // Some text and axes in ink.
        assert!(count(&img, INK, 0..half) > 500);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        assert!(!Path::new(&tmp).exists(), "the temporary file was renamed away");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn plot_empty_single_nan_and_constant() {
        let cases: Vec<(&str, Vec<Value>)> = vec![
            ("empty", vec![]),
            ("single", vec![json!({"epoch": 1, "train_loss": 0.7, "val_miou": 0.3})]),
            (
                "nan-constant",
                vec![
                    json!({"epoch": 1, "train_loss": 0.5, "val_miou": f64::NAN}),
                    json!({"epoch": 2, "train_loss": 0.5, "val_miou": null}),
                    json!({"epoch": 3, "train_loss": 0.5}),
                ],
            ),
        ];
        for (name, history) in cases {
            let path = tmp_png(name);
            write_plot(&path, &history).unwrap();
            let img = read_back(&path);
            let loss_px = count(&img, LOSS_COLOUR, 0..WIDTH / 2);
            if name == "empty" {
                assert_eq!(loss_px, 0);
                assert!(count(&img, INK, 0..WIDTH) > 500, "empty axes are still drawn");
            } else {
                assert!(loss_px >= 25, "{name}: the loss point(s) are drawn");
            }
            assert_eq!(count(&img, MIOU_COLOUR, 0..WIDTH), if name == "single" { 25 } else { 0 });
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn plot_ticks_are_round() {
        let t = Ticks::new(0.23, 0.71, false);
        assert_eq!(
            t.values().map(|v| t.label(v)).collect::<Vec<_>>(),
            ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]
        );
        let t = Ticks::new(1.0, 3.0, true);
        assert_eq!(t.values().map(|v| t.label(v)).collect::<Vec<_>>(), ["1", "2", "3"]);
        let (lo, hi) = padded_range([0.5, 0.5].into_iter(), 0.1);
        assert!((lo - 0.45).abs() < 1e-12 && (hi - 0.55).abs() < 1e-12);
    }
}
