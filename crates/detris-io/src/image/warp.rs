//! `cv::warpAffine` with BORDER_CONSTANT, as the OpenCV that made the fixtures computes it.
//!
//! That OpenCV (5.0) does *not* use the classic fixed-point remap (1/32-pixel coordinates,
//! 15-bit weights), which leaves many letterbox values of the fixtures off by one. It evaluates
//! the destination → source map in f32 (the double matrix cast to f32, `x*m0 + y*m1 + m2`
//! without FMA), takes the kernel weights at the exact fraction, lets taps outside the image
//! read the border value, sums in f32 and rounds half to even for u8. With that model the
//! fixtures' letterbox is bit-identical. The order of the f32 sums differs between OpenCV's
//! own SIMD and scalar paths, so on other photos a few values per million, whose sum lies a
//! rounding step from a half, differ by one (`docs/architecture.md`, the letterbox quirk).

/// A u8 image in HWC layout with `cn` channels; `data.len() == w * h * cn` (checked by callers).
pub(super) struct ImageU8<'a> {
    pub data: &'a [u8],
    pub w: usize,
    pub h: usize,
    pub cn: usize,
}

/// OpenCV's `interpolateCubic` (A = -0.75) in f32: weights of the taps at -1, 0, +1, +2.
fn cubic_weights(x: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [c0, c1, c2, 1.0 - c0 - c1 - c2]
}

/// One source position: the integer pixel left of / above it and the fractions, or None when it
/// is not finite or absurdly far away (the output is then the border value).
struct Mapped {
    ix: i64,
    iy: i64,
    fx: f32,
    fy: f32,
}

/// Walks the destination in row-major order and calls `f(dst_index, position)`.
/// `m` is the destination → source map in double, as `warpAffine` computes it.
fn for_each_mapped(m: &[f64; 6], dst_w: usize, dst_h: usize, mut f: impl FnMut(usize, Option<Mapped>)) {
    let mf = m.map(|v| v as f32);
    for y in 0..dst_h {
        let yf = y as f32;
        for x in 0..dst_w {
            let xf = x as f32;
            let sx = mf[0] * xf + mf[1] * yf + mf[2];
            let sy = mf[3] * xf + mf[4] * yf + mf[5];
            // |s| < 1e9 keeps the integer part exact and far from overflow; NaN fails it too.
            let mapped = (sx.abs() < 1e9 && sy.abs() < 1e9).then(|| {
                let (flx, fly) = (sx.floor(), sy.floor());
                Mapped { ix: flx as i64, iy: fly as i64, fx: sx - flx, fy: sy - fly }
            });
            f(y * dst_w + x, mapped);
        }
    }
}

/// The index if `0 <= p < len`.
fn inside(p: i64, len: usize) -> Option<usize> {
    usize::try_from(p).ok().filter(|&p| p < len)
}

/// Whether a kernel of taps `i0..i0+n` misses `0..len` entirely.
fn misses(i0: i64, n: i64, len: usize) -> bool {
    i0 + n <= 0 || i0 >= len as i64
}

/// Bicubic sample of channel `k`: rows of taps weighted along x, then the rows along y.
fn cubic_sample(px: impl Fn(Option<usize>, Option<usize>) -> f32, p: &Mapped, w: usize, h: usize) -> f32 {
    let (wx, wy) = (cubic_weights(p.fx), cubic_weights(p.fy));
    let xs: [Option<usize>; 4] = std::array::from_fn(|j| inside(p.ix - 1 + j as i64, w));
    let mut sum = 0.0f32;
    for (i, wyi) in wy.iter().enumerate() {
        let yi = inside(p.iy - 1 + i as i64, h);
        let mut row = 0.0f32;
        for (xj, wxj) in xs.iter().zip(wx) {
            row += px(*xj, yi) * wxj;
        }
        sum += row * wyi;
    }
    sum
}

/// `warpAffine(src, dst_w×dst_h, INTER_CUBIC, BORDER_CONSTANT, border)` for u8 images.
/// `border` has `src.cn` values (cv2 rounds a float border to u8 first).
pub(super) fn warp_cubic_u8(src: &ImageU8, m: &[f64; 6], dst_w: usize, dst_h: usize, border: &[u8]) -> Vec<u8> {
    let cn = src.cn;
    let mut out = vec![0u8; dst_w * dst_h * cn];
    for_each_mapped(m, dst_w, dst_h, |di, p| {
        let d = &mut out[di * cn..di * cn + cn];
        match p {
            Some(p) if !misses(p.ix - 1, 4, src.w) && !misses(p.iy - 1, 4, src.h) => {
                for (k, dk) in d.iter_mut().enumerate() {
                    let px = |x: Option<usize>, y: Option<usize>| match (x, y) {
                        (Some(x), Some(y)) => f32::from(src.data[(y * src.w + x) * cn + k]),
                        _ => f32::from(border[k]),
                    };
                    *dk = cubic_sample(px, &p, src.w, src.h).round_ties_even().clamp(0.0, 255.0) as u8;
                }
            }
            _ => d.copy_from_slice(&border[..cn]),
        }
    });
    out
}

/// `warpAffine(src, dst_w×dst_h, INTER_CUBIC, BORDER_CONSTANT, border)` for one-channel f32
/// images. `src.len()` must be `sw * sh`.
pub(super) fn warp_cubic_f32(
    src: &[f32],
    sw: usize,
    sh: usize,
    m: &[f64; 6],
    dst_w: usize,
    dst_h: usize,
    border: f32,
) -> Vec<f32> {
    let mut out = vec![border; dst_w * dst_h];
    for_each_mapped(m, dst_w, dst_h, |di, p| {
        if let Some(p) = p.filter(|p| !misses(p.ix - 1, 4, sw) && !misses(p.iy - 1, 4, sh)) {
            let px = |x: Option<usize>, y: Option<usize>| match (x, y) {
                (Some(x), Some(y)) => src[y * sw + x],
                _ => border,
            };
            out[di] = cubic_sample(px, &p, sw, sh);
        }
    });
    out
}

/// `warpAffine(src, dst_w×dst_h, INTER_LINEAR, BORDER_CONSTANT, border)` for u8 images, in the
/// same float model (OpenCV's float kernel: lerp along x, then along y; round half to even).
/// No fixture covers this path.
pub(super) fn warp_linear_u8(src: &ImageU8, m: &[f64; 6], dst_w: usize, dst_h: usize, border: &[u8]) -> Vec<u8> {
    let cn = src.cn;
    let mut out = vec![0u8; dst_w * dst_h * cn];
    for_each_mapped(m, dst_w, dst_h, |di, p| {
        let d = &mut out[di * cn..di * cn + cn];
        match p {
            Some(p) if !misses(p.ix, 2, src.w) && !misses(p.iy, 2, src.h) => {
                let (x0, x1) = (inside(p.ix, src.w), inside(p.ix + 1, src.w));
                let (y0, y1) = (inside(p.iy, src.h), inside(p.iy + 1, src.h));
                for (k, dk) in d.iter_mut().enumerate() {
                    let px = |x: Option<usize>, y: Option<usize>| match (x, y) {
                        (Some(x), Some(y)) => f32::from(src.data[(y * src.w + x) * cn + k]),
                        _ => f32::from(border[k]),
                    };
                    let (p00, p01, p10, p11) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
                    let r0 = p00 + p.fx * (p01 - p00);
                    let r1 = p10 + p.fx * (p11 - p10);
                    let r = r0 + p.fy * (r1 - r0);
                    *dk = r.round_ties_even().clamp(0.0, 255.0) as u8;
                }
            }
            _ => d.copy_from_slice(&border[..cn]),
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_weights_interpolate() {
        assert_eq!(cubic_weights(0.0), [0.0, 1.0, 0.0, 0.0]);
        // Tolerance 1e-6: f32 rounding of the polynomial.
        let w = cubic_weights(0.5);
        // A = -0.75 at 0.5: 1 - 1.625/4 and the mirror of -0.09375.
        assert!((w[1] - 0.59375).abs() < 1e-6 && (w[0] + 0.09375).abs() < 1e-6 && w[0] == w[3], "{w:?}");
    }

    #[test]
    fn identity_warp_copies_pixels() {
        let data: Vec<u8> = (0..5 * 4 * 3).map(|v| (v * 7 % 256) as u8).collect();
        let src = ImageU8 { data: &data, w: 5, h: 4, cn: 3 };
        let id = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        assert_eq!(warp_cubic_u8(&src, &id, 5, 4, &[1, 2, 3]), data);
        assert_eq!(warp_linear_u8(&src, &id, 5, 4, &[1, 2, 3]), data);
        let f: Vec<f32> = data.iter().map(|&v| f32::from(v)).collect();
        assert_eq!(warp_cubic_f32(&f, 15, 4, &id, 15, 4, 0.0), f);
    }

    #[test]
    fn outside_and_non_finite_maps_give_the_border() {
        let data = [9u8; 4 * 4];
        let src = ImageU8 { data: &data, w: 4, h: 4, cn: 1 };
        for m in [[1.0, 0.0, 100.0, 0.0, 1.0, 0.0], [f64::NAN; 6], [f64::INFINITY, 0.0, 0.0, 0.0, 1.0, 0.0]] {
            assert!(warp_cubic_u8(&src, &m, 3, 3, &[7]).iter().all(|&v| v == 7));
            assert!(warp_linear_u8(&src, &m, 3, 3, &[7]).iter().all(|&v| v == 7));
            assert!(warp_cubic_f32(&[1.0; 16], 4, 4, &m, 3, 3, 0.5).iter().all(|&v| v == 0.5));
        }
    }

    #[test]
    fn half_pixel_shift_blends_neighbours() {
        // Linear: halfway between 0 and 255 is 127.5, rounded half to even → 128.
        let data = [0u8, 255, 0, 255];
        let src = ImageU8 { data: &data, w: 2, h: 2, cn: 1 };
        let shift = [1.0, 0.0, 0.5, 0.0, 1.0, 0.0];
        assert_eq!(warp_linear_u8(&src, &shift, 1, 2, &[0]), vec![128, 128]);
    }
}
