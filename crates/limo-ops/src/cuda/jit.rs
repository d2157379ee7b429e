//! candle's own kernels (elementwise ops, casts, index_select, reductions, ...) ship as PTX,
//! which the driver compiles on first use in each process, about a second or more per module,
//! unless its disk cache (`CUDA_CACHE_PATH`) holds them already. [`warm_candle_jit`] compiles
//! the modules limo's ops use at once, in parallel, so that a fresh machine's first timed
//! command does not pay for it (`limo debug warm-jit`; scripts/gpu/check.sh runs it first).
//! Left out: `quantized` (more than half of candle's PTX), `conv` and `sort`, which no limo op
//! calls.

use std::time::Instant;

use candle_core::cuda_backend::{cudarc, kernels, CudaDevice};

use super::wrap;

const MODULES: [(&str, kernels::Module); 8] = [
    ("affine", kernels::AFFINE),
    ("binary", kernels::BINARY),
    ("cast", kernels::CAST),
    ("fill", kernels::FILL),
    ("indexing", kernels::INDEXING),
    ("reduce", kernels::REDUCE),
    ("ternary", kernels::TERNARY),
    ("unary", kernels::UNARY),
];

/// One module compiled: its name, the PTX size and the seconds its load took.
pub struct Compiled {
    pub module: &'static str,
    pub ptx_bytes: usize,
    pub seconds: f64,
}

/// Loads each of those candle kernel modules on `dev`'s context, one thread each. The modules are
/// dropped again: what stays is the driver's cache entry.
pub fn warm_candle_jit(dev: &CudaDevice) -> candle_core::Result<Vec<Compiled>> {
    let ctx = dev.cuda_stream().context().clone();
    std::thread::scope(|scope| {
        let loads: Vec<_> = MODULES
            .iter()
            .map(|(name, module)| {
                let ctx = ctx.clone();
                scope.spawn(move || {
                    let start = Instant::now();
                    ctx.load_module(cudarc::nvrtc::Ptx::from_src(module.ptx()))
                        .map_err(|e| wrap(format!("candle's {name} kernels (PTX): {e}")))?;
                    Ok(Compiled {
                        module: name,
                        ptx_bytes: module.ptx().len(),
                        seconds: start.elapsed().as_secs_f64(),
                    })
                })
            })
            .collect();
        loads
            .into_iter()
            .map(|load| {
                load.join()
                    .unwrap_or_else(|_| Err(wrap("a JIT thread panicked")))
            })
            .collect()
    })
}
