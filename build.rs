// Link-time settings for the `detris` binary, its tests and benches.
// - rpath to the libtorch that was built against, so the binary finds its
//   libraries without LD_LIBRARY_PATH;
// - with the `cuda` feature, force-link libtorch_cuda: nothing in tch names a
//   symbol from it, so --as-needed would drop it and CUDA would silently be
//   absent. Its CUDA dependencies need not exist on the build machine.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&libtorch).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        if let Some(site) = std::path::Path::new(&libtorch).parent() {
            for sub in ["nvidia/cu13/lib", "nvidia/cuda_runtime/lib"] {
                let p = site.join(sub);
                if p.exists() {
                    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", p.display());
                }
            }
        }
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
}
