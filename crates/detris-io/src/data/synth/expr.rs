//! Referring expressions over synthetic scenes: a small grammar, its text
//! form (and a parser back), and the checker that decides which object an
//! expression names. An expression is only ever used when the checker finds
//! that it names exactly one object, with clear margins.

use super::scene::{Colour, Object, Scene, Shape, SizeClass};
use rand::seq::SliceRandom;
use rand::Rng;

/// Every word an expression can contain. Fixed, so that a model trained on
/// synthetic data only needs these words of the CLIP vocabulary. Each is one
/// CLIP BPE token except leftmost/rightmost/topmost/bottommost (two: the
/// stem and `most</w>`); the longest sentences (relations, 10 words) take 12
/// ids with SOT and EOT.
pub const VOCABULARY: &[&str] = &[
    "the",
    "shape",
    "circle",
    "square",
    "triangle",
    "star",
    "diamond",
    "ring",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "small",
    "big",
    "biggest",
    "smallest",
    "leftmost",
    "rightmost",
    "topmost",
    "bottommost",
    "second",
    "third",
    "from",
    "left",
    "right",
    "top",
    "bottom",
    "middle",
    "on",
    "at",
    "in",
    "of",
    "above",
    "below",
    "closest",
    "to",
];

/// Size adjective: names the object's size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SizeWord {
    Small,
    Big,
}

/// A noun phrase without article: `[small|big] [colour] (shape noun | "shape")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Description {
    pub size: Option<SizeWord>,
    pub colour: Option<Colour>,
    pub shape: Option<Shape>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extreme {
    Biggest,
    Smallest,
}

/// Direction an ordinal counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
    Top,
    Bottom,
}

/// Absolute position in the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Left,
    Right,
    Top,
    Bottom,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Middle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

/// A referring expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expression {
    /// "the small red circle"
    Plain(Description),
    /// "the biggest green shape"
    Extreme(Extreme, Description),
    /// "the leftmost star", "the second triangle from the left" (nth is 1-based, ≤ 3)
    Ordinal { nth: usize, side: Side, desc: Description },
    /// "the shape at the top right"
    Region(Region, Description),
    /// "the small red circle left of the blue square"
    Relation { relation: Relation, desc: Description, landmark: Description },
    /// "the circle closest to the red star"
    Closest { desc: Description, landmark: Description },
}

/// The kinds of expression, for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Plain,
    Extreme,
    Ordinal,
    Region,
    Relation,
    Closest,
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::Plain, Kind::Extreme, Kind::Ordinal, Kind::Region, Kind::Relation, Kind::Closest];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Plain => "attributes",
            Kind::Extreme => "superlative size",
            Kind::Ordinal => "ordinal position",
            Kind::Region => "absolute position",
            Kind::Relation => "relation",
            Kind::Closest => "closest to",
        }
    }
}

/// Positions closer than this share of the image's shorter side are not told apart.
const POSITION_MARGIN: f64 = 0.08;
/// "biggest"/"smallest" need this area ratio to every other candidate.
const SIZE_RATIO: f64 = 1.5;
/// "closest" needs every other candidate this many times farther away.
const DISTANCE_RATIO: f64 = 1.5;

impl Description {
    fn matches(&self, object: &Object) -> bool {
        let size_ok = match self.size {
            None => true,
            Some(SizeWord::Small) => object.size == SizeClass::Small,
            Some(SizeWord::Big) => object.size == SizeClass::Big,
        };
        size_ok && self.colour.is_none_or(|c| c == object.colour) && self.shape.is_none_or(|s| s == object.shape)
    }

    /// Objects (indices, drawing order) that fit the description, except `excluded`.
    /// Size classes are ≥ 1.5× apart in area, so "small"/"big" read as
    /// classes and as comparisons alike.
    fn select(&self, scene: &Scene, excluded: Option<usize>) -> Vec<usize> {
        (0..scene.objects.len()).filter(|&i| Some(i) != excluded && self.matches(&scene.objects[i])).collect()
    }

    fn words(&self) -> Vec<&'static str> {
        let mut words = Vec::new();
        match self.size {
            Some(SizeWord::Small) => words.push("small"),
            Some(SizeWord::Big) => words.push("big"),
            None => {}
        }
        words.extend(self.colour.map(Colour::word));
        words.push(self.shape.map_or("shape", Shape::word));
        words
    }

    /// Every description that fits `object`: each subset of its size word
    /// (small and big only), colour and shape.
    fn all_for(object: &Object) -> Vec<Description> {
        let size_word = match object.size {
            SizeClass::Small => Some(SizeWord::Small),
            SizeClass::Big => Some(SizeWord::Big),
            SizeClass::Medium => None,
        };
        let mut out = Vec::new();
        // A set: medium objects have no size word, so [None, None] → {None}.
        for size in [None, size_word].into_iter().collect::<std::collections::BTreeSet<_>>() {
            for colour in [None, Some(object.colour)] {
                for shape in [None, Some(object.shape)] {
                    out.push(Description { size, colour, shape });
                }
            }
        }
        out
    }

    /// Parses a description at the start of `words`; returns it and the words used.
    fn parse(words: &[&str]) -> Option<(Description, usize)> {
        let mut at = 0;
        let size = match words.first() {
            Some(&"small") => Some(SizeWord::Small),
            Some(&"big") => Some(SizeWord::Big),
            _ => None,
        };
        at += usize::from(size.is_some());
        let colour = words.get(at).and_then(|w| Colour::ALL.into_iter().find(|c| c.word() == *w));
        at += usize::from(colour.is_some());
        let noun = *words.get(at)?;
        let shape = match noun {
            "shape" => None,
            _ => Some(Shape::ALL.into_iter().find(|s| s.word() == noun)?),
        };
        Some((Description { size, colour, shape }, at + 1))
    }
}

impl Expression {
    pub fn kind(&self) -> Kind {
        match self {
            Expression::Plain(_) => Kind::Plain,
            Expression::Extreme(..) => Kind::Extreme,
            Expression::Ordinal { .. } => Kind::Ordinal,
            Expression::Region(..) => Kind::Region,
            Expression::Relation { .. } => Kind::Relation,
            Expression::Closest { .. } => Kind::Closest,
        }
    }

    /// The object this expression names in `scene`, or `None` when it names
    /// no object, several, or one only by a narrow margin.
    pub fn resolve(&self, scene: &Scene) -> Option<usize> {
        let margin = POSITION_MARGIN * scene.width.min(scene.height) as f64;
        let objects = &scene.objects;
        match *self {
            Expression::Plain(desc) => single(desc.select(scene, None)),
            Expression::Extreme(extreme, desc) => {
                let group = desc.select(scene, None);
                let area = |i: usize| objects[i].area();
                let pick = |&i: &usize| {
                    group.iter().all(|&j| {
                        j == i
                            || match extreme {
                                Extreme::Biggest => area(i) >= SIZE_RATIO * area(j),
                                Extreme::Smallest => area(j) >= SIZE_RATIO * area(i),
                            }
                    })
                };
                (group.len() >= 2).then(|| single(group.iter().copied().filter(|i| pick(i)).collect())).flatten()
            }
            Expression::Ordinal { nth, side, desc } => {
                let mut group = desc.select(scene, None);
                let key = |i: usize| match side {
                    Side::Left => objects[i].cx,
                    Side::Right => -objects[i].cx,
                    Side::Top => objects[i].cy,
                    Side::Bottom => -objects[i].cy,
                };
                if group.len() < 2 || nth == 0 || nth > group.len() {
                    return None;
                }
                group.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
                let chosen = group[nth - 1];
                group.iter().all(|&j| j == chosen || (key(j) - key(chosen)).abs() >= margin).then_some(chosen)
            }
            Expression::Region(region, desc) => {
                let group = desc.select(scene, None);
                let (w, h) = (scene.width as f64, scene.height as f64);
                let mut inside = Vec::new();
                for &i in &group {
                    match region_membership(region, objects[i].cx, objects[i].cy, w, h, margin) {
                        Some(true) => inside.push(i),
                        Some(false) => {}
                        None => return None,
                    }
                }
                single(inside)
            }
            Expression::Relation { relation, desc, landmark } => {
                let l = Expression::Plain(landmark).resolve(scene)?;
                let (lx, ly) = (objects[l].cx, objects[l].cy);
                // How far an object stands in the relation's direction from the landmark.
                let lead = |i: usize| match relation {
                    Relation::LeftOf => lx - objects[i].cx,
                    Relation::RightOf => objects[i].cx - lx,
                    Relation::Above => ly - objects[i].cy,
                    Relation::Below => objects[i].cy - ly,
                };
                let mut inside = Vec::new();
                for i in desc.select(scene, Some(l)) {
                    if lead(i) >= margin {
                        inside.push(i);
                    } else if lead(i) > 0.0 {
                        return None; // only just in the relation: unclear
                    }
                }
                single(inside)
            }
            Expression::Closest { desc, landmark } => {
                let l = Expression::Plain(landmark).resolve(scene)?;
                let distance = |i: usize| (objects[i].cx - objects[l].cx).hypot(objects[i].cy - objects[l].cy);
                let mut group = desc.select(scene, Some(l));
                if group.len() < 2 {
                    return None;
                }
                group.sort_by(|&a, &b| distance(a).total_cmp(&distance(b)));
                let (near, next) = (distance(group[0]), distance(group[1]));
                (next >= DISTANCE_RATIO * near && next - near >= margin).then_some(group[0])
            }
        }
    }

    /// Whether the description alone does not single the object out, so the
    /// rest of the expression (position, size, relation) is needed.
    pub fn needs_context(&self, scene: &Scene) -> bool {
        match *self {
            Expression::Plain(_) => false,
            Expression::Extreme(_, desc)
            | Expression::Ordinal { desc, .. }
            | Expression::Region(_, desc)
            | Expression::Relation { desc, .. }
            | Expression::Closest { desc, .. } => desc.select(scene, None).len() > 1,
        }
    }

    /// The sentence, lower case, words separated by single spaces.
    pub fn text(&self) -> String {
        self.words().join(" ")
    }

    fn words(&self) -> Vec<&'static str> {
        let mut words = vec!["the"];
        match *self {
            Expression::Plain(desc) => words.extend(desc.words()),
            Expression::Extreme(extreme, desc) => {
                words.push(match extreme {
                    Extreme::Biggest => "biggest",
                    Extreme::Smallest => "smallest",
                });
                words.extend(desc.words());
            }
            Expression::Ordinal { nth: 1, side, desc } => {
                words.push(match side {
                    Side::Left => "leftmost",
                    Side::Right => "rightmost",
                    Side::Top => "topmost",
                    Side::Bottom => "bottommost",
                });
                words.extend(desc.words());
            }
            Expression::Ordinal { nth, side, desc } => {
                words.push(if nth == 2 { "second" } else { "third" });
                words.extend(desc.words());
                words.extend(["from", "the", side_word(side)]);
            }
            Expression::Region(region, desc) => {
                words.extend(desc.words());
                words.extend(region_words(region));
            }
            Expression::Relation { relation, desc, landmark } => {
                words.extend(desc.words());
                words.extend(match relation {
                    Relation::LeftOf => &["left", "of"][..],
                    Relation::RightOf => &["right", "of"],
                    Relation::Above => &["above"],
                    Relation::Below => &["below"],
                });
                words.push("the");
                words.extend(landmark.words());
            }
            Expression::Closest { desc, landmark } => {
                words.extend(desc.words());
                words.extend(["closest", "to", "the"]);
                words.extend(landmark.words());
            }
        }
        words
    }

    /// Reads back a sentence written by [`Expression::text`].
    pub fn parse(text: &str) -> Option<Expression> {
        let words: Vec<&str> = text.split(' ').collect();
        let rest = words.strip_prefix(&["the"])?;
        let (prefix, rest) = match rest.first().copied() {
            Some(
                w @ ("biggest" | "smallest" | "leftmost" | "rightmost" | "topmost" | "bottommost" | "second" | "third"),
            ) => (Some(w), &rest[1..]),
            _ => (None, rest),
        };
        let (desc, used) = Description::parse(rest)?;
        let tail = &rest[used..];
        let side =
            |w: &str| [Side::Left, Side::Right, Side::Top, Side::Bottom].into_iter().find(|&s| side_word(s) == w);
        let expression = match (prefix, tail) {
            (None, []) => Expression::Plain(desc),
            (Some("biggest"), []) if desc.size.is_none() => Expression::Extreme(Extreme::Biggest, desc),
            (Some("smallest"), []) if desc.size.is_none() => Expression::Extreme(Extreme::Smallest, desc),
            (Some("leftmost"), []) => Expression::Ordinal { nth: 1, side: Side::Left, desc },
            (Some("rightmost"), []) => Expression::Ordinal { nth: 1, side: Side::Right, desc },
            (Some("topmost"), []) => Expression::Ordinal { nth: 1, side: Side::Top, desc },
            (Some("bottommost"), []) => Expression::Ordinal { nth: 1, side: Side::Bottom, desc },
            (Some(ordinal @ ("second" | "third")), ["from", "the", s]) => {
                Expression::Ordinal { nth: if ordinal == "second" { 2 } else { 3 }, side: side(s)?, desc }
            }
            (None, ["closest", "to", "the", landmark @ ..]) => Expression::Closest { desc, landmark: whole(landmark)? },
            (None, tail) => {
                let relation = match tail {
                    ["left", "of", "the", ..] => Some((Relation::LeftOf, 3)),
                    ["right", "of", "the", ..] => Some((Relation::RightOf, 3)),
                    ["above", "the", ..] => Some((Relation::Above, 2)),
                    ["below", "the", ..] => Some((Relation::Below, 2)),
                    _ => None,
                };
                match relation {
                    Some((relation, used)) => Expression::Relation { relation, desc, landmark: whole(&tail[used..])? },
                    None => Expression::Region(ALL_REGIONS.into_iter().find(|&r| region_words(r) == tail)?, desc),
                }
            }
            _ => return None,
        };
        // Only the grammar's own sentences: e.g. "biggest" never takes a size word.
        (expression.text() == text).then_some(expression)
    }
}

const ALL_REGIONS: [Region; 9] = [
    Region::Left,
    Region::Right,
    Region::Top,
    Region::Bottom,
    Region::TopLeft,
    Region::TopRight,
    Region::BottomLeft,
    Region::BottomRight,
    Region::Middle,
];

fn side_word(side: Side) -> &'static str {
    match side {
        Side::Left => "left",
        Side::Right => "right",
        Side::Top => "top",
        Side::Bottom => "bottom",
    }
}

fn region_words(region: Region) -> &'static [&'static str] {
    match region {
        Region::Left => &["on", "the", "left"],
        Region::Right => &["on", "the", "right"],
        Region::Top => &["at", "the", "top"],
        Region::Bottom => &["at", "the", "bottom"],
        Region::TopLeft => &["at", "the", "top", "left"],
        Region::TopRight => &["at", "the", "top", "right"],
        Region::BottomLeft => &["at", "the", "bottom", "left"],
        Region::BottomRight => &["at", "the", "bottom", "right"],
        Region::Middle => &["in", "the", "middle"],
    }
}

/// A description that uses all of `words`.
fn whole(words: &[&str]) -> Option<Description> {
    Description::parse(words).filter(|&(_, used)| used == words.len()).map(|(d, _)| d)
}

/// Whether a centre is clearly inside (`Some(true)`), clearly outside
/// (`Some(false)`) or too close to the border of a region to say (`None`).
fn region_membership(region: Region, cx: f64, cy: f64, w: f64, h: f64, margin: f64) -> Option<bool> {
    let half = |v: f64, mid: f64, low_side: bool| {
        let d = if low_side { mid - v } else { v - mid };
        if d >= margin {
            Some(true)
        } else if d <= -margin {
            Some(false)
        } else {
            None
        }
    };
    let (left, top) = (half(cx, w / 2.0, true), half(cy, h / 2.0, true));
    let not = |v: Option<bool>| v.map(|b| !b);
    let both = |a: Option<bool>, b: Option<bool>| match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    };
    match region {
        Region::Left => left,
        Region::Right => not(left),
        Region::Top => top,
        Region::Bottom => not(top),
        Region::TopLeft => both(top, left),
        Region::TopRight => both(top, not(left)),
        Region::BottomLeft => both(not(top), left),
        Region::BottomRight => both(not(top), not(left)),
        Region::Middle => {
            let (dx, dy) = ((cx - w / 2.0).abs() / w, (cy - h / 2.0).abs() / h);
            if dx <= 0.12 && dy <= 0.12 {
                Some(true)
            } else if dx >= 0.25 || dy >= 0.25 {
                Some(false)
            } else {
                None
            }
        }
    }
}

fn single(indices: Vec<usize>) -> Option<usize> {
    match indices[..] {
        [i] => Some(i),
        _ => None,
    }
}

/// Every expression of the grammar that names object `target` of `scene`.
pub fn candidates(scene: &Scene, target: usize) -> Vec<Expression> {
    let descs = Description::all_for(&scene.objects[target]);
    let mut all = Vec::new();
    for &desc in &descs {
        all.push(Expression::Plain(desc));
        if desc.size.is_none() {
            all.extend([Extreme::Biggest, Extreme::Smallest].map(|e| Expression::Extreme(e, desc)));
        }
        for side in [Side::Left, Side::Right, Side::Top, Side::Bottom] {
            all.extend((1..=3).map(|nth| Expression::Ordinal { nth, side, desc }));
        }
        all.extend(ALL_REGIONS.map(|region| Expression::Region(region, desc)));
        for (l, other) in scene.objects.iter().enumerate().filter(|&(l, _)| l != target) {
            for landmark in Description::all_for(other) {
                if Expression::Plain(landmark).resolve(scene) != Some(l) {
                    continue;
                }
                all.extend(
                    [Relation::LeftOf, Relation::RightOf, Relation::Above, Relation::Below]
                        .map(|relation| Expression::Relation { relation, desc, landmark }),
                );
                all.push(Expression::Closest { desc, landmark });
            }
        }
    }
    all.retain(|e| e.resolve(scene) == Some(target));
    all
}

/// Picks up to `count` expressions for `target`, each of a different kind.
/// Within a kind, expressions whose extra information is needed are
/// preferred, then short ones (one of the three shortest, at random).
pub fn choose(scene: &Scene, target: usize, count: usize, rng: &mut impl Rng) -> Vec<Expression> {
    let all = candidates(scene, target);
    let mut kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|&k| all.iter().any(|e| e.kind() == k)).collect();
    kinds.shuffle(rng);
    kinds
        .into_iter()
        .take(count)
        .map(|kind| {
            let mut pool: Vec<&Expression> = all.iter().filter(|e| e.kind() == kind).collect();
            if pool.iter().any(|e| e.needs_context(scene)) {
                pool.retain(|e| e.needs_context(scene));
            }
            pool.sort_by_key(|e| e.words().len());
            *pool[rng.gen_range(0..pool.len().min(3))]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::scene::Background;
    use super::*;

    fn object(shape: Shape, colour: Colour, size: SizeClass, cx: f64, cy: f64) -> Object {
        let radius = match size {
            SizeClass::Small => 6.0,
            SizeClass::Medium => 10.0,
            SizeClass::Big => 15.0,
        };
        Object { shape, colour, size, cx, cy, radius, rgb: colour.base_rgb() }
    }

    /// 100×100: a small red circle (left), a big blue square (middle), a
    /// medium red circle (right), a small green triangle (top right).
    fn scene() -> Scene {
        use Colour::*;
        use Shape::*;
        Scene {
            width: 100,
            height: 100,
            background: Background::Solid { rgb: [128; 3] },
            objects: vec![
                object(Circle, Red, SizeClass::Small, 15.0, 60.0),
                object(Square, Blue, SizeClass::Big, 50.0, 60.0),
                object(Circle, Red, SizeClass::Medium, 85.0, 60.0),
                object(Triangle, Green, SizeClass::Small, 85.0, 15.0),
            ],
        }
    }

    fn resolve(text: &str) -> Option<usize> {
        Expression::parse(text).unwrap_or_else(|| panic!("cannot parse {text:?}")).resolve(&scene())
    }

    #[test]
    fn the_checker_names_the_intended_object() {
        assert_eq!(resolve("the small red circle"), Some(0));
        assert_eq!(resolve("the red circle left of the blue square"), Some(0));
        assert_eq!(resolve("the red circle right of the square"), Some(2));
        assert_eq!(resolve("the biggest red shape"), Some(2));
        assert_eq!(resolve("the biggest shape"), Some(1));
        assert_eq!(resolve("the second red circle from the left"), Some(2));
        assert_eq!(resolve("the leftmost shape"), Some(0));
        assert_eq!(resolve("the shape at the top right"), Some(3));
        assert_eq!(resolve("the shape in the middle"), Some(1));
        assert_eq!(resolve("the second shape from the left"), Some(1));
        assert_eq!(resolve("the circle closest to the green triangle"), Some(2));
    }

    #[test]
    fn ambiguous_or_borderline_expressions_name_nothing() {
        assert_eq!(resolve("the red circle"), None, "two red circles");
        assert_eq!(resolve("the circle above the triangle"), None, "nothing above it");
        assert_eq!(resolve("the third shape from the left"), None, "two shapes share x = 85");
        assert_eq!(resolve("the shape on the right"), None, "the square stands on the midline");
        assert_eq!(resolve("the smallest shape"), None, "two small shapes");
        assert_eq!(resolve("the big red circle"), None, "no big red circle");
    }

    #[test]
    fn every_candidate_reads_back_and_uses_the_vocabulary() {
        let scene = scene();
        for target in 0..scene.objects.len() {
            let all = candidates(&scene, target);
            assert!(!all.is_empty());
            for expression in all {
                let text = expression.text();
                assert_eq!(Expression::parse(&text), Some(expression), "{text}");
                assert!(text.split(' ').all(|w| VOCABULARY.contains(&w)), "{text}");
            }
        }
    }

    #[test]
    fn the_parser_rejects_sentences_outside_the_grammar() {
        for text in [
            "red circle",
            "the biggest small circle",
            "the circle on the top",
            "the second circle",
            "the circle left of",
        ] {
            assert_eq!(Expression::parse(text), None, "{text}");
        }
    }
}
