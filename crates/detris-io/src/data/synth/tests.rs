//! Generates small data sets and checks the files themselves: determinism,
//! seed independence of the test split, exact masks, unambiguous sentences.

use super::expr::{Expression, VOCABULARY};
use super::scene::{Colour, Scene, Shape};
use super::*;
use serde_json::Value;
use std::collections::BTreeMap;

fn small_options(seed: u64) -> SynthOptions {
    SynthOptions {
        seed,
        test_seed: DEFAULT_TEST_SEED,
        train_images: 6,
        val_images: 2,
        test_images: 10,
        image_size: ImageSize::Varied { min: 64, max: 112 },
        max_refs_per_image: 3,
        sentences_per_ref: 3,
    }
}

/// Every file under `dir`, by relative path (the manifest writer's tests read trees too).
pub(super) fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// (width, height, row-major bytes) of an 8-bit PNG.
fn decode_png(path: &Path) -> (usize, usize, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

/// Row-major 0/1 mask from uncompressed column-major COCO counts.
fn decode_counts(counts: &[Value], w: usize, h: usize) -> Vec<u8> {
    let mut column_major = Vec::with_capacity(w * h);
    for (k, run) in counts.iter().enumerate() {
        column_major.extend(std::iter::repeat_n((k % 2) as u8, run.as_u64().unwrap() as usize));
    }
    assert_eq!(column_major.len(), w * h);
    (0..w * h).map(|i| column_major[(i % w) * h + i / w]).collect()
}

#[test]
fn same_seed_gives_byte_identical_files() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let report_a = generate(a.path(), &small_options(5)).unwrap();
    let report_b = generate(b.path(), &small_options(5)).unwrap();
    let (files_a, files_b) = (read_tree(a.path()), read_tree(b.path()));
    // 18 images, instances/refs/scenes, 3 split files and the masks.
    assert!(files_a.len() > 18 + 6, "{} files", files_a.len());
    assert_eq!(files_a, files_b);
    assert_eq!(report_a.splits, report_b.splits);
}

#[test]
fn the_test_split_does_not_depend_on_the_seed() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    generate(a.path(), &small_options(1)).unwrap();
    generate(b.path(), &small_options(2)).unwrap();
    let read = |dir: &Path, split: &str| std::fs::read(dir.join(format!("anns/synth/{split}.json"))).unwrap();
    assert_eq!(read(a.path(), "test"), read(b.path(), "test"));
    assert_ne!(read(a.path(), "train"), read(b.path(), "train"));
    // Test images come after the 8 train and val images.
    let image = |dir: &Path, id: usize| std::fs::read(dir.join(format!("images/train2014/synth_{id:06}.png"))).unwrap();
    assert!((9..=18).all(|id| image(a.path(), id) == image(b.path(), id)));
    assert!((1..=8).all(|id| image(a.path(), id) != image(b.path(), id)));
}

#[test]
fn bad_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = small_options(0);
    opts.image_size = ImageSize::Fixed { width: 32, height: 100 };
    assert!(generate(dir.path(), &opts).unwrap_err().to_string().contains("32"));
    let mut opts = small_options(0);
    (opts.train_images, opts.val_images, opts.test_images) = (0, 0, 0);
    assert!(generate(dir.path(), &opts).is_err());
}

/// Reads every generated file back and checks masks against pixels and
/// sentences against scenes.
#[test]
fn files_hold_exact_masks_and_unambiguous_sentences() {
    let dir = tempfile::tempdir().unwrap();
    let report = generate(dir.path(), &small_options(11)).unwrap();
    let root = dir.path();
    let instances = json(&root.join("synth/instances.json"));
    let scenes = json(&root.join("synth/scenes.json"));

    // Per image: scene and the exact mask of every annotation, checked against the pixels.
    // file name → (scene, mask per object, annotation id per object)
    type Picture = (Scene, Vec<Vec<u8>>, Vec<i64>);
    let mut images: BTreeMap<String, Picture> = BTreeMap::new();
    let annotations = instances["annotations"].as_array().unwrap();
    for (image, entry) in instances["images"].as_array().unwrap().iter().zip(scenes.as_array().unwrap()) {
        let name = image["file_name"].as_str().unwrap().to_string();
        assert_eq!(entry["file_name"].as_str().unwrap(), name);
        let scene: Scene = serde_json::from_value(entry["scene"].clone()).unwrap();
        let (w, h, rgb) = decode_png(&root.join("images/train2014").join(&name));
        assert_eq!((w, h), (scene.width, scene.height));
        assert_eq!((image["width"].as_u64(), image["height"].as_u64()), (Some(w as u64), Some(h as u64)));
        let anns: Vec<&Value> = annotations.iter().filter(|a| a["image_id"] == image["id"]).collect();
        assert_eq!(anns.len(), scene.objects.len());
        let mut covered = vec![0u8; w * h];
        let mut masks = Vec::new();
        for (ann, object) in anns.iter().zip(&scene.objects) {
            assert_eq!(Shape::from_category_id(ann["category_id"].as_i64().unwrap()), Some(object.shape));
            let mask = decode_counts(ann["segmentation"]["counts"].as_array().unwrap(), w, h);
            let area = mask.iter().filter(|&&v| v == 1).count();
            assert!(area > 0, "empty mask in {name}");
            assert_eq!(ann["area"].as_u64(), Some(area as u64));
            let (xs, ys): (Vec<usize>, Vec<usize>) =
                (0..w * h).filter(|&i| mask[i] == 1).map(|i| (i % w, i / w)).unzip();
            let (x0, y0) = (*xs.iter().min().unwrap(), *ys.iter().min().unwrap());
            let (x1, y1) = (*xs.iter().max().unwrap(), *ys.iter().max().unwrap());
            assert_eq!(ann["bbox"], serde_json::json!([x0, y0, x1 - x0 + 1, y1 - y0 + 1]));
            for i in (0..w * h).filter(|&i| mask[i] == 1) {
                let pixel = [rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]];
                assert_eq!(pixel, object.rgb, "{name}: a mask pixel is not the object's colour");
                covered[i] += 1;
            }
            assert_eq!(Colour::classify(object.rgb), Some(object.colour));
            masks.push(mask);
        }
        // The masks are disjoint and cover exactly the shape-coloured pixels.
        for i in 0..w * h {
            let shape_pixel = Colour::classify([rgb[3 * i], rgb[3 * i + 1], rgb[3 * i + 2]]).is_some();
            assert_eq!(covered[i], u8::from(shape_pixel), "{name}: pixel {i}");
        }
        let ann_ids = anns.iter().map(|a| a["id"].as_i64().unwrap()).collect();
        images.insert(name, (scene, masks, ann_ids));
    }

    // The refs pickle, through the crate's unpickler: ref_id → (split, ann_id, sentences).
    let refs = crate::pickle::parse(&std::fs::read(root.join("synth/refs(unc).p")).unwrap()).unwrap();
    let mut by_ref_id = BTreeMap::new();
    for r in refs.as_list().unwrap() {
        let field = |k: &str| r.get(k).unwrap_or_else(|| panic!("ref lacks {k}"));
        let sentences: Vec<String> = field("sentences")
            .as_list()
            .unwrap()
            .iter()
            .map(|s| {
                let sent = s.get("sent").unwrap().as_str().unwrap();
                assert_eq!(s.get("raw").unwrap().as_str(), Some(sent));
                let tokens: Vec<&str> =
                    s.get("tokens").unwrap().as_list().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
                assert_eq!(tokens.join(" "), sent);
                sent.to_string()
            })
            .collect();
        assert_eq!(field("sent_ids").as_list().unwrap().len(), sentences.len());
        let entry = (field("split").as_str().unwrap().to_string(), field("ann_id").as_i64().unwrap(), sentences);
        assert!(by_ref_id.insert(field("ref_id").as_i64().unwrap(), entry).is_none());
    }
    assert_eq!(by_ref_id.len(), report.splits.iter().map(|s| s.refs).sum::<usize>());

    for split in ["train", "val", "test"] {
        let (mut sentences, mut shared) = (0, 0);
        for r in json(&root.join(format!("anns/synth/{split}.json"))).as_array().unwrap() {
            let (scene, masks, ann_ids) = &images[r["img_name"].as_str().unwrap()];
            let (w, h, png) = decode_png(&root.join(format!("masks/synth/{}.png", r["segment_id"])));
            let ref_mask: Vec<u8> = png.iter().map(|&v| u8::from(v == 255)).collect();
            assert!(png.iter().all(|&v| v == 0 || v == 255));
            assert_eq!((w, h), (scene.width, scene.height));
            let target = masks.iter().position(|m| *m == ref_mask).expect("ref mask is one object's mask");
            let (ref_split, ann_id, ref_sentences) = &by_ref_id[&r["segment_id"].as_i64().unwrap()];
            assert_eq!(ref_split, split);
            assert_eq!(ann_ids[target], *ann_id, "the pickle's ann_id is the masked object");
            let ann = annotations.iter().find(|a| a["id"].as_i64() == Some(*ann_id)).unwrap();
            let (x, y, bw, bh) = (
                ann["bbox"][0].clone(),
                ann["bbox"][1].clone(),
                ann["bbox"][2].as_i64().unwrap(),
                ann["bbox"][3].as_i64().unwrap(),
            );
            assert_eq!(r["bbox"], serde_json::json!([x, y, x.as_i64().unwrap() + bw, y.as_i64().unwrap() + bh]));
            let prepared_sentences: Vec<&str> =
                r["sentences"].as_array().unwrap().iter().map(|s| s["sent"].as_str().unwrap()).collect();
            assert_eq!(ref_sentences, &prepared_sentences);
            let object = &scene.objects[target];
            assert_eq!(r["cat"].as_i64(), Some(object.shape.category_id() - 1));
            let others = scene.objects.iter().enumerate().filter(|&(j, _)| j != target);
            let shares = others.clone().any(|(_, o)| o.colour == object.colour || o.shape == object.shape);
            for s in r["sentences"].as_array().unwrap() {
                let text = s["sent"].as_str().unwrap();
                assert!(text.split(' ').all(|word| VOCABULARY.contains(&word)), "{text}");
                // Fits the official word length of RefCOCO (17 ids).
                let tokens = crate::tokenizer::ClipTokenizer::global().tokenize(text, 17).unwrap();
                assert!(!tokens.truncated, "{text:?} takes {} ids", tokens.n_ids);
                let expression = Expression::parse(text).unwrap_or_else(|| panic!("{text:?} is outside the grammar"));
                assert_eq!(expression.resolve(scene), Some(target), "{text:?} does not name its object");
                sentences += 1;
                shared += usize::from(shares);
            }
        }
        let split_report = report.split(split).unwrap();
        assert_eq!((split_report.sentences, split_report.sentences_with_shared_attribute), (sentences, shared));
        if split == "test" {
            assert!(sentences >= 10);
            assert!(
                shared * 2 >= sentences,
                "only {shared} of {sentences} test sentences need more than colour or shape"
            );
        }
    }
}
