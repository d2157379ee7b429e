//! Greedy decoding of held-out problems and boxed-answer accuracy, through limo-eval's
//! generation and grader: how the default run shows what training changed.

use limo_data::ChatTokenizer;
use limo_eval::grader::{extract_answer, is_equivalent};
use limo_eval::run::prompt_ids;
use limo_model::generate::{generate, Sampling};
use limo_model::{ModelWeights, Qwen2Config};

use crate::synthetic::Problem;

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
