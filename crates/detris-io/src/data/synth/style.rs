//! Looks of the synthetic pictures. `plain` is the look the shipped model was trained on
//! (flat shapes on grey backgrounds, square-ish PNGs). `photo` draws the same kind of
//! scenes, masks and sentences as a different domain, to measure the shipped model away
//! from its training look and to fine-tune it there: non-square photo sizes, textured and
//! coloured backgrounds, uneven lighting, a global colour cast, blur, sensor noise and
//! JPEG compression.
//!
//! The masks stay the exact visible pixels of each object as drawn (before blur and
//! compression), as a person would outline them. The look of a picture is drawn from its
//! own stream, so it is deterministic by seed like the scene.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::scene::Rendered;
use super::{encode_png, ImageSize, MIN_SIDE};
use crate::error::{Error, Result};

/// A look of the synthetic pictures (`detris data synth --style NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// The training look of the shipped model.
    #[default]
    Plain,
    /// A photo-like domain (see the module docs).
    Photo,
}

/// Photo aspect ratios (long side / short side), as cameras and phones take them.
const ASPECTS: [f64; 4] = [4.0 / 3.0, 3.0 / 2.0, 16.0 / 9.0, 5.0 / 4.0];

impl Style {
    pub const NAMES: [&'static str; 2] = ["plain", "photo"];

    /// The style called `name` (one of [`Style::NAMES`]).
    pub fn parse(name: &str) -> Result<Style> {
        match name {
            "plain" => Ok(Style::Plain),
            "photo" => Ok(Style::Photo),
            other => Err(Error::input(format!(
                "unknown synthetic style {other:?}: choose one of {}",
                Style::NAMES.join(", ")
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        Style::NAMES[self as usize]
    }

    /// Extension of the photo files.
    pub fn extension(self) -> &'static str {
        match self {
            Style::Plain => "png",
            Style::Photo => "jpg",
        }
    }

    /// Width and height of a picture. `plain` takes `size` as it is, drawing from the
    /// scene's stream (as before styles existed, so its files do not change); `photo`
    /// takes the size's long side and a photo aspect ratio, in either orientation.
    pub(super) fn picture_size(
        self,
        size: ImageSize,
        scene_rng: &mut ChaCha8Rng,
        look: &mut ChaCha8Rng,
    ) -> (usize, usize) {
        let draw = |rng: &mut ChaCha8Rng| match size {
            ImageSize::Fixed { width, height } => (width, height),
            ImageSize::Varied { min, max } => (rng.gen_range(min..=max), rng.gen_range(min..=max)),
        };
        match self {
            Style::Plain => draw(scene_rng),
            Style::Photo => {
                let (a, b) = draw(look);
                let long = a.max(b);
                let aspect = ASPECTS[look.gen_range(0..ASPECTS.len())];
                let short = ((long as f64 / aspect).round() as usize).max(MIN_SIDE);
                if look.gen_bool(1.0 / 3.0) {
                    (short, long)
                } else {
                    (long, short)
                }
            }
        }
    }

    /// The encoded photo of a drawn scene.
    pub(super) fn encode(self, rendered: &Rendered, look: &mut ChaCha8Rng) -> Result<Vec<u8>> {
        let (w, h) = (rendered.width, rendered.height);
        match self {
            Style::Plain => encode_png(&rendered.rgb, w, h, png::ColorType::Rgb),
            Style::Photo => {
                let rgb = photo_pixels(rendered, look);
                encode_jpeg(&rgb, w, h, look.gen_range(30..=75))
            }
        }
    }
}

/// The photo look of a drawn scene, as RGB bytes.
fn photo_pixels(rendered: &Rendered, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (w, h) = (rendered.width, rendered.height);
    let texture = Texture::sample(rng);
    let light = Lighting::sample(rng);
    // Per channel gain and offset: a white balance that is off.
    let gain: [f32; 3] = std::array::from_fn(|_| rng.gen_range(0.82..1.18));
    let offset: [f32; 3] = std::array::from_fn(|_| rng.gen_range(-14.0..14.0));
    let noise_sigma: f32 = rng.gen_range(2.0..6.0);
    let noise_seed: u64 = rng.gen();
    let blur_sigma: f32 = rng.gen_range(0.5..1.5);

    let mut pixels = vec![0f32; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let base = match rendered.owner[i] {
                Some(_) => std::array::from_fn(|c| rendered.rgb[3 * i + c] as f32),
                None => texture.colour(x, y),
            };
            let shade = light.factor(x as f32 / w as f32, y as f32 / h as f32);
            for c in 0..3 {
                pixels[3 * i + c] = base[c] * shade * gain[c] + offset[c];
            }
        }
    }
    let mut pixels = gaussian_blur(&pixels, w, h, blur_sigma);
    for (k, v) in pixels.iter_mut().enumerate() {
        *v += noise_sigma * unit_gaussian(noise_seed, k as u64);
    }
    pixels.iter().map(|&v| v.round().clamp(0.0, 255.0) as u8).collect()
}

/// A background of two colours mixed by smooth value noise of three octaves.
struct Texture {
    a: [f32; 3],
    b: [f32; 3],
    /// Largest lattice cell, pixels.
    cell: f32,
    seed: u64,
}

impl Texture {
    fn sample(rng: &mut ChaCha8Rng) -> Texture {
        // Muted colours (channel spread up to about 70), darker or lighter than the objects.
        let colour = |rng: &mut ChaCha8Rng| {
            let grey: f32 = rng.gen_range(50.0..200.0);
            std::array::from_fn(|_| (grey + rng.gen_range(-35.0..35.0)).clamp(0.0, 255.0))
        };
        Texture { a: colour(rng), b: colour(rng), cell: rng.gen_range(10.0..40.0), seed: rng.gen() }
    }

    fn colour(&self, x: usize, y: usize) -> [f32; 3] {
        let (mut t, mut weight, mut cell) = (0.0, 0.0, self.cell);
        for (octave, amplitude) in [1.0f32, 0.5, 0.25].into_iter().enumerate() {
            t += amplitude * value_noise(self.seed.wrapping_add(octave as u64), x as f32 / cell, y as f32 / cell);
            weight += amplitude;
            cell /= 2.5;
        }
        let t = t / weight;
        std::array::from_fn(|c| self.a[c] + t * (self.b[c] - self.a[c]))
    }
}

/// Light falling off linearly across the picture along a direction.
struct Lighting {
    dx: f32,
    dy: f32,
    strength: f32,
}

impl Lighting {
    fn sample(rng: &mut ChaCha8Rng) -> Lighting {
        let angle: f32 = rng.gen_range(0.0..std::f32::consts::TAU);
        Lighting { dx: angle.cos(), dy: angle.sin(), strength: rng.gen_range(0.0..0.35) }
    }

    /// Brightness factor at (u, v) in [0, 1]²: 1 at the centre, 1 ± strength/2 at the edges.
    fn factor(&self, u: f32, v: f32) -> f32 {
        1.0 + self.strength * ((u - 0.5) * self.dx + (v - 0.5) * self.dy)
    }
}

/// Smooth noise in [0, 1]: random values on the integer lattice, smoothstep-interpolated.
fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let lattice = |i: f32, j: f32| {
        let key = ((i as i64 as u64) << 32) ^ (j as i64 as u64 & 0xffff_ffff);
        (splitmix64(seed ^ splitmix64(key)) >> 40) as f32 / (1u64 << 24) as f32
    };
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    let (sx, sy) = (smooth(fx), smooth(fy));
    let top = lattice(x0, y0) * (1.0 - sx) + lattice(x0 + 1.0, y0) * sx;
    let bottom = lattice(x0, y0 + 1.0) * (1.0 - sx) + lattice(x0 + 1.0, y0 + 1.0) * sx;
    top * (1.0 - sy) + bottom * sy
}

/// An approximately standard normal number for (seed, k): the sum of four uniforms, scaled.
fn unit_gaussian(seed: u64, k: u64) -> f32 {
    let mut sum = 0.0;
    for part in 0..4u64 {
        sum += (splitmix64(seed ^ splitmix64(k * 4 + part)) >> 40) as f32 / (1u64 << 24) as f32;
    }
    // Four uniforms on [0, 1): mean 2, variance 4/12.
    (sum - 2.0) * (3.0f32).sqrt()
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Separable Gaussian blur of interleaved RGB, edges clamped.
fn gaussian_blur(pixels: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius).map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let pass = |src: &[f32], horizontal: bool| {
        let mut out = vec![0f32; src.len()];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let mut acc = 0.0;
                    for (k, d) in kernel.iter().zip(-radius..=radius) {
                        let (sx, sy) = if horizontal {
                            ((x as isize + d).clamp(0, w as isize - 1) as usize, y)
                        } else {
                            (x, (y as isize + d).clamp(0, h as isize - 1) as usize)
                        };
                        acc += k * src[3 * (sy * w + sx) + c];
                    }
                    out[3 * (y * w + x) + c] = acc;
                }
            }
        }
        out
    };
    pass(&pass(pixels, true), false)
}

fn encode_jpeg(rgb: &[u8], w: usize, h: usize, quality: u8) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::input(format!("cannot encode a {w}x{h} JPEG: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for name in Style::NAMES {
            assert_eq!(Style::parse(name).unwrap().name(), name);
        }
        let e = Style::parse("sepia").unwrap_err().to_string();
        assert!(e.contains("sepia") && e.contains("plain, photo"), "{e}");
    }

    #[test]
    fn photo_sizes_are_non_square_with_the_long_side_asked() {
        use rand::SeedableRng;
        let (mut scene, mut look) = (ChaCha8Rng::seed_from_u64(1), ChaCha8Rng::seed_from_u64(2));
        let mut portrait = 0;
        for _ in 0..60 {
            let (w, h) = Style::Photo.picture_size(ImageSize::Fixed { width: 160, height: 160 }, &mut scene, &mut look);
            assert_eq!(w.max(h), 160);
            assert!(w.min(h) < 160 && w.min(h) >= MIN_SIDE, "{w}x{h}");
            portrait += usize::from(h > w);
        }
        assert!((5..55).contains(&portrait), "{portrait} portraits of 60");
    }

    #[test]
    fn the_blur_keeps_a_flat_picture_flat() {
        let flat = vec![100.0f32; 5 * 4 * 3];
        assert!(gaussian_blur(&flat, 5, 4, 1.2).iter().all(|v| (v - 100.0).abs() < 1e-3));
    }
}
