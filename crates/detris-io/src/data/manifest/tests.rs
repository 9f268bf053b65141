//! `mask_polygons` against pycocotools (`tests/data/polygon_cases.json`, made by
//! `scripts/dev/polygon_cases.py`), and the streaming index against the in-memory parser.

use super::*;
use std::io::Write as _;

fn polygon_cases() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/polygon_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

#[test]
fn polygons_rasterise_as_pycocotools() {
    let cases = polygon_cases();
    assert!(cases.len() > 100);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let (h, w) = (case["height"].as_u64().unwrap() as usize, case["width"].as_u64().unwrap() as usize);
        let polygons = check_polygons(&case["polygons"]).unwrap();
        // frPyObjects: one RLE per polygon.
        let parts: Vec<String> = polygons.iter().map(|p| Rle::from_polygon(p, h, w).unwrap().to_compressed()).collect();
        let want: Vec<&str> = case["parts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        assert_eq!(parts, want, "{name}: parts");
        // merge: the union.
        let union = Rle::from_polygons(&polygons, h, w).unwrap();
        assert_eq!(union.to_compressed(), case["union"].as_str().unwrap(), "{name}: union");
        assert_eq!(union.area(), case["area"].as_u64().unwrap(), "{name}: area");
        // Through a manifest line, as the loader reads it.
        let line = serde_json::json!({"image": "a.jpg", "sentences": ["x"], "mask_polygons": case["polygons"]});
        let item = parse_line(&line.to_string(), 1, Path::new("")).unwrap();
        let grey = item.ground_truth.unwrap().read(w, h).unwrap();
        assert_eq!((grey.width, grey.height), (w, h));
        let decoded: Vec<u8> = union.decode().into_iter().map(|v| v * 255).collect();
        assert_eq!(grey.grey, decoded, "{name}: decoded");
    }
}

#[test]
fn bad_polygons_are_errors_naming_line_and_polygon() {
    let line =
        |polygons: &str| format!("{{\"image\": \"a.jpg\", \"sentences\": [\"x\"], \"mask_polygons\": {polygons}}}");
    let text = [
        line("[[1, 2, 3, 4, 5, 6]]"),
        line("[[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]]"),
        line("[[1, 2, 3, 4]]"),
        line("[[1, 2, \"NaN\", 4, 5, 6]]"),
        line("[[1, 2, null, 4, 5, 6]]"),
        line("[1, 2, 3, 4, 5, 6]"),
        line("[]"),
        line("{\"x\": 1}"),
        "{\"image\": \"a.jpg\", \"sentences\": [\"x\"], \"mask\": \"m.png\", \"mask_polygons\": [[1, 2, 3, 4, 5, 6]]}"
            .to_string(),
    ]
    .join("\n");
    let m = parse(&text, Path::new(""));
    assert_eq!(m.items.iter().map(|i| i.line).collect::<Vec<_>>(), [1]);
    let errors: Vec<String> = m.bad.iter().map(ToString::to_string).collect();
    let expect = [
        "line 2: mask_polygons: polygon 2: has 7 numbers, an odd count",
        "line 3: mask_polygons: polygon 1: has 2 points, fewer than 3",
        "line 4: mask_polygons: polygon 1, value 3: \"NaN\" is not a number",
        "line 5: mask_polygons: polygon 1, value 3: null is not a number",
        "line 6: mask_polygons: polygon 1 is not a list of numbers: 1",
        "line 7: mask_polygons: is an empty list",
        "line 8: mask_polygons: is not a list of polygons",
        "line 9: give one of mask, mask_rle and mask_polygons, not several",
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    for (got, want) in errors.iter().zip(expect) {
        assert!(got.starts_with(want), "{got}\n  wants {want}");
    }
    // Coordinates far outside the photo are refused when it is read, naming the field.
    let far = parse_line(&line("[[0, 0, 1e6, 0, 0, 1e6]]"), 1, Path::new("")).unwrap();
    let error = far.ground_truth.unwrap().read(10, 10).unwrap_err().to_string();
    assert!(error.starts_with("mask_polygons: polygon 1:") && error.contains("outside"), "{error}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
    path
}

#[test]
fn the_index_keeps_the_parsers_items_and_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let text = concat!(
        "{\"image\": \"a.png\", \"sentences\": [\"the cup\", \"a cup\"], \"mask\": \"m/a.png\"}\n",
        "\n",
        "{\"image\": \"b.png\", \"sentences\": [\"\"]}\n",
        "not json\r\n",
        "{\"id\": 7, \"image\": \"/abs/c.png\", \"sentences\": [\"x\"], \"mask_polygons\": [[0, 0, 4, 0, 4, 4]]}\r\n",
        "{\"image\": \"d.png\", \"sentences\": [\"z\"], \"mask_rle\": {\"size\": [2, 3], \"counts\": [1, 2, 3]}}\n",
        "{\"id\": \"7\", \"image\": \"g.png\", \"sentences\": [\"z\"], \"mask\": \"g.png\"}\n",
        "{\"image\": \"e.png\", \"sentences\": [\"no mask\"]}\n",
        "{\"image\": \"ü.png\", \"sentences\": [\"last\"], \"mask\": \"m.png\"}",
    );
    let path = write(dir.path(), "m.jsonl", text);
    let parsed = read(&path).unwrap();
    let index = ManifestIndex::open(&path, false).unwrap();
    assert_eq!(index.lines(), text.split('\n').filter(|l| !l.trim().is_empty()).count());
    assert_eq!(index.len(), parsed.items.len());
    for (i, want) in parsed.items.iter().enumerate() {
        assert_eq!(&index.item(i).unwrap(), want);
        assert_eq!(index.line_number(i), want.line);
        assert_eq!(index.sentence_count(i), want.sentences.len());
    }
    assert_eq!(index.bad_lines(), &parsed.bad[..]);
    // For training, a line without a ground truth is a bad line too.
    let training = ManifestIndex::open(&path, true).unwrap();
    assert_eq!(training.len(), index.len() - 1);
    let last = training.bad_lines().iter().find(|b| b.line == 8).unwrap();
    assert!(last.error.contains("no ground truth"), "{last}");
    // A file changed under an open index is named, not misread.
    write(dir.path(), "m.jsonl", &text.replace("the cup", "THE CUP, and more words"));
    let error = index.item(0).unwrap_err().to_string();
    assert!(error.contains("m.jsonl") && error.contains("line 1") && error.contains("changed"), "{error}");
}

#[test]
fn a_large_manifest_is_indexed_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    let n = 100_000;
    let mut text = String::with_capacity(n * 120);
    for i in 0..n {
        text.push_str(&format!(
            "{{\"image\": \"p/{}.jpg\", \"sentences\": [\"the thing {i}\", \"it\"], \"mask_polygons\": [[1, 1, 9, 1, 5, 7.5]]}}\n",
            i / 3
        ));
    }
    let path = write(dir.path(), "big.jsonl", &text);
    let index = ManifestIndex::open(&path, true).unwrap();
    assert_eq!((index.len(), index.bad_lines().len()), (n, 0));
    assert_eq!(index.item(n - 1).unwrap().sentences[0], format!("the thing {}", n - 1));
    assert_eq!(index.photo_key(0), index.photo_key(2));
    assert_ne!(index.photo_key(2), index.photo_key(3));
    // What is kept per line: an offset and four numbers, whatever the line holds.
    assert!(std::mem::size_of::<index::Entry>() <= 32);
}
