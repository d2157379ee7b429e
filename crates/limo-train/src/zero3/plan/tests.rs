use super::*;
use limo_model::init::preset_config;

#[test]
fn train_warns_before_a_run_that_will_not_fit() {
    let recipe = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs/limo-qwen2.5-32b.toml");
    let config = crate::TrainConfig::from_file(&recipe, &[]).unwrap();
    let cfg = preset("32b");
    let h200 = 141 * GIB;
    assert_eq!(fit_warning(&cfg, &config, 8, h200).unwrap(), None);
    let on_80 = fit_warning(&cfg, &config, 8, 80 * GIB).unwrap().unwrap();
    // 32 rows per step: 4 micro-batches per GPU on 8 GPUs.
    assert!(on_80.contains("111.5 GiB per GPU on 8 GPU(s)"), "{on_80}");
    assert!(
        on_80.contains("it would fit with --offload cpu (61.1 GiB)"),
        "{on_80}"
    );
    let two = fit_warning(&cfg, &config, 2, 80 * GIB).unwrap().unwrap();
    assert!(two.contains("nothing limo plans fits it"), "{two}");
    let mut off = config.clone();
    off.train.activation_checkpointing = crate::config::Checkpointing::None;
    let off = fit_warning(&cfg, &off, 32, 80 * GIB).unwrap().unwrap();
    assert!(
        off.contains("--set train.activation_checkpointing=true (50.7 GiB)"),
        "{off}"
    );
    assert!(
        off.contains("--set train.activation_checkpointing=auto (55 of 64 layers, 78.7 GiB)"),
        "{off}"
    );
}
use limo_model::ModelWeights;

fn preset(shape: &str) -> Qwen2Config {
    Qwen2Config::from_json(&preset_config(shape).unwrap().to_string()).unwrap()
}

/// The LIMO recipe: one 16384-token row per GPU, no accumulation.
fn limo(shape: &str, gpus: u64) -> Plan {
    let work = Workload {
        seq_len: 16384,
        micro_batch: 1,
        grad_accum: 1,
        loss_chunk: 1024,
        reduce_bytes: 4,
        recompute_attention: false,
    };
    let hw = Hardware {
        gpus,
        gpu_mem: 80 * GIB,
        peak_tflops: 989.0,
        mfu: 0.4,
    };
    plan(&preset(shape), work, hw).unwrap()
}

#[test]
fn groups_cover_every_parameter_of_the_checkpoint() {
    for shape in ["tiny", "0.5b", "7b", "32b"] {
        let cfg = preset(shape);
        let from_specs: usize = ModelWeights::specs(&cfg)
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        assert_eq!(group_sizes(&cfg).iter().sum::<u64>(), from_specs as u64);
        assert_eq!(group_sizes(&cfg).len(), cfg.num_hidden_layers + 2);
    }
}

#[test]
fn parameter_counts_match_the_published_sizes() {
    for (shape, billions) in [("0.5b", 0.49), ("7b", 7.62), ("32b", 32.76)] {
        let params = limo(shape, 8).params as f64 / 1e9;
        assert!(
            (params - billions).abs() < 0.1,
            "{shape}: {params:.3}B, expected {billions}B"
        );
    }
}

#[test]
fn groups_pad_to_a_multiple_of_the_world_size() {
    assert_eq!(padded(10, 4), 12);
    assert_eq!(padded(12, 4), 12);
    assert_eq!(padded(1, 1), 1);
    // The 32B final norm + head group (5120 + 152064 * 5120) is not a multiple of 3.
    let p = limo("32b", 3);
    assert_eq!(p.padded_params % 3, 0);
    assert!(p.padded_params > p.params && p.padded_params - p.params < 3 * p.groups as u64);
    assert_eq!(p.shard_params * 3, p.padded_params);
}

#[test]
fn a_bf16_reduce_scatter_stages_less() {
    let cfg = preset("32b");
    let fp32 = limo("32b", 8);
    let bf16 = plan(
        &cfg,
        Workload {
            reduce_bytes: 2,
            ..fp32.workload
        },
        fp32.hardware,
    )
    .unwrap();
    let (a, b) = (
        &fp32.with_checkpointing.memory,
        &bf16.with_checkpointing.memory,
    );
    // 2 fewer bytes per layer parameter in the flat buffer (both write into it in place).
    let layer = group_sizes(&cfg)[1];
    assert_eq!(a.gathered - b.gathered, 2 * layer);
    assert_eq!(a.activations, b.activations);
}

#[test]
fn sharded_state_halves_when_gpus_double() {
    let (a, b) = (limo("32b", 16), limo("32b", 32));
    let (ma, mb) = (&a.with_checkpointing.memory, &b.with_checkpointing.memory);
    for (x, y) in [
        (ma.weight_shard, mb.weight_shard),
        (ma.grad_shard, mb.grad_shard),
        (ma.master, mb.master),
        (ma.adam, mb.adam),
    ] {
        // Padding may add a few elements per group; everything else halves exactly.
        assert!((x as f64 / y as f64 - 2.0).abs() < 1e-6, "{x} vs {y}");
    }
    // 18 bytes per parameter in all.
    let state = ma.weight_shard + ma.grad_shard + ma.master + ma.adam;
    assert_eq!(state, 18 * a.shard_params);
    // Per-GPU work does not shard: the same activations at any world size.
    assert_eq!(ma.activations, mb.activations);
    assert_eq!(ma.gathered, mb.gathered);
}

#[test]
fn checkpointing_trades_memory_for_a_recomputed_forward() {
    let p = limo("32b", 32);
    let (with, without) = (&p.with_checkpointing, &p.without_checkpointing);
    assert!(with.memory.activations * 5 < without.memory.activations);
    // One extra forward of the layers: about 4/3 of the FLOPs.
    let ratio = with.step_flops / without.step_flops;
    assert!(ratio > 1.25 && ratio < 4.0 / 3.0 + 1e-9, "{ratio}");
}

/// `limo(shape, gpus)` with another loss chunk.
#[test]
fn auto_checkpoints_the_fewest_layers_that_fit() {
    use crate::config::Checkpointing;
    // 32B on 32 GPUs of 80 GiB, one 16k row each: every layer checkpointed fits with room,
    // none does not.
    let p = limo("32b", 32);
    let by = &p.by_layers;
    assert_eq!(by.len(), 65);
    let total = |e: &Estimate| e.memory.total;
    assert_eq!(total(&by[64]), total(&p.with_checkpointing));
    assert_eq!(total(&by[0]), total(&p.without_checkpointing));
    // Each layer checkpointed costs FLOPs and saves memory, but the last: its backward
    // follows its forward, so its recompute holds as much as keeping it would (the estimate
    // counts its input twice: more).
    for k in 1..=64 {
        assert!(by[k].step_flops > by[k - 1].step_flops, "{k}");
        assert_eq!(total(&by[k]) < total(&by[k - 1]), k < 64, "{k}");
    }
    let auto = p.auto_checkpointing.as_ref().expect("fits");
    let k = auto.checkpointed_layers as usize;
    assert!(0 < k && k < 64, "{k}");
    assert!(by[k].memory.fits && !by[k - 1].memory.fits, "{k}");
    assert_eq!(
        p.chosen(Checkpointing::Auto).unwrap().checkpointed_layers,
        k as u64
    );
    assert_eq!(
        p.chosen(Checkpointing::Layers(5))
            .unwrap()
            .checkpointed_layers,
        5
    );
    assert!(p.chosen(Checkpointing::Layers(65)).is_err());
    // On 2 GPUs nothing fits: "auto" then checkpoints every layer.
    let two = limo("32b", 2);
    assert!(two.auto_checkpointing.is_none());
    assert_eq!(
        two.chosen(Checkpointing::Auto).unwrap().checkpointed_layers,
        64
    );
}

fn with_chunk(shape: &str, gpus: u64, loss_chunk: u64) -> Plan {
    let base = limo(shape, gpus);
    let work = Workload {
        loss_chunk,
        ..base.workload
    };
    plan(&preset(shape), work, base.hardware).unwrap()
}

#[test]
fn only_the_peak_phase_sets_the_total() {
    // 32B on 32 GPUs peaks in the layers' backward: a loss chunk twice as long (600 MB more
    // logits, in the head's phase) leaves the total as it is.
    let (a, b) = (with_chunk("32b", 32, 1024), with_chunk("32b", 32, 2048));
    let (ma, mb) = (&a.with_checkpointing.memory, &b.with_checkpointing.memory);
    assert_eq!(
        (ma.peak_phase, mb.peak_phase),
        ("layers' backward", "layers' backward")
    );
    assert_eq!(mb.loss - ma.loss, 1024 * 152064 * 2);
    assert_eq!(ma.total, mb.total);
    // 0.5B without checkpointing on one GPU peaks at the head and loss (a 152k vocabulary
    // beside a 896-wide model): the longer chunk adds its bytes and their 10% workspace.
    let (a, b) = (with_chunk("0.5b", 1, 1024), with_chunk("0.5b", 1, 2048));
    let (ma, mb) = (
        &a.without_checkpointing.memory,
        &b.without_checkpointing.memory,
    );
    assert_eq!(
        (ma.peak_phase, mb.peak_phase),
        ("head and loss", "head and loss")
    );
    let more = 1024 * 151936 * 2;
    assert!(
        (mb.total - ma.total).abs_diff(more + more / 10) <= 1,
        "{} {}",
        mb.total,
        ma.total
    );
}

#[test]
fn a_tied_head_keeps_its_gradient_to_the_embedding() {
    // Qwen2.5-0.5B ties its head to the embedding: the head's fp32 gradient waits through the
    // layers' backward to be added into the embedding's.
    let tied = preset("0.5b");
    assert!(tied.tie_word_embeddings);
    let untied = Qwen2Config {
        tie_word_embeddings: false,
        ..tied.clone()
    };
    let base = limo("0.5b", 2);
    let at = |cfg: &Qwen2Config| plan(cfg, base.workload, base.hardware).unwrap();
    let (t, u) = (at(&tied), at(&untied));
    let embed = padded(151936 * 896, 2);
    let (mt, mu) = (&t.with_checkpointing.memory, &u.with_checkpointing.memory);
    assert_eq!(mt.embedding - mu.embedding, embed * 4);
    // The head group's weight, gradient and chunk product: the embedding's size when tied,
    // the head and the final norm when not.
    assert_eq!(mt.head, embed * 8);
    assert_eq!(mu.head, padded(151936 * 896 + 896, 2) * 8);
}

#[test]
fn the_32b_recipe_needs_more_than_8_gpus_of_80_gib() {
    let at = |gpus| limo("32b", gpus).with_checkpointing.memory.fits;
    assert!(!at(8));
    assert!(at(16));
    assert!(at(32));
    // Without checkpointing 16k tokens of 64 layers do not fit at any world size.
    assert!(!limo("32b", 32).without_checkpointing.memory.fits);
}

#[test]
fn step_time_follows_six_flops_per_parameter_per_token() {
    let p = limo("7b", 8);
    let dense = 6.0 * (p.params - p.vocab * p.hidden) as f64 * p.tokens_per_step as f64;
    let flops = p.without_checkpointing.step_flops;
    // Attention adds a share at 16k tokens, never less than the dense part.
    assert!(
        flops > dense && flops < 1.5 * dense,
        "{flops:e} vs {dense:e}"
    );
    let seconds = flops / (8.0 * 989e12 * 0.4);
    assert!((p.without_checkpointing.step_seconds - seconds).abs() < 1e-9);
}

/// The LIMO recipe with the optimizer state on the host.
fn limo_offload(shape: &str, gpus: u64, host_mem: Option<u64>) -> Plan {
    let base = limo(shape, gpus);
    let offload = Offload {
        optimizer_offload: true,
        host_mem,
        ..Offload::default()
    };
    plan_with_offload(&preset(shape), base.workload, base.hardware, offload).unwrap()
}

#[test]
fn offload_moves_master_and_moments_to_the_host() {
    for gpus in [8, 16, 32] {
        let (on, off) = (limo("32b", gpus), limo_offload("32b", gpus, None));
        let shard = on.shard_params;
        for (a, b) in [
            (
                &on.with_checkpointing.memory,
                &off.with_checkpointing.memory,
            ),
            (
                &on.without_checkpointing.memory,
                &off.without_checkpointing.memory,
            ),
        ] {
            assert_eq!((b.master, b.adam), (0, 0));
            assert_eq!(
                (a.weight_shard, a.grad_shard),
                (b.weight_shard, b.grad_shard)
            );
            // Before the workspace allowance the GPU holds exactly 12 B per shard
            // parameter less; the allowance is 10% of what is there.
            let (sa, sb) = (a.total - a.workspace, b.total - b.workspace);
            assert_eq!(sa - sb, 12 * shard);
            let saved = (a.total - b.total) as f64;
            assert!((saved - 1.1 * 12.0 * shard as f64).abs() <= 1.0, "{saved}");
            assert_eq!(b.margin, 80 * GIB as i64 - b.total as i64);
        }
        // Host: master 4 + moments 8 + pinned staging 4 + 2 bytes per shard parameter.
        let h = &off.host;
        assert_eq!(
            (h.master, h.adam, h.pinned_per_gpu),
            (4 * shard, 8 * shard, 6 * shard)
        );
        assert_eq!(h.total_per_gpu, 18 * shard);
        assert_eq!(h.gpus_per_node, 8);
        assert_eq!(h.total_per_node, 8 * h.total_per_gpu);
        assert_eq!(h.pinned_per_node, 8 * h.pinned_per_gpu);
        assert_eq!((h.fits, h.margin), (None, None));
        // Without offload the plan counts no host memory.
        assert_eq!(on.host.total_per_node, 0);
        assert!(!on.optimizer_offload && off.optimizer_offload);
    }
}

#[test]
fn with_offload_the_32b_recipe_fits_on_8_gpus_of_80_gib() {
    let (on, off) = (limo("32b", 8), limo_offload("32b", 8, None));
    assert!(!on.with_checkpointing.memory.fits && on.with_checkpointing.memory.margin < 0);
    assert!(off.with_checkpointing.memory.fits && off.with_checkpointing.memory.margin > 0);
    assert!(!off.without_checkpointing.memory.fits);
}

#[test]
fn nodes_smaller_than_gpus_per_node_and_the_host_limit() {
    // 4 GPUs: one node of 4, not 8.
    let p = limo_offload("7b", 4, Some(GIB));
    assert_eq!(p.host.gpus_per_node, 4);
    assert_eq!(p.host.total_per_node, 4 * p.host.total_per_gpu);
    assert_eq!(p.host.fits, Some(false));
    assert!(p.host.margin.unwrap() < 0);
    let p = limo_offload("7b", 4, Some(2048 * GIB));
    assert_eq!(p.host.fits, Some(true));
    assert_eq!(
        p.host.margin.unwrap(),
        (2048 * GIB - p.host.total_per_node) as i64
    );
    let bad = Offload {
        gpus_per_node: 0,
        ..Offload::default()
    };
    let base = limo("7b", 4);
    assert!(plan_with_offload(&preset("7b"), base.workload, base.hardware, bad).is_err());
}

#[test]
fn shapes_are_inferred_from_names() {
    assert_eq!(infer_shape("Qwen2.5-32B-Instruct"), Some("32b"));
    assert_eq!(infer_shape("/models/qwen2.5-1.5b"), Some("1.5b"));
    assert_eq!(infer_shape("configs/limo-qwen2.5-0.5b.toml"), Some("0.5b"));
    assert_eq!(infer_shape("Qwen2.5-7B"), Some("7b"));
    assert_eq!(infer_shape("Qwen2.5-72B-Instruct"), None);
    assert_eq!(infer_shape("my-model"), None);
}

#[test]
fn memory_sizes_parse() {
    assert_eq!(parse_bytes("80GiB").unwrap(), 80 * GIB);
    assert_eq!(parse_bytes("80").unwrap(), 80 * GIB);
    assert_eq!(parse_bytes("80 GB").unwrap(), 80_000_000_000);
    assert_eq!(parse_bytes("1.5TiB").unwrap(), 1536 * GIB);
    assert_eq!(parse_bytes("83886080KiB").unwrap(), 80 * GIB);
    assert_eq!(parse_bytes("2KB").unwrap(), 2000);
    assert!(parse_bytes("80XB").is_err());
    assert!(parse_bytes("GiB").is_err());
    assert!(parse_bytes("0").is_err());
}
