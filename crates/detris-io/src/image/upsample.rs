//! PyTorch's CPU `F.interpolate(..., align_corners=True)` for one f32 map (bicubic and bilinear,
//! `upsample_generic_Nd_kernel_impl`), and `torch.sigmoid`, in f32 with PyTorch's rounding order.

/// `torch.sigmoid` in f32: `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Source position of output index `i` with align_corners=True: `i * (in-1)/(out-1)` in f32,
/// split into the floor index (clamped to `in-1`) and the fraction clamped to [0, 1]
/// (PyTorch's `guard_index_and_lambda`).
fn source_index(i: usize, input: usize, output: usize) -> (i64, f32) {
    let scale = if output > 1 { (input as f32 - 1.0) / (output as f32 - 1.0) } else { 0.0 };
    let real = scale * i as f32;
    let idx = (real.floor() as i64).min(input as i64 - 1);
    let lambda = (real - idx as f32).clamp(0.0, 1.0);
    (idx, lambda)
}

/// PyTorch's `get_cubic_upsample_coefficients` (A = -0.75) in f32.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let conv1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let conv2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let x2 = 1.0 - t;
    [conv2(t + 1.0), conv1(t), conv1(x2), conv2(x2 + 1.0)]
}

/// Per output index along one axis: the taps' (clamped) input indices and weights.
fn cubic_taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    (0..output)
        .map(|i| {
            let (idx, t) = source_index(i, input, output);
            let taps = std::array::from_fn(|j| (idx - 1 + j as i64).clamp(0, input as i64 - 1) as usize);
            (taps, cubic_weights(t))
        })
        .collect()
}

fn linear_taps(input: usize, output: usize) -> Vec<([usize; 2], [f32; 2])> {
    (0..output)
        .map(|i| {
            if input == output {
                return ([i, i], [1.0, 0.0]);
            }
            let (idx, l1) = source_index(i, input, output);
            let i0 = idx.max(0) as usize;
            let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
            ([i0, i1], [1.0 - l1, l1])
        })
        .collect()
}

/// Bicubic (A = -0.75, clamped borders) `ih × iw` → `oh × ow`, align_corners=True, row-major.
/// `src.len()` must be `ih * iw` (both at least 1); callers check.
pub fn upsample_bicubic_align_corners(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    let (ys, xs) = (cubic_taps(ih, oh), cubic_taps(iw, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for (ry, wy) in &ys {
        for (rx, wx) in &xs {
            // Inner sums along x, then along y, each ((t0 w0 + t1 w1) + t2 w2) + t3 w3.
            let row = |r: usize| {
                let s = &src[r * iw..r * iw + iw];
                let mut acc = s[rx[0]] * wx[0];
                for j in 1..4 {
                    acc += s[rx[j]] * wx[j];
                }
                acc
            };
            let mut acc = row(ry[0]) * wy[0];
            for j in 1..4 {
                acc += row(ry[j]) * wy[j];
            }
            out.push(acc);
        }
    }
    out
}

/// Bilinear `ih × iw` → `oh × ow`, align_corners=True, row-major. `src.len()` must be `ih * iw`.
pub fn upsample_bilinear_align_corners(src: &[f32], ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
    let (ys, xs) = (linear_taps(ih, oh), linear_taps(iw, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for (ry, wy) in &ys {
        for (rx, wx) in &xs {
            let row = |r: usize| src[r * iw + rx[0]] * wx[0] + src[r * iw + rx[1]] * wx[1];
            out.push(row(ry[0]) * wy[0] + row(ry[1]) * wy[1]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_are_kept_and_constants_stay_constant() {
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        for up in [upsample_bicubic_align_corners(&src, 3, 4, 7, 9), upsample_bilinear_align_corners(&src, 3, 4, 7, 9)]
        {
            assert_eq!((up[0], up[8], up[54], up[62]), (0.0, 3.0, 8.0, 11.0));
        }
        // Tolerance 1e-6: the cubic weights sum to 1 only up to f32 rounding.
        let flat = upsample_bicubic_align_corners(&[0.5; 6], 2, 3, 5, 5);
        assert!(flat.iter().all(|v| (v - 0.5).abs() < 1e-6), "{flat:?}");
    }

    #[test]
    fn linear_ramp_is_reproduced() {
        // Bilinear with align_corners reproduces a linear ramp (tolerance: f32 rounding).
        let up = upsample_bilinear_align_corners(&[0.0, 1.0], 1, 2, 1, 5);
        for (i, v) in up.iter().enumerate() {
            assert!((v - i as f32 / 4.0).abs() < 1e-6, "{up:?}");
        }
    }
}
