//! The order of the official state dict: PyTorch lists parameters and
//! buffers in module registration order, and the official optimizer indexes
//! its state by position in that order. detris's variable store has no order,
//! so the official one is kept here as every key pattern (block indices as
//! `N`) in registration order; a key sorts by its pattern prefixes' ranks
//! and, where a pattern has `N`, by the index.

use std::collections::HashMap;
use std::sync::OnceLock;

use anyhow::{bail, Result};

/// Every state-dict key pattern of DETRIS-B, -L and -L*, in registration order.
const PATTERNS: &[&str] = &[
    "txt_backbone.positional_embedding",
    "txt_backbone.text_projection",
    "txt_backbone.logit_scale",
    "txt_backbone.transformer.resblocks.N.attn.in_proj_weight",
    "txt_backbone.transformer.resblocks.N.attn.in_proj_bias",
    "txt_backbone.transformer.resblocks.N.attn.out_proj.weight",
    "txt_backbone.transformer.resblocks.N.attn.out_proj.bias",
    "txt_backbone.transformer.resblocks.N.ln_1.weight",
    "txt_backbone.transformer.resblocks.N.ln_1.bias",
    "txt_backbone.transformer.resblocks.N.mlp.c_fc.weight",
    "txt_backbone.transformer.resblocks.N.mlp.c_fc.bias",
    "txt_backbone.transformer.resblocks.N.mlp.c_proj.weight",
    "txt_backbone.transformer.resblocks.N.mlp.c_proj.bias",
    "txt_backbone.transformer.resblocks.N.ln_2.weight",
    "txt_backbone.transformer.resblocks.N.ln_2.bias",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch1.conv.weight",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch1.conv.bias",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch1.bn.weight",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch1.bn.bias",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch1.bn.running_mean",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch1.bn.running_var",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch1.bn.num_batches_tracked",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch2.N.conv.weight",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch2.N.conv.bias",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch2.N.bn.weight",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch2.N.bn.bias",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch2.N.bn.running_mean",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch2.N.bn.running_var",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch2.N.bn.num_batches_tracked",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch3.N.conv.weight",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch3.N.conv.bias",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch3.N.bn.weight",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch3.N.bn.bias",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch3.N.bn.running_mean",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch3.N.bn.running_var",
    "txt_backbone.transformer.resblocks.N.adapter.dense_branch3.N.bn.num_batches_tracked",
    "txt_backbone.transformer.resblocks.N.adapter.D_fc1.weight",
    "txt_backbone.transformer.resblocks.N.adapter.D_fc1.bias",
    "txt_backbone.transformer.resblocks.N.adapter.D_fc2.weight",
    "txt_backbone.transformer.resblocks.N.adapter.D_fc2.bias",
    "txt_backbone.token_embedding.weight",
    "txt_backbone.ln_final.weight",
    "txt_backbone.ln_final.bias",
    "dinov2.cls_token",
    "dinov2.pos_embed",
    "dinov2.register_tokens",
    "dinov2.mask_token",
    "dinov2.patch_embed.proj.weight",
    "dinov2.patch_embed.proj.bias",
    "dinov2.blocks.N.norm1.weight",
    "dinov2.blocks.N.norm1.bias",
    "dinov2.blocks.N.attn.qkv.weight",
    "dinov2.blocks.N.attn.qkv.bias",
    "dinov2.blocks.N.attn.proj.weight",
    "dinov2.blocks.N.attn.proj.bias",
    "dinov2.blocks.N.ls1.gamma",
    "dinov2.blocks.N.norm2.weight",
    "dinov2.blocks.N.norm2.bias",
    "dinov2.blocks.N.mlp.fc1.weight",
    "dinov2.blocks.N.mlp.fc1.bias",
    "dinov2.blocks.N.mlp.fc2.weight",
    "dinov2.blocks.N.mlp.fc2.bias",
    "dinov2.blocks.N.ls2.gamma",
    "dinov2.blocks.N.adapter.dense_branch1.conv.weight",
    "dinov2.blocks.N.adapter.dense_branch1.conv.bias",
    "dinov2.blocks.N.adapter.dense_branch1.bn.weight",
    "dinov2.blocks.N.adapter.dense_branch1.bn.bias",
    "dinov2.blocks.N.adapter.dense_branch1.bn.running_mean",
    "dinov2.blocks.N.adapter.dense_branch1.bn.running_var",
    "dinov2.blocks.N.adapter.dense_branch1.bn.num_batches_tracked",
    "dinov2.blocks.N.adapter.dense_branch2.N.conv.weight",
    "dinov2.blocks.N.adapter.dense_branch2.N.conv.bias",
    "dinov2.blocks.N.adapter.dense_branch2.N.bn.weight",
    "dinov2.blocks.N.adapter.dense_branch2.N.bn.bias",
    "dinov2.blocks.N.adapter.dense_branch2.N.bn.running_mean",
    "dinov2.blocks.N.adapter.dense_branch2.N.bn.running_var",
    "dinov2.blocks.N.adapter.dense_branch2.N.bn.num_batches_tracked",
    "dinov2.blocks.N.adapter.dense_branch3.N.conv.weight",
    "dinov2.blocks.N.adapter.dense_branch3.N.conv.bias",
    "dinov2.blocks.N.adapter.dense_branch3.N.bn.weight",
    "dinov2.blocks.N.adapter.dense_branch3.N.bn.bias",
    "dinov2.blocks.N.adapter.dense_branch3.N.bn.running_mean",
    "dinov2.blocks.N.adapter.dense_branch3.N.bn.running_var",
    "dinov2.blocks.N.adapter.dense_branch3.N.bn.num_batches_tracked",
    "dinov2.blocks.N.adapter.D_fc1.weight",
    "dinov2.blocks.N.adapter.D_fc1.bias",
    "dinov2.blocks.N.adapter.D_fc2.weight",
    "dinov2.blocks.N.adapter.D_fc2.bias",
    "dinov2.blocks.N.adapter.cross.multihead_attn.in_proj_weight",
    "dinov2.blocks.N.adapter.cross.multihead_attn.in_proj_bias",
    "dinov2.blocks.N.adapter.cross.multihead_attn.out_proj.weight",
    "dinov2.blocks.N.adapter.cross.multihead_attn.out_proj.bias",
    "dinov2.blocks.N.adapter.cross.image_proj.weight",
    "dinov2.blocks.N.adapter.cross.image_proj.bias",
    "dinov2.blocks.N.adapter.cross.text_proj.weight",
    "dinov2.blocks.N.adapter.cross.text_proj.bias",
    "dinov2.blocks.N.adapter.cross.back_proj.weight",
    "dinov2.blocks.N.adapter.cross.back_proj.bias",
    "dinov2.norm.weight",
    "dinov2.norm.bias",
    "neck.fusion3.multihead_attn.in_proj_weight",
    "neck.fusion3.multihead_attn.in_proj_bias",
    "neck.fusion3.multihead_attn.out_proj.weight",
    "neck.fusion3.multihead_attn.out_proj.bias",
    "neck.fusion4.multihead_attn.in_proj_weight",
    "neck.fusion4.multihead_attn.in_proj_bias",
    "neck.fusion4.multihead_attn.out_proj.weight",
    "neck.fusion4.multihead_attn.out_proj.bias",
    "neck.fusion5.multihead_attn.in_proj_weight",
    "neck.fusion5.multihead_attn.in_proj_bias",
    "neck.fusion5.multihead_attn.out_proj.weight",
    "neck.fusion5.multihead_attn.out_proj.bias",
    "neck.txt_proj.weight",
    "neck.txt_proj.bias",
    "neck.f3_proj.N.weight",
    "neck.f3_proj.N.bias",
    "neck.f3_proj.N.running_mean",
    "neck.f3_proj.N.running_var",
    "neck.f3_proj.N.num_batches_tracked",
    "neck.f4_proj.N.weight",
    "neck.f4_proj.N.bias",
    "neck.f4_proj.N.running_mean",
    "neck.f4_proj.N.running_var",
    "neck.f4_proj.N.num_batches_tracked",
    "neck.f5_proj.N.weight",
    "neck.f5_proj.N.bias",
    "neck.f5_proj.N.running_mean",
    "neck.f5_proj.N.running_var",
    "neck.f5_proj.N.num_batches_tracked",
    "neck.aggr.N.weight",
    "neck.aggr.N.bias",
    "neck.aggr.N.running_mean",
    "neck.aggr.N.running_var",
    "neck.aggr.N.num_batches_tracked",
    "neck.coordconv.N.conv1.N.weight",
    "neck.coordconv.N.conv1.N.bias",
    "neck.coordconv.N.conv1.N.running_mean",
    "neck.coordconv.N.conv1.N.running_var",
    "neck.coordconv.N.conv1.N.num_batches_tracked",
    "neck.coordconv.N.N.weight",
    "neck.coordconv.N.N.bias",
    "neck.coordconv.N.N.running_mean",
    "neck.coordconv.N.N.running_var",
    "neck.coordconv.N.N.num_batches_tracked",
    "decoder.layers.N.self_attn_norm.weight",
    "decoder.layers.N.self_attn_norm.bias",
    "decoder.layers.N.cross_attn_norm.weight",
    "decoder.layers.N.cross_attn_norm.bias",
    "decoder.layers.N.self_attn.in_proj_weight",
    "decoder.layers.N.self_attn.in_proj_bias",
    "decoder.layers.N.self_attn.out_proj.weight",
    "decoder.layers.N.self_attn.out_proj.bias",
    "decoder.layers.N.multihead_attn.in_proj_weight",
    "decoder.layers.N.multihead_attn.in_proj_bias",
    "decoder.layers.N.multihead_attn.out_proj.weight",
    "decoder.layers.N.multihead_attn.out_proj.bias",
    "decoder.layers.N.ffn.N.weight",
    "decoder.layers.N.ffn.N.bias",
    "decoder.layers.N.norm1.weight",
    "decoder.layers.N.norm1.bias",
    "decoder.layers.N.norm2.weight",
    "decoder.layers.N.norm2.bias",
    "decoder.layers.N.norm3.weight",
    "decoder.layers.N.norm3.bias",
    "decoder.norm.weight",
    "decoder.norm.bias",
    "proj.vis.N.N.weight",
    "proj.vis.N.N.bias",
    "proj.vis.N.N.running_mean",
    "proj.vis.N.N.running_var",
    "proj.vis.N.N.num_batches_tracked",
    "proj.vis.N.weight",
    "proj.vis.N.bias",
    "proj.txt.weight",
    "proj.txt.bias",
];

fn prefix_ranks() -> &'static HashMap<String, usize> {
    static RANKS: OnceLock<HashMap<String, usize>> = OnceLock::new();
    RANKS.get_or_init(|| {
        let mut ranks = HashMap::new();
        for pattern in PATTERNS {
            let parts: Vec<&str> = pattern.split('.').collect();
            for end in 1..=parts.len() {
                let next = ranks.len();
                ranks.entry(parts[..end].join(".")).or_insert(next);
            }
        }
        ranks
    })
}

/// The sort key of one state-dict key: per component, (index or -1, rank of
/// the pattern prefix ending there).
fn sort_key(name: &str) -> Result<Vec<(i64, usize)>> {
    let ranks = prefix_ranks();
    let mut prefix = String::new();
    let mut key = Vec::new();
    for part in name.split('.') {
        let index = part.parse::<u32>().ok();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(if index.is_some() { "N" } else { part });
        let Some(&rank) = ranks.get(&prefix) else { bail!("`{name}` is not a key of the official DETRIS state dict") };
        key.push((index.map_or(-1, i64::from), rank));
    }
    if !PATTERNS.contains(&prefix.as_str()) {
        bail!("`{name}` is not a key of the official DETRIS state dict");
    }
    Ok(key)
}

/// `names` in the official state-dict order.
pub fn official_order<S: AsRef<str>>(names: &[S]) -> Result<Vec<usize>> {
    let keys = names.iter().map(|n| sort_key(n.as_ref())).collect::<Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of the official tables, shuffled by sorting them by name,
    /// come back in the official order.
    #[test]
    fn reproduces_the_official_key_lists() {
        for file in ["state_dict_base.tsv", "state_dict_large.tsv", "state_dict_large_mixed.tsv", "trainable_base.tsv"]
        {
            let path = detris_io::fixtures::dir().join("../docs/keys").join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let official: Vec<&str> =
                text.lines().filter(|l| !l.is_empty()).map(|l| l.split('\t').next().unwrap()).collect();
            let mut shuffled = official.clone();
            shuffled.sort();
            assert_ne!(shuffled, official);
            let order = official_order(&shuffled).unwrap();
            let got: Vec<&str> = order.iter().map(|&i| shuffled[i]).collect();
            assert_eq!(got, official, "{file}");
        }
        assert!(official_order(&["neck.nonsense.weight"]).is_err());
        assert!(official_order(&["neck.txt_proj"]).is_err());
    }
}
