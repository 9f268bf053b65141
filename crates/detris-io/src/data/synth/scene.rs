//! Synthetic scenes: a few flat-coloured shapes on a low-saturation background,
//! drawn back to front, with the visible pixels of every shape as its mask.
//!
//! Shape colours are saturated (channel spread ≥ 100) and backgrounds are not
//! (spread ≤ 24), so every pixel belongs unambiguously to a shape or to the
//! background, and the masks are exact.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// The shapes; each is one COCO category of the synthetic data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Diamond,
    Ring,
}

impl Shape {
    pub const ALL: [Shape; 6] =
        [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star, Shape::Diamond, Shape::Ring];

    /// The noun used in expressions.
    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Diamond => "diamond",
            Shape::Ring => "ring",
        }
    }

    /// COCO category id: 1..=6, which the official 80-class table maps to 0..=5.
    pub fn category_id(self) -> i64 {
        Shape::ALL.iter().position(|&s| s == self).unwrap() as i64 + 1
    }

    /// The shape whose category id this is.
    pub fn from_category_id(id: i64) -> Option<Shape> {
        usize::try_from(id - 1).ok().and_then(|i| Shape::ALL.get(i).copied())
    }

    /// Largest distance from the centre to the outline, for a shape whose area
    /// is that of a circle of radius `radius`.
    fn extent(self, radius: f64) -> f64 {
        let g = Geometry::new(self, radius);
        match self {
            Shape::Circle => g.a,
            Shape::Square => g.a * std::f64::consts::SQRT_2,
            Shape::Triangle | Shape::Star | Shape::Ring => g.a,
            Shape::Diamond => g.b,
        }
    }
}

/// The shape colours, each with a base RGB value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Colour {
    pub const ALL: [Colour; 6] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Purple, Colour::Orange];

    /// The adjective used in expressions.
    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
        }
    }

    /// Base RGB value; each object jitters it by at most ±`COLOUR_JITTER` per channel.
    pub fn base_rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [222, 46, 46],
            Colour::Green => [52, 180, 60],
            Colour::Blue => [50, 84, 222],
            Colour::Yellow => [234, 214, 44],
            Colour::Purple => [156, 62, 196],
            Colour::Orange => [244, 140, 30],
        }
    }

    /// The colour whose base value is nearest to `rgb`, if `rgb` is saturated
    /// enough to be a shape pixel at all.
    pub fn classify(rgb: [u8; 3]) -> Option<Colour> {
        let spread = rgb.iter().max().unwrap() - rgb.iter().min().unwrap();
        if spread < 60 {
            return None;
        }
        let distance =
            |c: Colour| -> i32 { c.base_rgb().iter().zip(rgb).map(|(&a, b)| (a as i32 - b as i32).pow(2)).sum() };
        Colour::ALL.into_iter().min_by_key(|&c| distance(c))
    }
}

/// Maximum per-channel deviation of an object's colour from its base colour.
pub const COLOUR_JITTER: i32 = 10;

/// Size class of an object, by area; classes are far enough apart (area ratio
/// ≥ 1.5 between neighbours) to be told apart by eye.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SizeClass {
    Small,
    Medium,
    Big,
}

impl SizeClass {
    /// Range of the equivalent radius (√(area/π)) as a fraction of the image's
    /// shorter side.
    fn radius_range(self) -> (f64, f64) {
        match self {
            SizeClass::Small => (0.055, 0.075),
            SizeClass::Medium => (0.095, 0.112),
            SizeClass::Big => (0.14, 0.165),
        }
    }
}

/// One shape in a scene. Coordinates are in pixels with (0,0) the top-left
/// corner of the image (pixel (x,y) is the square [x,x+1)×[y,y+1)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: SizeClass,
    /// Centre, on a 1/4-pixel grid (exact in JSON).
    pub cx: f64,
    pub cy: f64,
    /// Equivalent radius: the shape's area is π·radius². On a 1/8-pixel grid.
    pub radius: f64,
    pub rgb: [u8; 3],
}

impl Object {
    /// Nominal area in pixels (before occlusion).
    pub fn area(&self) -> f64 {
        PI * self.radius * self.radius
    }

    fn extent(&self) -> f64 {
        self.shape.extent(self.radius)
    }

    /// Whether the point (x, y) lies inside the shape.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        self.outline().contains(x, y)
    }

    /// The shape's outline, with its geometry worked out once for many point tests.
    fn outline(&self) -> Outline {
        let g = Geometry::new(self.shape, self.radius);
        let polygon = match self.shape {
            Shape::Triangle => regular_star(3, g.a, g.a),
            Shape::Star => regular_star(5, g.a, g.b),
            _ => Vec::new(),
        };
        Outline { shape: self.shape, cx: self.cx, cy: self.cy, g, polygon, extent: self.extent() }
    }
}

/// An object's outline, ready for point tests.
struct Outline {
    shape: Shape,
    cx: f64,
    cy: f64,
    g: Geometry,
    polygon: Vec<(f64, f64)>,
    extent: f64,
}

impl Outline {
    fn contains(&self, x: f64, y: f64) -> bool {
        let g = &self.g;
        let (dx, dy) = (x - self.cx, y - self.cy);
        match self.shape {
            Shape::Circle => dx * dx + dy * dy <= g.a * g.a,
            Shape::Square => dx.abs() <= g.a && dy.abs() <= g.a,
            Shape::Diamond => dx.abs() / g.a + dy.abs() / g.b <= 1.0,
            Shape::Ring => {
                let d2 = dx * dx + dy * dy;
                d2 <= g.a * g.a && d2 >= g.b * g.b
            }
            Shape::Triangle | Shape::Star => inside_polygon(dx, dy, &self.polygon),
        }
    }

    /// Pixel bounding box [x0, x1) × [y0, y1) that holds every pixel centre inside the shape.
    fn pixel_box(&self, width: usize, height: usize) -> PixelBox {
        let e = self.extent;
        let clamp = |v: f64, hi: usize| v.max(0.0).min(hi as f64) as usize;
        PixelBox {
            x0: clamp((self.cx - e - 1.0).floor(), width),
            x1: clamp((self.cx + e + 1.0).ceil(), width),
            y0: clamp((self.cy - e - 1.0).floor(), height),
            y1: clamp((self.cy + e + 1.0).ceil(), height),
        }
    }
}

#[derive(Clone, Copy)]
struct PixelBox {
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
}

impl PixelBox {
    fn overlaps(&self, other: &PixelBox) -> bool {
        self.x0 < other.x1 && other.x0 < self.x1 && self.y0 < other.y1 && other.y0 < self.y1
    }

    fn pixels(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (self.y0..self.y1).flat_map(move |y| (self.x0..self.x1).map(move |x| (x, y)))
    }
}

/// Shape parameters for a given equivalent radius ρ (area = πρ²):
/// circle a = radius; square a = half side; diamond a, b = half diagonals
/// (b = 1.3a); ring a, b = outer, inner radius (b = 0.55a); triangle a =
/// circumradius; star a, b = outer, inner radius (b = 0.5a).
struct Geometry {
    a: f64,
    b: f64,
}

impl Geometry {
    fn new(shape: Shape, rho: f64) -> Self {
        let area = PI * rho * rho;
        match shape {
            Shape::Circle => Geometry { a: rho, b: 0.0 },
            Shape::Square => Geometry { a: area.sqrt() / 2.0, b: 0.0 },
            Shape::Diamond => {
                let a = (area / 2.6).sqrt();
                Geometry { a, b: 1.3 * a }
            }
            Shape::Ring => {
                let a = rho / (1.0f64 - 0.55 * 0.55).sqrt();
                Geometry { a, b: 0.55 * a }
            }
            // Equilateral triangle: area = (3√3/4)·R².
            Shape::Triangle => Geometry { a: (area / (0.75 * 3f64.sqrt())).sqrt(), b: 0.0 },
            // 10-gon alternating R and R/2: area = 5·R·(R/2)·sin 36°.
            Shape::Star => {
                let a = (area / (2.5 * (PI / 5.0).sin())).sqrt();
                Geometry { a, b: 0.5 * a }
            }
        }
    }
}

/// Vertices of an upright star polygon with `points` tips at radius `outer`
/// and notches at radius `inner` (inner == outer gives a regular polygon
/// with `points` vertices). The first tip points up (negative y).
fn regular_star(points: usize, outer: f64, inner: f64) -> Vec<(f64, f64)> {
    let step = PI / points as f64;
    let corners = if inner == outer { points } else { 2 * points };
    let step = if inner == outer { 2.0 * step } else { step };
    (0..corners)
        .map(|k| {
            let r = if inner != outer && k % 2 == 1 { inner } else { outer };
            let angle = -PI / 2.0 + step * k as f64;
            (r * angle.cos(), r * angle.sin())
        })
        .collect()
}

/// Even-odd crossing test.
fn inside_polygon(x: f64, y: f64, vertices: &[(f64, f64)]) -> bool {
    let mut inside = false;
    let mut j = vertices.len() - 1;
    for i in 0..vertices.len() {
        let (xi, yi) = vertices[i];
        let (xj, yj) = vertices[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// How the background is painted. All its colours are low-saturation greys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Background {
    Solid {
        rgb: [u8; 3],
    },
    /// Linear gradient from `from` to `to` along the direction `angle` (radians).
    Gradient {
        from: [u8; 3],
        to: [u8; 3],
        angle: f64,
    },
    /// Grey-level noise (the same offset on all channels) around `base`.
    Noise {
        base: [u8; 3],
        amplitude: u8,
        seed: u64,
    },
    /// Stripes of `period` pixels alternating `a` and `b`, across `angle`.
    Stripes {
        a: [u8; 3],
        b: [u8; 3],
        period: f64,
        angle: f64,
    },
}

impl Background {
    fn sample(rng: &mut impl Rng) -> Self {
        match rng.gen_range(0..4) {
            0 => Background::Solid { rgb: grey(rng) },
            1 => Background::Gradient { from: grey(rng), to: grey(rng), angle: angle(rng) },
            2 => Background::Noise { base: grey(rng), amplitude: rng.gen_range(8..=24), seed: rng.gen() },
            _ => Background::Stripes {
                a: grey(rng),
                b: grey(rng),
                period: rng.gen_range(6..=24) as f64,
                angle: angle(rng),
            },
        }
    }

    fn pixel(&self, x: usize, y: usize, width: usize, height: usize) -> [u8; 3] {
        let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
        match self {
            Background::Solid { rgb } => *rgb,
            Background::Gradient { from, to, angle } => {
                // Project onto the direction, normalised to [0, 1] over the image.
                let (c, s) = (angle.cos(), angle.sin());
                let corners = [(0.0, 0.0), (width as f64, 0.0), (0.0, height as f64), (width as f64, height as f64)];
                let proj = |(u, v): (f64, f64)| u * c + v * s;
                let lo = corners.iter().map(|&p| proj(p)).fold(f64::INFINITY, f64::min);
                let hi = corners.iter().map(|&p| proj(p)).fold(f64::NEG_INFINITY, f64::max);
                let t = (proj((px, py)) - lo) / (hi - lo);
                std::array::from_fn(|k| (from[k] as f64 + t * (to[k] as f64 - from[k] as f64)).round() as u8)
            }
            Background::Noise { base, amplitude, seed } => {
                let h = splitmix64(seed ^ splitmix64((y as u64) << 32 | x as u64));
                let offset = (h % (2 * *amplitude as u64 + 1)) as i32 - *amplitude as i32;
                base.map(|v| (v as i32 + offset).clamp(0, 255) as u8)
            }
            Background::Stripes { a, b, period, angle } => {
                let t = px * angle.cos() + py * angle.sin();
                if (t / period).floor().rem_euclid(2.0) == 0.0 {
                    *a
                } else {
                    *b
                }
            }
        }
    }
}

/// A low-saturation colour: a grey in [60, 190] tinted by at most ±12 per channel.
fn grey(rng: &mut impl Rng) -> [u8; 3] {
    let g: i32 = rng.gen_range(60..=190);
    std::array::from_fn(|_| (g + rng.gen_range(-12..=12)) as u8)
}

fn angle(rng: &mut impl Rng) -> f64 {
    rng.gen_range(0..16) as f64 * PI / 8.0
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A scene: image size, background and objects in drawing order (later ones
/// on top).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub width: usize,
    pub height: usize,
    pub background: Background,
    pub objects: Vec<Object>,
}

/// Minimum share of an object's own pixels that must stay visible.
const MIN_VISIBLE_SHARE: f64 = 0.6;
/// Minimum number of visible pixels per object.
const MIN_VISIBLE_PIXELS: usize = 16;
/// Chance that a new object copies the colour (or shape) of an earlier one;
/// makes scenes where colour or shape alone does not identify the object.
const REUSE_ATTRIBUTE: f64 = 0.45;

impl Scene {
    /// Samples a scene with 2–6 objects. The caller's `rng` alone decides it.
    pub fn sample(rng: &mut impl Rng, width: usize, height: usize) -> Scene {
        loop {
            let background = Background::sample(rng);
            let wanted = rng.gen_range(2..=6);
            let mut scene = Scene { width, height, background, objects: Vec::new() };
            for _ in 0..wanted {
                for _attempt in 0..40 {
                    let candidate = scene.sample_object(rng);
                    if scene.accepts(&candidate) {
                        scene.objects.push(candidate);
                        break;
                    }
                }
            }
            if scene.objects.len() >= 2 {
                return scene;
            }
        }
    }

    fn sample_object(&self, rng: &mut impl Rng) -> Object {
        let reuse = |rng: &mut dyn rand::RngCore| !self.objects.is_empty() && rng.gen_bool(REUSE_ATTRIBUTE);
        let shape = if reuse(rng) { self.objects.choose(rng).unwrap().shape } else { *Shape::ALL.choose(rng).unwrap() };
        let colour =
            if reuse(rng) { self.objects.choose(rng).unwrap().colour } else { *Colour::ALL.choose(rng).unwrap() };
        let size = *[SizeClass::Small, SizeClass::Medium, SizeClass::Big].choose(rng).unwrap();
        let short_side = self.width.min(self.height) as f64;
        let (lo, hi) = size.radius_range();
        let radius =
            rng.gen_range((lo * short_side * 8.0).ceil() as i64..=(hi * short_side * 8.0).floor() as i64) as f64 / 8.0;
        let extent = shape.extent(radius);
        // Keep the whole shape in the frame: centres on a 1/4-pixel grid.
        let centre = |rng: &mut dyn rand::RngCore, side: usize| {
            let lo = (extent * 4.0).ceil() as i64;
            let hi = (((side as f64 - extent) * 4.0).floor() as i64).max(lo);
            rng.gen_range(lo..=hi) as f64 / 4.0
        };
        let cx = centre(rng, self.width);
        let cy = centre(rng, self.height);
        let base = colour.base_rgb();
        let rgb = base.map(|v| (v as i32 + rng.gen_range(-COLOUR_JITTER..=COLOUR_JITTER)) as u8);
        Object { shape, colour, size, cx, cy, radius, rgb }
    }

    /// Whether `candidate` can be drawn on top: objects of one colour must not
    /// touch (they would merge into one blob), and every object must keep
    /// enough of itself visible.
    fn accepts(&self, candidate: &Object) -> bool {
        let apart = |a: &Object, b: &Object| {
            let d = ((a.cx - b.cx).powi(2) + (a.cy - b.cy).powi(2)).sqrt();
            d >= a.extent() + b.extent() + 3.0
        };
        if self.objects.iter().any(|o| o.colour == candidate.colour && !apart(o, candidate)) {
            return false;
        }
        // Only the candidate (drawn on top, fully visible unless cut by the
        // frame) and the objects its box overlaps can change visibility.
        let mut trial = self.clone();
        trial.objects.push(candidate.clone());
        let outlines: Vec<Outline> = trial.objects.iter().map(Object::outline).collect();
        let last = outlines.len() - 1;
        let candidate_box = outlines[last].pixel_box(self.width, self.height);
        (0..outlines.len())
            .filter(|&i| i == last || outlines[i].pixel_box(self.width, self.height).overlaps(&candidate_box))
            .all(|i| {
                let (own, visible) = trial.pixel_counts(&outlines, i);
                visible >= MIN_VISIBLE_PIXELS && visible as f64 >= MIN_VISIBLE_SHARE * own as f64
            })
    }

    /// (pixels inside object `i`, of those the ones no later object covers).
    fn pixel_counts(&self, outlines: &[Outline], i: usize) -> (usize, usize) {
        let (mut own, mut visible) = (0, 0);
        for (x, y) in outlines[i].pixel_box(self.width, self.height).pixels() {
            let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
            if outlines[i].contains(px, py) {
                own += 1;
                if !outlines[i + 1..].iter().any(|o| o.contains(px, py)) {
                    visible += 1;
                }
            }
        }
        (own, visible)
    }

    /// Draws the scene: RGB bytes (row-major, HWC) and, per pixel, the index
    /// of the object seen there (`None` = background).
    pub fn render(&self) -> Rendered {
        let (w, h) = (self.width, self.height);
        let mut owner = vec![None; w * h];
        for (i, outline) in self.objects.iter().map(Object::outline).enumerate() {
            for (x, y) in outline.pixel_box(w, h).pixels() {
                if outline.contains(x as f64 + 0.5, y as f64 + 0.5) {
                    owner[y * w + x] = Some(i);
                }
            }
        }
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let pixel = match owner[y * w + x] {
                    Some(i) => self.objects[i].rgb,
                    None => self.background.pixel(x, y, w, h),
                };
                rgb.extend(pixel);
            }
        }
        Rendered { width: w, height: h, rgb, owner }
    }
}

/// A drawn scene.
pub struct Rendered {
    pub width: usize,
    pub height: usize,
    /// Row-major RGB, 3 bytes per pixel.
    pub rgb: Vec<u8>,
    /// Row-major index of the visible object per pixel.
    pub owner: Vec<Option<usize>>,
}

impl Rendered {
    /// Row-major 0/1 mask of the visible pixels of object `i`.
    pub fn mask(&self, i: usize) -> Vec<u8> {
        self.owner.iter().map(|&o| u8::from(o == Some(i))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn shapes_have_the_nominal_area() {
        for shape in Shape::ALL {
            let object = Object {
                shape,
                colour: Colour::Red,
                size: SizeClass::Big,
                cx: 200.0,
                cy: 200.0,
                radius: 80.0,
                rgb: [0; 3],
            };
            let scene = Scene {
                width: 400,
                height: 400,
                background: Background::Solid { rgb: [0; 3] },
                objects: vec![object.clone()],
            };
            let (own, visible) = scene.pixel_counts(&[object.outline()], 0);
            assert_eq!(own, visible);
            let ratio = own as f64 / object.area();
            assert!((ratio - 1.0).abs() < 0.02, "{shape:?}: {own} pixels vs area {}", object.area());
        }
    }

    #[test]
    fn backgrounds_are_never_classified_as_a_shape_colour() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..40 {
            let background = Background::sample(&mut rng);
            for (x, y) in [(0, 0), (13, 57), (63, 63), (31, 2)] {
                assert_eq!(Colour::classify(background.pixel(x, y, 64, 64)), None, "{background:?}");
            }
        }
    }

    #[test]
    fn object_colours_classify_as_their_colour() {
        for colour in Colour::ALL {
            for d in [-COLOUR_JITTER, COLOUR_JITTER] {
                let rgb = colour.base_rgb().map(|v| (v as i32 + d) as u8);
                assert_eq!(Colour::classify(rgb), Some(colour));
            }
        }
    }

    #[test]
    fn sampled_scenes_keep_every_object_visible() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let scene = Scene::sample(&mut rng, 96, 80);
            assert!((2..=6).contains(&scene.objects.len()));
            let rendered = scene.render();
            for i in 0..scene.objects.len() {
                let visible: usize = rendered.mask(i).iter().map(|&v| v as usize).sum();
                let outlines: Vec<Outline> = scene.objects.iter().map(Object::outline).collect();
                assert_eq!(visible, scene.pixel_counts(&outlines, i).1);
                assert!(visible >= MIN_VISIBLE_PIXELS);
            }
        }
    }
}
