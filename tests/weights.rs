//! Building the model from every kind of weight file users have: the official
//! checkpoint, safetensors, and the pretrained backbones + trained parts; and
//! refusing files that do not fit.

mod common;

use common::*;
use detris::model::Ctx;
use detris::weights::{self, ConfigChoice, WeightFiles};
use detris::Detris;
use tch::{Device, Kind, Tensor};

fn tiny_choice() -> ConfigChoice {
    ConfigChoice { config: Some(fixture("tiny/config.json")), ..Default::default() }
}

fn logits(model: &Detris) -> Tensor {
    let io = read_st("tiny/io.safetensors");
    tch::no_grad(|| model.forward(&io["input.img"], &io["input.word"], &Ctx::eval()))
}

fn load(files: WeightFiles, choice: &ConfigChoice) -> anyhow::Result<Detris> {
    weights::load_model(&files, choice, Device::Cpu)
}

#[test]
fn three_sources_give_identical_logits_within_parity() {
    let ckpt =
        load(WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() }, &tiny_choice())
            .unwrap();
    let st = load(
        WeightFiles { checkpoint: Some(fixture("tiny/state_dict.safetensors")), ..Default::default() },
        &tiny_choice(),
    )
    .unwrap();
    let backbones = load(
        WeightFiles {
            checkpoint: Some(fixture("tiny/state_dict.safetensors")),
            dinov2: Some(fixture("tiny/dinov2.pth")),
            clip: Some(fixture("tiny/clip.pt")),
        },
        &tiny_choice(),
    )
    .unwrap();
    let reference = &read_st("tiny/io.safetensors")["f64.pred"];
    let (a, b, c) = (logits(&ckpt), logits(&st), logits(&backbones));
    // Same tensors from every file (clip.pt's fp16 values widen exactly), so
    // the logits are bit-identical; and within the f32 parity tolerance.
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert_eq!(max_abs_diff(&a, &c), 0.0);
    assert!(max_abs_diff(&a, reference) < 1e-4);
}

#[test]
fn backbones_alone_leave_the_trainable_parts_initialised() {
    let m = load(
        WeightFiles {
            dinov2: Some(fixture("tiny/dinov2.pth")),
            clip: Some(fixture("tiny/clip.pt")),
            ..Default::default()
        },
        &tiny_choice(),
    )
    .unwrap();
    let sd = read_st("tiny/state_dict.safetensors");
    let vars = m.vs.variables();
    // Frozen: equal to the files; trainable: fresh (not equal to the trained fixture).
    assert_eq!(max_abs_diff(&vars["dinov2.blocks.0.attn.qkv.weight"], &sd["dinov2.blocks.0.attn.qkv.weight"]), 0.0);
    assert!(max_abs_diff(&vars["neck.txt_proj.weight"], &sd["neck.txt_proj.weight"]) > 0.0);
}

#[test]
fn detris_safetensors_round_trip_needs_no_side_flags_and_detects_tampering() {
    let dir = std::env::temp_dir().join(format!("detris-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src =
        load(WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() }, &tiny_choice())
            .unwrap();
    let out = dir.join("tiny.safetensors");
    weights::save_model(&src, &out, false).unwrap();
    let back =
        load(WeightFiles { checkpoint: Some(out.clone()), ..Default::default() }, &ConfigChoice::default()).unwrap();
    assert_eq!(back.config, src.config);
    assert_eq!(max_abs_diff(&logits(&src), &logits(&back)), 0.0);

    // Flip one byte of tensor data: the checksum refuses the file.
    let mut bytes = std::fs::read(&out).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    let bad = dir.join("tampered.safetensors");
    std::fs::write(&bad, bytes).unwrap();
    let e = load(WeightFiles { checkpoint: Some(bad), ..Default::default() }, &ConfigChoice::default()).unwrap_err();
    assert!(format!("{e:#}").contains("checksum mismatch"), "{e:#}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn weights_with_nan_or_infinity_are_refused_naming_the_tensor() {
    let dir = std::env::temp_dir().join(format!("detris-nan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model =
        load(WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() }, &tiny_choice())
            .unwrap();
    for (value, name) in [(f64::NAN, "nan"), (f64::INFINITY, "inf")] {
        let mut w = model.vs.variables()["neck.txt_proj.weight"].shallow_clone();
        let saved = w.copy();
        tch::no_grad(|| {
            let _ = w.view(-1).narrow(0, 3, 1).fill_(value);
        });
        // A well-formed file (its checksum matches): only the values are wrong.
        let path = dir.join(format!("{name}.safetensors"));
        weights::save_model(&model, &path, false).unwrap();
        tch::no_grad(|| w.copy_(&saved));
        let e = load(WeightFiles { checkpoint: Some(path.clone()), ..Default::default() }, &ConfigChoice::default())
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("NaN or infinity in neck.txt_proj.weight") && msg.contains(&*path.to_string_lossy()),
            "{msg}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_of_another_variant_is_refused_with_the_shapes_that_disagree() {
    let choice = ConfigChoice { variant: Some("detris-b".into()), ..Default::default() };
    let e = load(WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() }, &choice)
        .unwrap_err();
    let msg = format!("{e:#}");
    // The widths come from the two configs: the variant asked for, and the fixture's.
    let (asked, stored) = (detris::DetrisConfig::detris_b().dino_dim, tiny_config().dino_dim);
    assert_ne!(asked, stored, "the fixture must be of another shape than DETRIS-B for this test");
    assert!(
        msg.contains("do not fit config `detris-b`")
            && msg.contains(&format!("DINOv2 width D: config {asked}, weights {stored}")),
        "{msg}"
    );
    // Without any config, the shapes name no official variant: the message says to pass --config.
    let e = load(
        WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() },
        &ConfigChoice::default(),
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("--config"), "{e:#}");
}

#[test]
fn missing_and_broken_files_name_the_file() {
    let e = load(WeightFiles { checkpoint: Some("/nonexistent/x.pth".into()), ..Default::default() }, &tiny_choice())
        .unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/x.pth"), "{e:#}");
    let e = load(WeightFiles { dinov2: Some(fixture("tiny/dinov2.pth")), ..Default::default() }, &tiny_choice())
        .unwrap_err();
    assert!(format!("{e:#}").contains("--dinov2 and --clip"), "{e:#}");
}

#[test]
fn f64_model_from_checkpoint_runs() {
    let mut m =
        load(WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() }, &tiny_choice())
            .unwrap();
    m.vs.double();
    let io = read_st("tiny/io.safetensors");
    let out = tch::no_grad(|| m.forward(&io["input.img"].to_kind(Kind::Double), &io["input.word"], &Ctx::eval()));
    assert!(max_abs_diff(&out, &io["f64.pred"]) < 1e-5);
}

#[test]
fn loading_in_bf16_converts_each_tensor_as_it_loads_and_equals_converting_afterwards() {
    let files = WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() };
    let direct = weights::load_model_in(&files, &tiny_choice(), Device::Cpu, Kind::BFloat16).unwrap();
    let mut after = load(files, &tiny_choice()).unwrap();
    after.vs.set_kind(Kind::BFloat16);
    let (d, a) = (direct.vs.variables(), after.vs.variables());
    assert_eq!(d.len(), a.len());
    for (name, t) in &d {
        assert_eq!(t.kind(), Kind::BFloat16, "{name}");
        assert_eq!(max_abs_diff(t, &a[name]), 0.0, "{name}");
    }
    let io = read_st("tiny/io.safetensors");
    let img = io["input.img"].to_kind(Kind::BFloat16);
    let run = |m: &Detris| tch::no_grad(|| m.forward(&img, &io["input.word"], &Ctx::eval()));
    assert_eq!(max_abs_diff(&run(&direct), &run(&after)), 0.0);
}
