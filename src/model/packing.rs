//! Which linear layers hold oneDNN's packed weights ([`PackedLinear`]) and
//! when: the frozen backbones' layers, packed once after loading, for
//! inference on the CPU.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use tch::Device;

use super::detris::Detris;
use super::layers::Linear;
use super::packed_linear::{PackedLinear, Packing};
use crate::device::{can_pack_bf16, CpuInfo, Precision};

/// The packing an inference precision asks for on `device`, on a CPU with
/// `cpu_flags`: int8 packs int8; bf16 on the CPU packs bf16 (measured faster
/// than libtorch's `linear` on AVX512-BF16, docs/bench) where oneDNN can
/// ([`can_pack_bf16`]); nothing elsewhere.
pub fn packing_for(precision: Precision, device: Device, cpu_flags: &BTreeSet<String>) -> Option<Packing> {
    match (precision, device) {
        (Precision::Int8, _) => Some(Packing::Int8),
        (Precision::Bf16, Device::Cpu) if can_pack_bf16(cpu_flags) => Some(Packing::Bf16),
        _ => None,
    }
}

/// Packs `model`'s frozen linear layers as `precision` (resolved) asks on the
/// model's device, if it asks for a packing; returns how many layers were packed.
/// For inference only: each packed layer's plain weight is released as soon as
/// its packed copy exists, since the packed copies serve every forward without
/// a gradient (the memory of one copy instead of two, also while packing).
pub fn pack_for_inference(model: &mut Detris, precision: Precision) -> Result<usize> {
    let Some(packing) = packing_for(precision, model.device(), &CpuInfo::read().flags) else { return Ok(0) };
    pack_layers(model, packing, true)
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
    pack_layers(model, packing, false)
}

fn pack_layers(model: &mut Detris, packing: Packing, release_plain: bool) -> Result<usize> {
    if model.device() != Device::Cpu {
        bail!("oneDNN's packed linear layers are CPU-only (the model is on {:?})", model.device());
    }
    let layers = backbone_linears(model);
    let mut packed = 0;
    for (layer, tokens) in layers {
        // Trained weights stay plain; a layer packed for inference before has no plain weight left to pack.
        if layer.weight.requires_grad() || layer.weight.numel() == 0 {
            continue;
        }
        layer.packed = Some(PackedLinear::new(packing, &layer.weight, layer.bias.as_ref(), tokens)?);
        if release_plain {
            layer.release_plain_weight();
        }
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
