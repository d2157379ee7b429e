//! KV-cache generation against the no-cache forward: the cached logits of every step equal
//! `next_token_logits` over the whole sequence (f64), greedy decoding picks the same tokens,
//! and seeded sampling depends on the seed and the prompt only.

use candle_core::{DType, Device, Tensor, D};
use limo_model::checkpoint::load_checkpoint;
use limo_model::generate::{generate, CachedModel, Generated, Generator, KvCache, Sampling};
use limo_model::init::write_random_checkpoint;
use limo_model::model::next_token_logits;
use limo_model::{ModelWeights, Qwen2Config};

const VOCAB: usize = 211;

/// A random f64 model: hidden 32, 2 layers, 4 query / 2 kv heads, an untied head, and weights
/// large enough that the logits are far from uniform.
fn tiny_model(dtype: DType) -> (Qwen2Config, ModelWeights) {
    let config = serde_json::json!({
        "model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "initializer_range": 0.3
    });
    let dir = tempfile::tempdir().unwrap();
    write_random_checkpoint(dir.path(), &config, DType::F64, 7, usize::MAX).unwrap();
    load_checkpoint(dir.path(), dtype, &Device::Cpu).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![3, 17, 99, 4, 150],
        vec![1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144],
        vec![200, 7],
    ]
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Greedy decoding without a cache: the argmax of `next_token_logits` over the growing
/// sequence, `steps` times.
fn reference_greedy(cfg: &Qwen2Config, w: &ModelWeights, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    for _ in 0..steps {
        let next = next_token_logits(cfg, w, &ids)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        ids.push(next);
    }
    ids[prompt.len()..].to_vec()
}

#[test]
fn cached_logits_equal_the_full_forward_at_every_step() {
    let (cfg, w) = tiny_model(DType::F64);
    let prompts = prompts();
    let model = CachedModel::new(&cfg, &w);
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut seqs = prompts.clone();
    let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let mut logits = {
        let mut c: Vec<&mut KvCache> = caches.iter_mut().collect();
        model.prefill(&refs, &mut c).unwrap()
    };
    let mut worst = 0.0f64;
    for step in 0..12 {
        for (i, seq) in seqs.iter().enumerate() {
            let full = next_token_logits(&cfg, &w, seq).unwrap();
            let diff = max_abs_diff(&logits.get(i).unwrap(), &full);
            assert!(diff < 1e-10, "step {step}, prompt {i}: {diff:e}");
            worst = worst.max(diff);
        }
        let next: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        for (seq, &t) in seqs.iter_mut().zip(&next) {
            seq.push(t);
        }
        let mut c: Vec<&mut KvCache> = caches.iter_mut().collect();
        logits = model.decode(&next, &mut c).unwrap();
    }
    for (cache, seq) in caches.iter().zip(&seqs) {
        assert_eq!(cache.len(), seq.len());
        let (k, v) = cache.layer(1).unwrap().unwrap();
        assert_eq!(k.dims(), &[seq.len(), 2, 8]);
        assert_eq!(v.dims(), &[seq.len(), 2, 8]);
    }
    println!("max |cached - full| logits over 12 steps x 3 prompts: {worst:e}");

    // `generate` greedy picks the no-cache argmax tokens, token by token.
    let out = generate(&cfg, &w, &prompts, 12, &[], Sampling::greedy()).unwrap();
    for (i, (g, seq)) in out.iter().zip(&seqs).enumerate() {
        let expected = reference_greedy(&cfg, &w, &prompts[i], 12);
        assert_eq!(&seq[prompts[i].len()..], expected.as_slice());
        assert_eq!(
            g,
            &Generated {
                ids: expected,
                stopped: false
            },
            "prompt {i}"
        );
    }
}

#[test]
fn stop_ids_end_a_sequence_and_are_not_included() {
    let (cfg, w) = tiny_model(DType::F64);
    let prompts = prompts();
    let full = generate(&cfg, &w, &prompts, 12, &[], Sampling::greedy()).unwrap();
    let stop = full[0].ids[4];
    let out = generate(&cfg, &w, &prompts, 12, &[stop], Sampling::greedy()).unwrap();
    for (f, o) in full.iter().zip(&out) {
        match f.ids.iter().position(|&t| t == stop) {
            Some(at) => assert_eq!(
                o,
                &Generated {
                    ids: f.ids[..at].to_vec(),
                    stopped: true
                }
            ),
            None => assert_eq!(o, f),
        }
    }
    assert!(out[0].stopped && out[0].ids.len() <= 4);
    let none = generate(&cfg, &w, &prompts, 0, &[], Sampling::greedy()).unwrap();
    assert!(none.iter().all(|g| g.ids.is_empty() && !g.stopped));
    assert!(generate(&cfg, &w, &[vec![]], 4, &[], Sampling::greedy()).is_err());
    assert!(generate(&cfg, &w, &[vec![VOCAB as u32]], 4, &[], Sampling::greedy()).is_err());
}

#[test]
fn sequences_joining_a_running_batch_decode_the_same() {
    let (cfg, w) = tiny_model(DType::F64);
    let prompts = prompts();
    let batch = generate(&cfg, &w, &prompts, 10, &[], Sampling::greedy()).unwrap();
    let mut generator = Generator::new(&cfg, &w, 10, &[], Sampling::greedy()).unwrap();
    let mut results: Vec<Option<Generated>> = vec![None; 3];
    generator.add(0, prompts[0].clone(), 0).unwrap();
    let mut steps = 0;
    while !generator.is_empty() {
        if steps == 3 {
            generator.add(1, prompts[1].clone(), 0).unwrap();
        }
        if steps == 6 {
            generator.add(2, prompts[2].clone(), 0).unwrap();
        }
        for (key, g) in generator.step().unwrap() {
            results[key] = Some(g);
        }
        steps += 1;
    }
    let results: Vec<Generated> = results.into_iter().map(Option::unwrap).collect();
    assert_eq!(results, batch);
}

#[test]
fn seeded_sampling_is_reproducible_and_independent_of_the_batch() {
    let (cfg, w) = tiny_model(DType::F64);
    let prompts = prompts();
    let hot = Sampling {
        temperature: 1.0,
        top_p: 0.9,
        seed: 42,
    };
    let a = generate(&cfg, &w, &prompts, 12, &[], hot).unwrap();
    let b = generate(&cfg, &w, &prompts, 12, &[], hot).unwrap();
    assert_eq!(a, b, "same seed, same samples");

    // Reversed order, and each prompt alone: the same continuation per prompt.
    let reversed: Vec<Vec<u32>> = prompts.iter().rev().cloned().collect();
    let r = generate(&cfg, &w, &reversed, 12, &[], hot).unwrap();
    for (i, g) in r.iter().rev().enumerate() {
        assert_eq!(g, &a[i], "prompt {i} reversed");
        let alone = generate(&cfg, &w, &prompts[i..i + 1], 12, &[], hot).unwrap();
        assert_eq!(alone[0], a[i], "prompt {i} alone");
    }

    // Another seed samples something else; a repeated prompt gets its own stream.
    let other = generate(&cfg, &w, &prompts, 12, &[], Sampling { seed: 43, ..hot }).unwrap();
    assert_ne!(other, a);
    let twice = generate(
        &cfg,
        &w,
        &[prompts[0].clone(), prompts[0].clone()],
        12,
        &[],
        hot,
    )
    .unwrap();
    assert_eq!(twice[0], a[0]);
    assert_ne!(twice[1], twice[0]);
    let greedy = generate(&cfg, &w, &prompts, 12, &[], Sampling::greedy()).unwrap();
    assert_ne!(a, greedy, "temperature 1 differs from greedy somewhere");

    // A tiny nucleus keeps the most likely token only: greedy.
    let narrow = Sampling {
        temperature: 1.0,
        top_p: 1e-9,
        seed: 5,
    };
    assert_eq!(
        generate(&cfg, &w, &prompts, 12, &[], narrow).unwrap(),
        greedy
    );
    // Very low temperature over the whole vocabulary is greedy too.
    let cold = Sampling {
        temperature: 1e-6,
        top_p: 1.0,
        seed: 9,
    };
    assert_eq!(generate(&cfg, &w, &prompts, 12, &[], cold).unwrap(), greedy);

    let bad = Sampling { top_p: 0.0, ..hot };
    assert!(generate(&cfg, &w, &prompts, 4, &[], bad).is_err());
}

/// Greedy generation of `steps` tokens per prompt, each sequence checked against
/// [`reference_greedy`].
fn greedy_matching_reference(
    cfg: &Qwen2Config,
    w: &ModelWeights,
    prompts: &[Vec<u32>],
    steps: usize,
) -> Vec<Generated> {
    let out = generate(cfg, w, prompts, steps, &[], Sampling::greedy()).unwrap();
    for (i, g) in out.iter().enumerate() {
        assert_eq!(
            g.ids,
            reference_greedy(cfg, w, &prompts[i], steps),
            "prompt {i}"
        );
    }
    out
}

#[test]
fn f32_cache_matches_f32_full_forward() {
    let (cfg, w) = tiny_model(DType::F32);
    greedy_matching_reference(&cfg, &w, &prompts(), 8);
}

#[test]
fn caches_grow_past_their_first_allocation() {
    let (cfg, w) = tiny_model(DType::F64);
    let prompts = [vec![5, 6, 7], vec![9; 70]];
    let out = greedy_matching_reference(&cfg, &w, &prompts, 150);
    for (i, g) in out.iter().enumerate() {
        let distinct: std::collections::BTreeSet<u32> = g.ids.iter().copied().collect();
        println!("prompt {i}: {} distinct tokens of 150", distinct.len());
    }
}

/// Runs `generator` until it is empty, putting each result at its key.
fn finish(generator: &mut Generator, results: &mut [Option<Generated>]) {
    while !generator.is_empty() {
        for (key, g) in generator.step().unwrap() {
            assert!(
                results[key].replace(g).is_none(),
                "key {key} finished twice"
            );
        }
    }
}

#[test]
fn a_continued_sequence_goes_on_as_if_never_stopped() {
    let (cfg, w) = tiny_model(DType::F64);
    let prompts = prompts();
    let stop = [17u32];
    let hot = Sampling {
        temperature: 1.0,
        top_p: 0.9,
        seed: 0,
    };
    for sampling in [Sampling::greedy(), hot] {
        let whole = generate(&cfg, &w, &prompts, 12, &stop, sampling).unwrap();
        // Cut after every number of steps: what finished stays, the rest goes on in a new
        // generator (a rerun of an evaluation) from its tokens and stream state.
        for cut in 0..12 {
            let mut first = Generator::new(&cfg, &w, 12, &stop, sampling).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                first.add(i, p.clone(), 1000 + i as u64).unwrap();
            }
            let mut results: Vec<Option<Generated>> = vec![None; prompts.len()];
            for _ in 0..cut {
                for (key, g) in first.step().unwrap() {
                    results[key] = Some(g);
                }
            }
            let mut second = Generator::new(&cfg, &w, 12, &stop, sampling).unwrap();
            let mut continued = 0;
            for (key, from) in first.in_progress() {
                assert_eq!(from.ids.len(), cut, "key {key} after {cut} steps");
                second
                    .add_continued(key, prompts[key].clone(), from)
                    .unwrap();
                continued += 1;
            }
            assert_eq!(continued + results.iter().flatten().count(), prompts.len());
            finish(&mut second, &mut results);
            let mut reference = Generator::new(&cfg, &w, 12, &stop, sampling).unwrap();
            for (i, p) in prompts.iter().enumerate() {
                reference.add(i, p.clone(), 1000 + i as u64).unwrap();
            }
            let mut expected = vec![None; prompts.len()];
            finish(&mut reference, &mut expected);
            assert_eq!(results, expected, "{sampling:?} cut after {cut} steps");
            if sampling.temperature == 0.0 {
                let whole: Vec<Option<Generated>> = whole.iter().cloned().map(Some).collect();
                assert_eq!(results, whole, "greedy cut after {cut} steps");
            }
        }
    }
}

#[test]
fn a_continuation_past_the_limit_or_a_stop_id_is_refused() {
    let (cfg, w) = tiny_model(DType::F64);
    let mut g = Generator::new(&cfg, &w, 4, &[17], Sampling::greedy()).unwrap();
    let from = |ids: Vec<u32>| limo_model::generate::Continuation { ids, rng: 0 };
    let err = g
        .add_continued(0, vec![1, 2], from(vec![5; 4]))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("4 tokens generated, the most is 4"),
        "{err}"
    );
    let err = g
        .add_continued(1, vec![1, 2], from(vec![5, 17]))
        .unwrap_err();
    assert!(err.to_string().contains("stop id 17"), "{err}");
    g.add_continued(2, vec![1, 2], from(vec![5; 3])).unwrap();
    let done = g.step().unwrap();
    assert_eq!(done.len(), 1, "one more token reaches the limit");
    assert_eq!(done[0].1.ids.len(), 4);
    assert_eq!(&done[0].1.ids[..3], &[5, 5, 5]);
}
