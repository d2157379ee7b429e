//! Compiles `kernels/*.cu` (workspace root) to PTX when the `cuda` feature is on.
//!
//! Every kernel file `kernels/<stem>.cu` becomes two files in `$OUT_DIR`: `<stem>.sm80.ptx`
//! (`-arch=sm_80`, A100) and `<stem>.sm90.ptx` (`-arch=sm_90`, H100/H200). The loader in
//! `src/cuda/mod.rs` picks one by the device's compute capability. This naming is a contract
//! that other kernel files (flash attention) rely on: do not change it.
//!
//! Without the feature this script does nothing, so the default build needs no CUDA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The architectures we emit PTX for, as (file tag, nvcc `-arch`).
const ARCHS: [(&str, &str); 2] = [("sm80", "sm_80"), ("sm90", "sm_90")];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let kernels = manifest.join("../../kernels");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    // New files in kernels/ must trigger a rebuild too, not only edits of known ones.
    println!("cargo:rerun-if-changed={}", kernels.display());
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");

    let mut sources = Vec::new();
    for entry in
        std::fs::read_dir(&kernels).unwrap_or_else(|e| panic!("{}: {e}", kernels.display()))
    {
        let path = entry.expect("readable kernels/ entry").path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            // Shared headers: any change recompiles everything that may include them.
            Some("cuh") => println!("cargo:rerun-if-changed={}", path.display()),
            _ => {}
        }
    }
    sources.sort();

    let nvcc = find_nvcc();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 kernel name");
        for (tag, arch) in ARCHS {
            let ptx = out.join(format!("{stem}.{tag}.ptx"));
            compile(&nvcc, src, &kernels, arch, &ptx);
        }
    }
}

/// `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on `PATH`; panics with the fix if none runs.
fn find_nvcc() -> PathBuf {
    let candidates: Vec<PathBuf> = [
        std::env::var_os("NVCC").map(PathBuf::from),
        std::env::var_os("CUDA_HOME").map(|h| Path::new(&h).join("bin/nvcc")),
        Some(PathBuf::from("nvcc")),
    ]
    .into_iter()
    .flatten()
    .collect();
    for nvcc in &candidates {
        if Command::new(nvcc)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return nvcc.clone();
        }
    }
    panic!(
        "the `cuda` feature needs nvcc to compile kernels/*.cu, and none was found (tried {candidates:?}). \
         Run `scripts/setup-cuda.sh && source ~/.cache/limo-cuda/env.sh` (see docs/CUDA.md), \
         or set NVCC to the compiler's path."
    );
}

fn compile(nvcc: &Path, src: &Path, include: &Path, arch: &str, ptx: &Path) {
    // No --use_fast_math: the kernels are checked against the CPU reference by relative error,
    // and approximate exp/log/division would spend part of that budget for little speed.
    let output = Command::new(nvcc)
        .args(["-ptx", "-O3", "-std=c++17", "-lineinfo"])
        .arg(format!("-arch={arch}"))
        .arg("-I")
        .arg(include)
        .arg(src)
        .arg("-o")
        .arg(ptx)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    if !output.status.success() {
        panic!(
            "nvcc failed on {} ({arch}):\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
