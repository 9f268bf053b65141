//! The README's main command works as written: it segments the shipped
//! example picture with the shipped model (no --checkpoint) and writes the
//! overlay, the mask and the JSON record.

use std::process::Command;

/// The `scripts/run.sh segment ...` line of the README, split like a shell.
fn readme_main_command() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let line = readme.lines().find(|l| l.starts_with("scripts/run.sh segment")).expect("README has the main command");
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.trim_start_matches("scripts/run.sh").chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    args
}

#[test]
fn readme_main_command_segments_the_example_with_the_shipped_model() {
    let args = readme_main_command();
    assert!(!args.iter().any(|a| a == "--checkpoint"), "the main command must use the shipped model");
    let out = std::env::temp_dir().join(format!("detris-readme-{}", std::process::id()));
    let o = Command::new(env!("CARGO_BIN_EXE_detris"))
        .args(&args)
        .args(["--out", out.to_str().unwrap(), "--device", "cpu"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let photo = detris_io::image::load_rgb(concat!(env!("CARGO_MANIFEST_DIR"), "/models/example.png")).unwrap();
    let files: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    let find = |suffix: &str| files.iter().find(|p| p.to_string_lossy().ends_with(suffix)).cloned().unwrap();
    let overlay = detris_io::image::load_rgb(find(".overlay.png")).unwrap();
    assert_eq!(overlay.dimensions(), photo.dimensions());
    assert_ne!(overlay.as_raw(), photo.as_raw(), "the overlay shows a mask");
    let (mask, w, h) = detris_io::image::read_mask_png(find(".mask.png")).unwrap();
    assert_eq!((w as u32, h as u32), photo.dimensions());
    let area = mask.iter().filter(|&&v| v == 255).count();
    // The shipped model finds the object: a mask of plausible size, not empty, not everything.
    assert!(area > 100 && area < mask.len() / 4, "mask area {area} of {}", mask.len());
    std::fs::remove_dir_all(&out).ok();
}
