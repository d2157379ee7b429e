//! Compiles `kernels/*.cu` (workspace root) to PTX and cubins when the `cuda` feature is on.
//!
//! Every kernel file `kernels/<stem>.cu` becomes three files in `$OUT_DIR`: `<stem>.sm80.ptx`
//! (`-ptx -arch=sm_80`, A100), `<stem>.sm90.ptx` (`-ptx -arch=sm_90`) and `<stem>.sm90.cubin`
//! (`-cubin -arch=sm_90`: machine code for H100/H200, loaded without any JIT), all with the
//! same flags. The `ptx!` macro in `src/cuda/mod.rs` embeds the three and its loader picks one
//! by the device's compute capability (9.x: the cubin). This naming is a contract that every
//! kernel wrapper (flash attention included) relies on through `ptx!`: do not change it.
//!
//! Files whose stem ends in `_sm90` (Hopper-only kernels: wgmma, TMA, setmaxnreg need the
//! architecture-specific `sm_90a` target, which has no PTX that runs elsewhere) are the exception:
//! each becomes only `<stem>.sm90a.cubin` (`-cubin -arch=sm_90a`), embedded by the
//! `cubin_sm90a!` macro in `src/cuda/mod.rs` and loaded only on compute capability 9.x.
//!
//! The nvcc runs go in parallel, up to cargo's `NUM_JOBS`. Without the feature this script
//! does nothing, so the default build needs no CUDA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The outputs per kernel file, as (file suffix, nvcc output kind, nvcc `-arch`).
const TARGETS: [(&str, &str, &str); 3] = [
    ("sm80.ptx", "-ptx", "sm_80"),
    ("sm90.ptx", "-ptx", "sm_90"),
    ("sm90.cubin", "-cubin", "sm_90"),
];

/// The only output of a Hopper-only kernel file (stem ending in `_sm90`).
const TARGETS_SM90A: [(&str, &str, &str); 1] = [("sm90a.cubin", "-cubin", "sm_90a")];

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
    let mut jobs = Vec::new();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 kernel name");
        let targets: &[(&str, &str, &str)] = if stem.ends_with("_sm90") {
            &TARGETS_SM90A
        } else {
            &TARGETS
        };
        for &(suffix, kind, arch) in targets {
            jobs.push((
                src.as_path(),
                kind,
                arch,
                out.join(format!("{stem}.{suffix}")),
            ));
        }
    }
    // The flash-attention file dominates; start it first so the small ones fill in around it.
    jobs.sort_by_key(|(src, ..)| std::cmp::Reverse(std::fs::metadata(src).map_or(0, |m| m.len())));
    let workers = std::env::var("NUM_JOBS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((src, kind, arch, dst)) = jobs.get(i) else {
                        return;
                    };
                    compile(&nvcc, src, &kernels, kind, arch, dst);
                })
            })
            .collect();
        for h in handles {
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
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

/// `nvcc <kind> -arch=<arch>` of `src` into `dst` (`kind`: `-ptx` or `-cubin`).
fn compile(nvcc: &Path, src: &Path, include: &Path, kind: &str, arch: &str, dst: &Path) {
    // No --use_fast_math: the kernels are checked against the CPU reference by relative error,
    // and approximate exp/log/division would spend part of that budget for little speed.
    let output = Command::new(nvcc)
        .arg(kind)
        .args(["-O3", "-std=c++17", "-lineinfo"])
        .arg(format!("-arch={arch}"))
        .arg("-I")
        .arg(include)
        .arg(src)
        .arg("-o")
        .arg(dst)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
    if !output.status.success() {
        panic!(
            "nvcc {kind} failed on {} ({arch}):\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
