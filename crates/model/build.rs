//! With the `cuda` feature, links libtorch_cuda into this package's binaries.
//!
//! torch-sys asks for `-ltorch_cuda`, but the default `--as-needed` linker
//! mode drops it because no symbol of it is referenced directly; libtorch
//! then never registers its CUDA backend and `tch::Cuda::is_available()`
//! is false even on a GPU machine. `--no-as-needed` around the library keeps
//! the DT_NEEDED entry, so loading the binary runs torch_cuda's registration.
//! Without the feature this script emits no link directives.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    // `-arg-bins`: only this package's binaries (the bench), not the library
    // nor its tests, which stay CPU-only.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    if let Some(libtorch) = env::var_os("LIBTORCH") {
        let lib = PathBuf::from(libtorch).join("lib");
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
    }
}
