// Link-time settings for the `detris` binary, its tests and benches.
// - rpath to the libtorch that was built against, so the binary finds its
//   libraries without LD_LIBRARY_PATH;
// - with the `cuda` feature, force-link libtorch_cuda: nothing in tch names a
//   symbol from it, so --as-needed would drop it and CUDA would silently be
//   absent. Its CUDA dependencies need not exist on the build machine;
// - the C++ shim over libtorch's c10d (src/distributed), compiled with the
//   flags torch-sys uses, after checking that libtorch's Gloo store vtable is
//   the one src/distributed/gloo_abi.h declares;
// - the C++ shim over libtorch's oneDNN linear operators (src/model).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let libtorch = std::env::var("LIBTORCH").map(PathBuf::from).unwrap_or_else(|_| {
        panic!("LIBTORCH is not set: `source scripts/setup.sh` first (it installs libtorch 2.11 and sets LIBTORCH)")
    });
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if let Some(site) = libtorch.parent() {
        for sub in ["nvidia/cu13/lib", "nvidia/cuda_runtime/lib"] {
            let p = site.join(sub);
            if p.exists() {
                println!("cargo:rustc-link-arg=-Wl,-rpath,{}", p.display());
            }
        }
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
    // The exception guard both C++ shims include.
    println!("cargo:rerun-if-changed=src/shim_guard.h");
    build_c10d_shim(&libtorch);
    build_onednn_shim(&libtorch);
}

/// The C++ shim over libtorch's oneDNN linear operators (src/model/packed_linear.rs),
/// compiled with the flags torch-sys uses.
fn build_onednn_shim(libtorch: &Path) {
    let file = Path::new("src/model/onednn_shim.cpp");
    println!("cargo:rerun-if-changed={}", file.display());
    cc::Build::new()
        .cpp(true)
        .file(file)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag("-Wno-unused-parameter")
        .warnings(false)
        .compile("detris_onednn");
}

/// The slots of `c10d::ProcessGroupGloo::GlooStore`'s vtable in libtorch
/// 2.11, in order, as src/distributed/gloo_abi.h declares them (each slot:
/// the symbols that may name its function).
const GLOO_STORE_SLOTS: [&[&str]; 12] = [
    &["_ZN4c10d16ProcessGroupGloo9GlooStoreD1Ev", "_ZN4c10d16ProcessGroupGloo9GlooStoreD2Ev"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStoreD0Ev"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore3setERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERKSt6vectorIcS6_E"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore3getERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"],
    &["_ZN4gloo6IStore8wait_getERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERKNSt6chrono8durationIlSt5ratioILl1ELl1000EEEE"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore4waitERKSt6vectorINSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEESaIS8_EERKNSt6chrono8durationIlSt5ratioILl1ELl1000EEEE"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore14has_v2_supportEv"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore9multi_getERKSt6vectorINSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEESaIS8_EE"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore9multi_setERKSt6vectorINSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEESaIS8_EERKS2_IS2_IcS7_ESaISD_EE"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore6appendERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEERKSt6vectorIcS6_E"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore3addERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEEl"],
    &["_ZN4c10d16ProcessGroupGloo9GlooStore4waitERKSt6vectorINSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEESaIS8_EE"],
];
const GLOO_STORE_VTABLE: &str = "_ZTVN4c10d16ProcessGroupGloo9GlooStoreE";

/// Fails the build when libtorch_cpu.so's GlooStore vtable is not the one
/// gloo_abi.h declares: calling through a mismatched vtable crashes at run time.
fn check_gloo_store_vtable(so: &Path) {
    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSymbol, RelocationTarget};
    let data = std::fs::read(so).unwrap_or_else(|e| panic!("{}: cannot read ({e})", so.display()));
    let elf: ElfFile64 =
        ElfFile64::parse(&*data).unwrap_or_else(|e| panic!("{}: not an ELF64 file ({e})", so.display()));
    let vtable = elf
        .dynamic_symbols()
        .find(|s| s.name() == Ok(GLOO_STORE_VTABLE))
        .unwrap_or_else(|| panic!("{}: no {GLOO_STORE_VTABLE}; this libtorch has no Gloo", so.display()));
    // Offset-to-top and typeinfo come first, then one pointer per slot.
    let slots = (vtable.size() / 8).saturating_sub(2) as usize;
    if slots != GLOO_STORE_SLOTS.len() {
        panic!(
            "{}: c10d::ProcessGroupGloo::GlooStore has {slots} virtual slots where src/distributed/gloo_abi.h \
             declares {} (libtorch 2.11's layout): this libtorch was built against another Gloo; \
             update gloo_abi.h and the slot list in build.rs",
            so.display(),
            GLOO_STORE_SLOTS.len()
        );
    }
    // Each slot is a relative relocation whose addend is the function's address.
    let first = vtable.address() + 16;
    let mut targets = vec![None; slots];
    if let Some(relocs) = elf.dynamic_relocations() {
        for (offset, r) in relocs {
            if offset >= first && offset < first + 8 * slots as u64 {
                let value = match r.target() {
                    RelocationTarget::Absolute => r.addend() as u64,
                    RelocationTarget::Symbol(i) => elf.symbol_by_index(i).map(|s| s.address()).unwrap_or(0),
                    _ => 0,
                };
                targets[((offset - first) / 8) as usize] = Some(value);
            }
        }
    }
    let names: std::collections::HashMap<u64, Vec<String>> = elf.symbols().fold(Default::default(), |mut m, s| {
        if let Ok(n) = s.name() {
            m.entry(s.address()).or_default().push(n.to_string());
        }
        m
    });
    if names.is_empty() {
        println!("cargo:warning=libtorch_cpu.so has no symbol table: only the GlooStore vtable's length was checked");
        return;
    }
    for (i, (target, expected)) in targets.iter().zip(GLOO_STORE_SLOTS).enumerate() {
        let found = target.and_then(|a| names.get(&a)).cloned().unwrap_or_default();
        if !found.iter().any(|n| expected.contains(&n.as_str())) {
            panic!(
                "{}: slot {i} of c10d::ProcessGroupGloo::GlooStore's vtable is {found:?}, where \
                 src/distributed/gloo_abi.h declares {expected:?}: this libtorch was built against another Gloo",
                so.display()
            );
        }
    }
}

fn build_c10d_shim(libtorch: &Path) {
    let dir = Path::new("src/distributed");
    for f in ["c10d_shim.cpp", "gloo_abi.h"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    check_gloo_store_vtable(&libtorch.join("lib/libtorch_cpu.so"));
    // ProcessGroupGloo.hpp includes five Gloo headers; each resolves to the
    // project's own declarations.
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("gloo_include");
    let abi = std::fs::canonicalize(dir.join("gloo_abi.h")).unwrap();
    for h in ["algorithm.h", "common/error.h", "context.h", "rendezvous/store.h", "transport/device.h"] {
        let p = out.join("gloo").join(h);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#pragma once\n#include \"{}\"\n", abi.display())).unwrap();
    }
    cc::Build::new()
        .cpp(true)
        .file(dir.join("c10d_shim.cpp"))
        .include(&out)
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .flag("-Wno-unused-parameter")
        .warnings(false)
        .compile("detris_c10d");
}
