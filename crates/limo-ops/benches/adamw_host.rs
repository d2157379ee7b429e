//! The host AdamW of optimizer offload (`adamw_update_host`: fp32 master, m, v and the bf16 copy
//! in one pass, rayon over chunks): elements per second on all cores and the bytes that moves,
//! to size `train.optimizer_offload = "cpu"` against a step (`limo plan` prints the host side).
//! `cargo bench -p limo-ops --bench adamw_host [-- ELEMENTS]` (default 2^25; RAM: 18 B each).

use std::time::Instant;

use candle_core::{Device, Tensor};
use limo_ops::adamw::{adamw_update_host, AdamWStep};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1 << 25);
    let state = Tensor::ones(3 * n, candle_core::DType::F32, &Device::Cpu).expect("state");
    let grad: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 1e-3 - 0.05).collect();
    let mut bf16 = vec![half::bf16::ZERO; n];
    let mut seconds = Vec::new();
    for t in 1..=6 {
        let step = AdamWStep {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.01,
            t,
            grad_scale: 0.5,
        };
        let started = Instant::now();
        adamw_update_host(&state, &grad, &step, &[], Some(&mut bf16)).expect("update");
        seconds.push(started.elapsed().as_secs_f64());
    }
    // The first call pays the page faults of the fresh buffers.
    let mut warm = seconds[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    let median = warm[warm.len() / 2];
    // Per element: reads master, m, v (f32) and the f32 gradient, writes master, m, v and bf16.
    let bytes = 30.0 * n as f64;
    let checksum: f32 = bf16.iter().step_by(4097).map(|x| x.to_f32()).sum();
    println!(
        "adamw_update_host: {n} elements on {} threads: median {:.4} s ({:.0} M elements/s, \
         {:.1} GB/s moved), first {:.4} s, checksum {checksum:.6}",
        rayon::current_num_threads(),
        median,
        n as f64 / median / 1e6,
        bytes / median / 1e9,
        seconds[0],
    );
}
