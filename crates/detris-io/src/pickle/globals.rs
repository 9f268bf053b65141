//! The globals a checkpoint or dataset pickle may name.
//!
//! Exactly what `torch.save` (state dicts, optimizer and scheduler states),
//! TorchScript `data.pkl` and the REFER `refs(*).p` files contain. Naming a
//! global never runs it: calls of these stay data, or are evaluated by hand
//! in `machine.rs` when they only build plain data.

/// Storage classes `torch.save` names in its persistent ids.
pub const TORCH_STORAGES: [&str; 10] = [
    "FloatStorage",
    "HalfStorage",
    "DoubleStorage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "BFloat16Storage",
];

/// True when a pickle may name `module.name`.
pub fn is_allowed(module: &str, name: &str) -> bool {
    // TorchScript module classes (`__torch__.openai_clip_model.CLIP`, mangled
    // names, ...): opaque objects whose BUILD state holds their attributes.
    if module == "__torch__" || module.starts_with("__torch__.") {
        return !name.is_empty();
    }
    match module {
        // State dicts (OrderedDict) and MultiStepLR milestones (Counter).
        "collections" => matches!(name, "OrderedDict" | "Counter"),
        "torch._utils" => matches!(
            name,
            "_rebuild_tensor_v2" | "_rebuild_tensor" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
        ),
        "torch" => TORCH_STORAGES.contains(&name) || name == "device",
        "builtins" | "__builtin__" => matches!(name, "set" | "frozenset"),
        // How protocol-2 pickles written by Python 3 encode `bytes`.
        "_codecs" => name == "encode",
        // TorchScript's typed-container helpers (identity on their data).
        "torch.jit._pickle" => matches!(
            name,
            "build_intlist"
                | "build_doublelist"
                | "build_boollist"
                | "build_tensorlist"
                | "build_genericlist"
                | "restore_type_tag"
        ),
        _ => false,
    }
}
