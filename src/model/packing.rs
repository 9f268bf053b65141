//! Which linear layers hold oneDNN's packed weights ([`PackedLinear`]) and
//! when: the frozen backbones' layers, packed once after loading, for
//! inference on the CPU.

use anyhow::{bail, Result};
use tch::Device;

use super::detris::Detris;
use super::layers::Linear;
use super::packed_linear::{PackedLinear, Packing};
use crate::device::Precision;

/// The packing an inference precision asks for on `device`: int8 packs
/// int8; bf16 on the CPU packs bf16 (measured faster than libtorch's
/// `linear` on AVX512-BF16, docs/bench); nothing elsewhere.
pub fn packing_for(precision: Precision, device: Device) -> Option<Packing> {
    match (precision, device) {
        (Precision::Int8, _) => Some(Packing::Int8),
        (Precision::Bf16, Device::Cpu) => Some(Packing::Bf16),
        _ => None,
    }
}

/// Packs `model`'s frozen linear layers as `precision` (resolved) asks on the
/// model's device, if it asks for a packing; returns how many layers were packed.
/// For inference only: the packed layers' plain weights are released, since the
/// packed copies serve every forward without a gradient (the memory of one copy
/// instead of two).
pub fn pack_for_inference(model: &mut Detris, precision: Precision) -> Result<usize> {
    let Some(packing) = packing_for(precision, model.device()) else { return Ok(0) };
    let packed = pack_frozen_linears(model, packing)?;
    for layer in backbone_linears(model).into_iter().map(|(l, _)| l).filter(|l| l.packed.is_some()) {
        layer.release_plain_weight();
    }
    Ok(packed)
}

/// The backbones' linear layers (DINOv2's attention and MLP, CLIP's MLP), each with
/// the row count its inputs usually have (the packing's size hint).
fn backbone_linears(model: &mut Detris) -> Vec<(&mut Linear, i64)> {
    let image_tokens = model.config.image_tokens() as i64;
    let words = model.config.word_len as i64;
    let mut layers: Vec<(&mut Linear, i64)> = Vec::new();
    for b in &mut model.dino.blocks {
        for l in [&mut b.qkv, &mut b.proj, &mut b.fc1, &mut b.fc2] {
            layers.push((l, image_tokens));
        }
    }
    for b in &mut model.text.blocks {
        for l in [&mut b.c_fc, &mut b.c_proj] {
            layers.push((l, words));
        }
    }
    layers
}

/// Every frozen linear layer of the backbones (DINOv2's attention and MLP,
/// CLIP's MLP) packed for oneDNN, for inference on the CPU; returns how many.
/// Layers whose weight trains are left alone. Packing again replaces the
/// packed copies (after new weights were loaded, say).
pub fn pack_frozen_linears(model: &mut Detris, packing: Packing) -> Result<usize> {
    if model.device() != Device::Cpu {
        bail!("oneDNN's packed linear layers are CPU-only (the model is on {:?})", model.device());
    }
    let layers = backbone_linears(model);
    let mut packed = 0;
    for (layer, tokens) in layers {
        if layer.weight.requires_grad() {
            continue;
        }
        layer.packed = Some(PackedLinear::new(packing, &layer.weight, layer.bias.as_ref(), tokens)?);
        packed += 1;
    }
    Ok(packed)
}

/// Drops every packed copy: the layers compute with libtorch's `linear` again.
pub fn unpack_linears(model: &mut Detris) {
    for (layer, _) in backbone_linears(model) {
        layer.packed = None;
    }
}
