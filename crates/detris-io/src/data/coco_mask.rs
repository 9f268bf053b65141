//! COCO segmentation → mask, bit-exact with pycocotools 2.0 (`maskApi.c` and
//! `_mask.pyx`): polygons (`rleFrPoly`, the ×5 upsampling with C truncation),
//! boxes (`rleFrBbox`), uncompressed and compressed RLE (`rleToString` /
//! `rleFrString`), `decode`, `merge`, `area`.
//!
//! COCO RLE is column-major: run positions count down the columns
//! (`index = x * height + y`), the first run is background.

use crate::error::{Error, Result};
use serde_json::Value;

/// Largest mask accepted, in pixels (height × width): 8192×8192. COCO images
/// are at most 640×640; a file claiming more is refused rather than allocated.
pub const MAX_MASK_PIXELS: u64 = 1 << 26;

/// Most boundary points one polygon may upsample to (`rleFrPoly`'s first
/// pass). A polygon around a maximal image needs under 2^18; this bounds the
/// time spent on coordinates far outside the frame.
pub const MAX_POLYGON_STEPS: u64 = 1 << 26;

/// Upsampled steps one polygon edge may take on average, per pixel of the
/// frame's height + width: an edge spanning twice the frame (vertices up to
/// half a frame outside it). Real annotations stay within a few pixels of
/// their image (the fixtures' farthest use 0.35 of this); points far outside
/// are never drawn and only cost time (2^26 steps take about a second, for a
/// few bytes of JSON).
const STEPS_PER_EDGE_PER_PIXEL: u64 = 2 * SCALE as u64;

/// pycocotools' upsampling factor.
const SCALE: f64 = 5.0;

/// A binary mask of `height` × `width` pixels as COCO run lengths
/// (column-major, alternating background / foreground, starting with background).
/// Every constructor checks the size and that the runs cover it exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rle {
    height: usize,
    width: usize,
    counts: Vec<u32>,
}

/// The REFER API's mask: `np.sum(decode(parts), axis=2).astype(uint8)`, row-major
/// `height` × `width`, each pixel the number of parts covering it (mod 256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountMask {
    pub height: usize,
    pub width: usize,
    pub counts: Vec<u8>,
}

impl CountMask {
    /// The PNG the official `data_process.py` writes: count × 255 in uint8
    /// arithmetic (two parts → 254).
    pub fn png_values(&self) -> Vec<u8> {
        self.counts.iter().map(|c| c.wrapping_mul(255)).collect()
    }
}

/// Refuses empty and oversized frames; returns the pixel count.
fn checked_pixels(height: usize, width: usize) -> Result<u64> {
    let pixels = (height as u64).saturating_mul(width as u64);
    if height == 0 || width == 0 || pixels > MAX_MASK_PIXELS {
        return Err(Error::input(format!(
            "mask size {height}x{width} is empty or larger than {MAX_MASK_PIXELS} pixels"
        )));
    }
    Ok(pixels)
}

impl Rle {
    /// Run lengths that must add up to `height * width`.
    pub fn new(height: usize, width: usize, counts: Vec<u32>) -> Result<Rle> {
        let pixels = checked_pixels(height, width)?;
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if total != pixels {
            return Err(Error::input(format!(
                "RLE counts add up to {total} pixels but the mask is {height}x{width} = {pixels}"
            )));
        }
        Ok(Rle { height, width, counts })
    }

    pub fn height(&self) -> usize {
        self.height
    }
    pub fn width(&self) -> usize {
        self.width
    }
    /// Run lengths, background first.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// `rleFrPoly`: one polygon `[x0, y0, x1, y1, ...]` in pixel coordinates
    /// (an odd trailing value is ignored, as `len(p)/2` does).
    pub fn from_polygon(xy: &[f64], height: usize, width: usize) -> Result<Rle> {
        let pixels = checked_pixels(height, width)?;
        let k = xy.len() / 2;
        let mut vx = Vec::with_capacity(k + 1);
        let mut vy = Vec::with_capacity(k + 1);
        for pair in xy.chunks_exact(2) {
            vx.push(upsample(pair[0])?);
            vy.push(upsample(pair[1])?);
        }
        if let (Some(&x0), Some(&y0)) = (vx.first(), vy.first()) {
            vx.push(x0);
            vy.push(y0);
        }
        // First pass of the C code: how many points the dense boundary has.
        let steps: u64 =
            (0..k).map(|j| (vx[j] - vx[j + 1]).unsigned_abs().max((vy[j] - vy[j + 1]).unsigned_abs()) + 1).sum();
        let near_frame = (k as u64).saturating_mul(STEPS_PER_EDGE_PER_PIXEL * (height + width) as u64 + 1);
        let limit = MAX_POLYGON_STEPS.min(near_frame);
        if steps > limit {
            return Err(Error::input(format!(
                "polygon boundary upsamples to {steps} points (limit {limit}): coordinates far outside the {height}x{width} image"
            )));
        }
        let mut boundary = BoundaryPoints { height, width, prev: None, starts: Vec::new() };
        for j in 0..k {
            boundary.trace_edge(vx[j], vy[j], vx[j + 1], vy[j + 1]);
        }
        let mut starts = boundary.starts;
        starts.push(pixels as u32);
        Ok(Rle { height, width, counts: runs_from_starts(starts) })
    }

    /// The mask of several polygons, as `annToMask` makes it: `frPyObjects(polygons, h, w)`
    /// (one RLE per polygon), then `merge` (their union). pycocotools' `decode` of the
    /// `frPyObjects` list alone would give one mask per polygon; the union is what a COCO
    /// annotation of several parts means. Each polygon is checked by [`check_polygons`]'s rules.
    pub fn from_polygons(polygons: &[Vec<f64>], height: usize, width: usize) -> Result<Rle> {
        let parts = polygons
            .iter()
            .enumerate()
            .map(|(k, p)| {
                check_polygon(p)
                    .and_then(|()| Rle::from_polygon(p, height, width))
                    .map_err(|e| Error::input(format!("polygon {}: {e}", k + 1)))
            })
            .collect::<Result<Vec<Rle>>>()?;
        Rle::merge(&parts, false)
    }

    /// `rleFrBbox`: box `[x, y, w, h]` as the polygon of its four corners.
    pub fn from_bbox(bbox: [f64; 4], height: usize, width: usize) -> Result<Rle> {
        let [xs, ys, bw, bh] = bbox;
        let (xe, ye) = (xs + bw, ys + bh);
        Rle::from_polygon(&[xs, ys, xs, ye, xe, ye, xe, ys], height, width)
    }

    /// `rleFrString`: pycocotools' compressed counts string.
    pub fn from_compressed(s: &str, height: usize, width: usize) -> Result<Rle> {
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::with_capacity(bytes.len());
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k, mut more) = (0i64, 0u32, true);
            while more {
                let Some(&byte) = bytes.get(p) else {
                    return Err(Error::input(format!("compressed RLE '{s}' ends inside a value")));
                };
                if !(48..48 + 64).contains(&byte) || k >= 12 {
                    return Err(Error::input(format!(
                        "compressed RLE '{s}': bad character or over-long value at byte {p}"
                    )));
                }
                let c = i64::from(byte - 48);
                x |= (c & 0x1f) << (5 * k);
                more = c & 0x20 != 0;
                p += 1;
                k += 1;
                if !more && c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
            }
            let m = counts.len();
            if m > 2 {
                x = x.wrapping_add(i64::from(counts[m - 2]));
            }
            counts.push(x as u32); // (uint) x, as the C code casts
        }
        Rle::new(height, width, counts)
    }

    /// `rleToString`: the compressed counts string (LEB128-like, 6 bits per
    /// character in '0'..'o'; from the fourth run on, the difference to the run
    /// two places back is stored).
    pub fn to_compressed(&self) -> String {
        let mut s = String::new();
        for (i, &count) in self.counts.iter().enumerate() {
            let mut x = i64::from(count);
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            let mut more = true;
            while more {
                let mut c = (x & 0x1f) as u8;
                x >>= 5;
                more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                s.push(char::from(c + 48));
            }
        }
        s
    }

    /// `rleArea`: number of foreground pixels.
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| u64::from(c)).sum()
    }

    /// `rleDecode`: row-major `height` × `width`, 1 = foreground.
    pub fn decode(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.height * self.width];
        self.add_to(&mut out);
        out
    }

    /// Adds 1 (mod 256) to every foreground pixel of a row-major buffer of this size.
    fn add_to(&self, out: &mut [u8]) {
        let (h, w) = (self.height, self.width);
        let mut index = 0usize;
        for (run, &count) in self.counts.iter().enumerate() {
            let end = index.saturating_add(count as usize);
            if run % 2 == 1 {
                for i in index..end.min(h * w) {
                    if let Some(px) = out.get_mut((i % h) * w + i / h) {
                        *px = px.wrapping_add(1);
                    }
                }
            }
            index = end;
        }
    }

    /// `rleMerge`: union (or intersection) of same-sized masks.
    pub fn merge(parts: &[Rle], intersect: bool) -> Result<Rle> {
        let Some(first) = parts.first() else {
            return Err(Error::input("merging an empty list of masks"));
        };
        let mut acc = first.counts.clone();
        for b in &parts[1..] {
            if (b.height, b.width) != (first.height, first.width) {
                return Err(Error::input(format!(
                    "merging masks of different sizes {}x{} and {}x{}",
                    first.height, first.width, b.height, b.width
                )));
            }
            acc = merge_two(&acc, &b.counts, intersect);
        }
        Ok(Rle { height: first.height, width: first.width, counts: acc })
    }
}

/// `(int)(5 * v + .5)`: C truncation toward zero, refusing values a C `int`
/// cannot hold (undefined behaviour there).
fn upsample(v: f64) -> Result<i64> {
    let scaled = SCALE * v + 0.5;
    if !scaled.is_finite() || scaled.abs() >= f64::from(1u32 << 30) {
        return Err(Error::input(format!("polygon coordinate {v} is not a usable number")));
    }
    Ok(scaled.trunc() as i64)
}

/// The second pass of `rleFrPoly`, fed point by point: where the dense
/// boundary steps between columns, a run boundary (`x * h + y`) is recorded.
struct BoundaryPoints {
    height: usize,
    width: usize,
    prev: Option<(i64, i64)>,
    starts: Vec<u32>,
}

impl BoundaryPoints {
    /// Emits the points of one edge in the order the C code stores them.
    fn trace_edge(&mut self, x0: i64, y0: i64, x1: i64, y1: i64) {
        let (dx, dy) = ((x1 - x0).abs(), (y0 - y1).abs());
        let flip = (dx >= dy && x0 > x1) || (dx < dy && y0 > y1);
        let (xs, ys, xe, ye) = if flip { (x1, y1, x0, y0) } else { (x0, y0, x1, y1) };
        if dx >= dy {
            // dx == dy == 0 divides 0 by 0 in C; the single point's v is never
            // used since its neighbours share its column, so take ys.
            let s = if dx == 0 { 0.0 } else { (ye - ys) as f64 / dx as f64 };
            for d in 0..=dx {
                let t = if flip { dx - d } else { d };
                self.point(t + xs, (ys as f64 + s * t as f64 + 0.5) as i64);
            }
        } else {
            let s = (xe - xs) as f64 / dy as f64;
            for d in 0..=dy {
                let t = if flip { dy - d } else { d };
                self.point((xs as f64 + s * t as f64 + 0.5) as i64, t + ys);
            }
        }
    }

    fn point(&mut self, u: i64, v: i64) {
        if let Some((pu, pv)) = self.prev.replace((u, v)) {
            if u == pu {
                return;
            }
            let xd = (if u < pu { u } else { u - 1 }) as f64;
            let xd = (xd + 0.5) / SCALE - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > (self.width - 1) as f64 {
                return;
            }
            let yd = (v.min(pv) as f64 + 0.5) / SCALE - 0.5;
            let yd = yd.clamp(0.0, self.height as f64).ceil();
            // x ≤ w-1 and y ≤ h, so x*h + y ≤ h*w ≤ MAX_MASK_PIXELS.
            self.starts.push((xd as u64 * self.height as u64 + yd as u64) as u32);
        }
    }
}

/// The end of `rleFrPoly`: sorted run boundaries → run lengths, folding a
/// zero-length run and its successor into the previous run.
fn runs_from_starts(mut starts: Vec<u32>) -> Vec<u32> {
    starts.sort_unstable();
    let mut prev = 0u32;
    for a in starts.iter_mut() {
        let t = *a;
        *a -= prev;
        prev = t;
    }
    let mut runs = Vec::with_capacity(starts.len());
    let mut it = starts.into_iter();
    runs.extend(it.next());
    while let Some(a) = it.next() {
        if a > 0 {
            runs.push(a);
        } else if let (Some(next), Some(last)) = (it.next(), runs.last_mut()) {
            *last += next;
        }
    }
    runs
}

/// The inner loop of `rleMerge` for two run lists over the same pixel count.
fn merge_two(a: &[u32], b: &[u32], intersect: bool) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut ca, mut cb) = (a.first().copied().unwrap_or(0), b.first().copied().unwrap_or(0));
    let (mut ia, mut ib) = (1, 1);
    let (mut va, mut vb, mut v) = (false, false, false);
    let mut cc = 0u32;
    loop {
        let c = ca.min(cb);
        cc += c;
        ca -= c;
        if ca == 0 && ia < a.len() {
            ca = a[ia];
            ia += 1;
            va = !va;
        }
        cb -= c;
        if cb == 0 && ib < b.len() {
            cb = b[ib];
            ib += 1;
            vb = !vb;
        }
        let remaining = ca as u64 + cb as u64;
        let vp = v;
        v = if intersect { va && vb } else { va || vb };
        if v != vp || remaining == 0 {
            out.push(cc);
            cc = 0;
        }
        if remaining == 0 {
            return out;
        }
        if ca == 0 && ia >= a.len() || cb == 0 && ib >= b.len() {
            // One list ran out before the other, which equal totals (checked by
            // every constructor) rule out; stop rather than spin.
            out.push(cc + ca + cb);
            return out;
        }
    }
}

/// Sums the parts' masks (the REFER API's `np.sum(..., axis=2)`), u8 wrapping.
pub fn count_mask(parts: &[Rle], height: usize, width: usize) -> Result<CountMask> {
    checked_pixels(height, width)?;
    let mut counts = vec![0u8; height * width];
    for part in parts {
        if (part.height, part.width) != (height, width) {
            return Err(Error::input(format!(
                "mask part is {}x{} but the image is {height}x{width}",
                part.height, part.width
            )));
        }
        part.add_to(&mut counts);
    }
    Ok(CountMask { height, width, counts })
}

/// pycocotools' `frPyObjects(seg, h, w)` on a COCO `segmentation` value, as
/// one RLE per part. The first element decides the kind, as in pycocotools:
/// 4 numbers → every element is a box `[x, y, w, h]`; more → every element is
/// a polygon; a `{size, counts}` object → RLE with its own size (`counts` a
/// list of run lengths, or a compressed string). A bare list of numbers or a
/// bare object is a single part.
pub fn rles_from_segmentation(seg: &Value, height: usize, width: usize) -> Result<Vec<Rle>> {
    match seg {
        Value::Object(_) => Ok(vec![rle_from_object(seg)?]),
        Value::Array(items) => match items.first() {
            None => Err(Error::input("segmentation is an empty list")),
            Some(Value::Array(first)) if first.len() == 4 => items
                .iter()
                .map(|b| {
                    let n = numbers(b, "box")?;
                    let bbox: [f64; 4] = n.try_into().map_err(|n: Vec<f64>| {
                        Error::input(format!("box segmentation has {} numbers, not 4", n.len()))
                    })?;
                    Rle::from_bbox(bbox, height, width)
                })
                .collect(),
            Some(Value::Array(first)) if first.len() > 4 => {
                items.iter().map(|p| Rle::from_polygon(&numbers(p, "polygon")?, height, width)).collect()
            }
            Some(Value::Object(_)) => items.iter().map(rle_from_object).collect(),
            Some(Value::Number(_)) if items.len() == 4 => {
                let n = numbers(seg, "box")?;
                let bbox: [f64; 4] = n.try_into().map_err(|_| Error::input("box is not 4 numbers"))?;
                Ok(vec![Rle::from_bbox(bbox, height, width)?])
            }
            Some(Value::Number(_)) if items.len() > 4 => {
                Ok(vec![Rle::from_polygon(&numbers(seg, "polygon")?, height, width)?])
            }
            Some(_) => Err(Error::input("segmentation is neither polygons (more than 4 numbers), boxes nor RLE")),
        },
        _ => Err(Error::input("segmentation is neither a list nor an RLE object")),
    }
}

/// A JSON list of polygons `[[x1, y1, x2, y2, ...], ...]` → coordinates, each polygon
/// checked: numbers only, finite, an even count, at least 3 points. The error names the
/// polygon (1-based) and the offending value.
pub fn check_polygons(v: &Value) -> Result<Vec<Vec<f64>>> {
    let Some(items) = v.as_array() else {
        return Err(Error::input("is not a list of polygons [[x1, y1, x2, y2, ...], ...]"));
    };
    if items.is_empty() {
        return Err(Error::input("is an empty list: give at least one polygon"));
    }
    items
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let whose = || format!("polygon {}", k + 1);
            let Some(values) = p.as_array() else {
                return Err(Error::input(format!("{} is not a list of numbers: {p}", whose())));
            };
            let xy = values
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    n.as_f64().ok_or_else(|| Error::input(format!("{}, value {}: {n} is not a number", whose(), i + 1)))
                })
                .collect::<Result<Vec<f64>>>()?;
            check_polygon(&xy).map_err(|e| Error::input(format!("{}: {e}", whose())))?;
            Ok(xy)
        })
        .collect()
}

/// At least 3 points (so that pycocotools never takes it for a 4-number box), an even
/// count, every value finite.
fn check_polygon(xy: &[f64]) -> Result<()> {
    if let Some(i) = xy.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!("value {} is {}, not a finite number", i + 1, xy[i])));
    }
    if xy.len() % 2 == 1 {
        return Err(Error::input(format!("has {} numbers, an odd count: give x, y pairs", xy.len())));
    }
    if xy.len() < 6 {
        return Err(Error::input(format!("has {} points, fewer than 3", xy.len() / 2)));
    }
    Ok(())
}

fn numbers(v: &Value, what: &str) -> Result<Vec<f64>> {
    let items = v.as_array().ok_or_else(|| Error::input(format!("{what} is not a list of numbers")))?;
    items.iter().map(|n| n.as_f64().ok_or_else(|| Error::input(format!("{what} holds a non-number: {n}")))).collect()
}

/// `{size: [h, w], counts: [..] | "..."}` → RLE.
fn rle_from_object(v: &Value) -> Result<Rle> {
    let size = v.get("size").and_then(Value::as_array).map(|s| s.as_slice());
    let (height, width) = match size {
        Some([h, w]) => match (h.as_u64(), w.as_u64()) {
            (Some(h), Some(w)) if h <= u32::MAX as u64 && w <= u32::MAX as u64 => (h as usize, w as usize),
            _ => return Err(Error::input("RLE size is not two non-negative integers")),
        },
        _ => return Err(Error::input("RLE object lacks size [height, width]")),
    };
    match v.get("counts") {
        Some(Value::String(s)) => Rle::from_compressed(s, height, width),
        Some(Value::Array(items)) => {
            checked_pixels(height, width)?;
            let counts = items
                .iter()
                .map(|c| {
                    c.as_u64()
                        .and_then(|c| u32::try_from(c).ok())
                        .ok_or_else(|| Error::input(format!("RLE count {c} is not a 32-bit count")))
                })
                .collect::<Result<Vec<u32>>>()?;
            Rle::new(height, width, counts)
        }
        _ => Err(Error::input("RLE object lacks counts (a list or a compressed string)")),
    }
}

#[cfg(test)]
mod tests;
