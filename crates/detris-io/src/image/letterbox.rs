//! The letterbox affine of the official `getTransformMat`: scale the photo to fit a
//! `size × size` square, centre it (the offsets may be fractional).

/// The forward (`mat`: photo → square) and inverse (`mat_inv`: square → photo) 2×3 affine
/// matrices, in pixels, exactly as `cv2.getAffineTransform` returns them for the official points.
#[derive(Clone, Debug, PartialEq)]
pub struct Letterbox {
    /// Photo width and height, pixels.
    pub src_w: usize,
    pub src_h: usize,
    /// Side of the square model input, pixels.
    pub size: usize,
    /// `[[scale, 0, bx], [0, scale, by]]` up to f32 rounding of the points.
    pub mat: [[f64; 3]; 2],
    /// The inverse map, as `getAffineTransform(dst, src)` computes it.
    pub mat_inv: [[f64; 3]; 2],
}

impl Letterbox {
    /// Letterbox of a `src_w × src_h` photo into `size × size`. A zero-sized photo gives
    /// non-finite or zero matrices (a warp then yields only border), never a panic.
    pub fn new(src_w: usize, src_h: usize, size: usize) -> Letterbox {
        let (w, h, s) = (src_w as f64, src_h as f64, size as f64);
        // Python: scale = min(inp_h / ori_h, inp_w / ori_w), in f64.
        let scale = f64::min(s / h, s / w);
        let (new_w, new_h) = (w * scale, h * scale);
        let (bx, by) = ((s - new_w) / 2.0, (s - new_h) / 2.0);
        // The official code builds the points as np.float32 arrays.
        let src = [[0.0, 0.0], [w, 0.0], [0.0, h]].map(|p| p.map(f32_round));
        let dst = [[bx, by], [new_w + bx, by], [bx, new_h + by]].map(|p| p.map(f32_round));
        Letterbox {
            src_w,
            src_h,
            size,
            mat: get_affine_transform(&src, &dst),
            mat_inv: get_affine_transform(&dst, &src),
        }
    }
}

fn f32_round(v: f64) -> f64 {
    f64::from(v as f32)
}

/// `cv::getAffineTransform`: the 6×6 system for the three point pairs solved with OpenCV's
/// `LUImpl<double>` (partial pivoting); a singular system gives the zero matrix as OpenCV does.
fn get_affine_transform(src: &[[f64; 2]; 3], dst: &[[f64; 2]; 3]) -> [[f64; 3]; 2] {
    let mut a = [[0.0f64; 6]; 6];
    let mut b = [0.0f64; 6];
    for i in 0..3 {
        let [x, y] = src[i];
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0];
        b[2 * i] = dst[i][0];
        b[2 * i + 1] = dst[i][1];
    }
    match lu_solve(&mut a, &mut b) {
        true => [[b[0], b[1], b[2]], [b[3], b[4], b[5]]],
        false => [[0.0; 3]; 2],
    }
}

/// OpenCV's `LUImpl` for one right-hand side: Gaussian elimination with partial pivoting,
/// eps = 100·DBL_EPSILON. Returns false when singular.
fn lu_solve<const M: usize>(a: &mut [[f64; M]; M], b: &mut [f64; M]) -> bool {
    let eps = f64::EPSILON * 100.0;
    for i in 0..M {
        let mut k = i;
        for j in i + 1..M {
            if a[j][i].abs() > a[k][i].abs() {
                k = j;
            }
        }
        let pivot = a[k][i].abs();
        if pivot.is_nan() || pivot < eps {
            return false;
        }
        if k != i {
            a.swap(i, k);
            b.swap(i, k);
        }
        let d = -1.0 / a[i][i];
        for j in i + 1..M {
            let alpha = a[j][i] * d;
            let row_i = a[i];
            for (v, vi) in a[j].iter_mut().zip(row_i).skip(i + 1) {
                *v += alpha * vi;
            }
            b[j] += alpha * b[i];
        }
    }
    for i in (0..M).rev() {
        let mut s = b[i];
        for c in i + 1..M {
            s -= a[i][c] * b[c];
        }
        b[i] = s / a[i][i];
    }
    true
}

/// `cv::warpAffine`'s preamble without WARP_INVERSE_MAP: the forward matrix is inverted in
/// double to the destination → source map, flattened `[m00, m01, m02, m10, m11, m12]`.
pub(super) fn invert_for_warp(m: &[[f64; 3]; 2]) -> [f64; 6] {
    let [[m0, m1, m2], [m3, m4, m5]] = *m;
    let d = m0 * m4 - m1 * m3;
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (a11, a22) = (m4 * d, m0 * d);
    let (i0, i1, i3, i4) = (a11, -m1 * d, -m3 * d, a22);
    let b1 = -i0 * m2 - i1 * m5;
    let b2 = -i3 * m2 - i4 * m5;
    [i0, i1, b1, i3, i4, b2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_640x480_scales_by_0_7() {
        // 640×480 → scale 0.7, 448×336, by = 56 (exact in f32, so exact here).
        // Tolerance 1e-9: the LU solve rounds in the last bits only.
        let lb = Letterbox::new(640, 480, 448);
        let [[a, b, c], [d, e, f]] = lb.mat;
        for (got, want) in [(a, 0.7), (b, 0.0), (c, 0.0), (d, 0.0), (e, 0.7), (f, 56.0)] {
            assert!((got - want).abs() < 1e-9, "mat {:?}", lb.mat);
        }
        let [[ia, _, _], [_, _, iff]] = lb.mat_inv;
        assert!((ia - 1.0 / 0.7).abs() < 1e-9 && (iff + 80.0).abs() < 1e-9, "mat_inv {:?}", lb.mat_inv);
        let inv = invert_for_warp(&lb.mat);
        assert!((inv[0] - 1.0 / 0.7).abs() < 1e-9 && (inv[5] + 80.0).abs() < 1e-9, "{inv:?}");
    }

    #[test]
    fn zero_sized_photo_does_not_panic() {
        let lb = Letterbox::new(0, 0, 448);
        let _ = invert_for_warp(&lb.mat);
    }
}
