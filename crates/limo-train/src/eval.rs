//! Greedy decoding of held-out problems and boxed-answer accuracy, through limo-eval's
//! generation and grader: how the default run shows what training changed.

use limo_data::ChatTokenizer;
use limo_eval::grader::{extract_answer, is_equivalent};
use limo_eval::run::prompt_ids;
use limo_model::generate::{generate, Sampling};
use limo_model::{ModelWeights, Qwen2Config};

use crate::config::TrainConfig;
use crate::source::BUILTIN_ARITHMETIC;
use crate::synthetic::{self, Problem};
use crate::zero3::ShardedModel;

pub struct Evaluation {
    pub correct: usize,
    pub total: usize,
    /// (question, generated text) of every problem.
    pub samples: Vec<(String, String)>,
}

impl Evaluation {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

pub fn evaluate(
    cfg: &Qwen2Config,
    w: &ModelWeights,
    tokenizer: &ChatTokenizer,
    system: Option<&str>,
    problems: &[Problem],
    max_new: usize,
) -> anyhow::Result<Evaluation> {
    // LIMO's evaluation path (limo-eval): batched KV-cache greedy decoding, graded by the rule-
    // based grader; the generated problems are one more benchmark.
    let prompts = problems
        .iter()
        .map(|p| prompt_ids(tokenizer, system, &p.question))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = [tokenizer.im_end_id()];
    let outputs = generate(cfg, w, &prompts, max_new, &stop, Sampling::greedy())?;
    let mut correct = 0;
    let mut samples = Vec::new();
    for (p, out) in problems.iter().zip(outputs) {
        let text = tokenizer.decode(&out.ids)?;
        if extract_answer(&text).is_some_and(|a| is_equivalent(&a, &p.answer)) {
            correct += 1;
        }
        samples.push((p.question.clone(), text));
    }
    Ok(Evaluation {
        correct,
        total: problems.len(),
        samples,
    })
}

/// Gathers the whole model (every rank takes part) and evaluates it on rank 0.
pub fn evaluate_on_lead(
    config: &TrainConfig,
    model: &ShardedModel,
    tokenizer: &ChatTokenizer,
    held_out: &[Problem],
) -> anyhow::Result<Option<Evaluation>> {
    let weights: ModelWeights = model.full_weights()?;
    if model.rank() != 0 {
        return Ok(None);
    }
    Ok(Some(evaluate(
        &model.cfg,
        &weights,
        tokenizer,
        config.data.system.as_deref(),
        held_out,
        config.output.eval_max_new_tokens,
    )?))
}

/// Evaluates the trained weights and writes `<output>/eval.json` (rank 0).
pub fn evaluate_after(
    config: &TrainConfig,
    model: &ShardedModel,
    tokenizer: &ChatTokenizer,
    held_out: &[Problem],
    before: Evaluation,
) -> anyhow::Result<Option<(Evaluation, Evaluation)>> {
    let Some(after) = evaluate_on_lead(config, model, tokenizer, held_out)? else {
        return Ok(None);
    };
    let samples: Vec<serde_json::Value> = after
        .samples
        .iter()
        .map(|(q, a)| serde_json::json!({"question": q, "generated": a}))
        .collect();
    let report = serde_json::json!({
        "problems": held_out.len(),
        "accuracy_before": before.accuracy(),
        "accuracy_after": after.accuracy(),
        "samples_after": samples,
    });
    std::fs::write(
        config.output.dir.join("eval.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(Some((before, after)))
}

/// Held-out problems for the generated data set: another seed, minus any training question.
pub fn held_out_problems(config: &TrainConfig) -> Vec<Problem> {
    if config.output.eval_examples == 0 {
        return Vec::new();
    }
    if config.data.path != BUILTIN_ARITHMETIC {
        tracing::warn!(
            "output.eval_examples: held-out problems exist only for data.path = \"{}\"; none \
             are evaluated (`limo eval --model OUT/model` evaluates the export)",
            BUILTIN_ARITHMETIC
        );
        return Vec::new();
    }
    let train: std::collections::HashSet<String> =
        synthetic::problems(config.train.seed, synthetic::TRAIN_PROBLEMS)
            .into_iter()
            .map(|p| p.question)
            .collect();
    synthetic::problems(
        config.train.seed.wrapping_add(1),
        4 * config.output.eval_examples,
    )
    .into_iter()
    .filter(|p| !train.contains(&p.question))
    .take(config.output.eval_examples)
    .collect()
}
