//! Greedy decoding of held-out problems and boxed-answer accuracy: how the default run shows
//! what training changed.

use limo_data::format::{Conversation, Message, Role};
use limo_data::template::{render, rendered_text, IM_START};
use limo_data::ChatTokenizer;
use limo_model::model::next_token_logits;
use limo_model::{ModelWeights, Qwen2Config};

use crate::synthetic::{boxed_answer, Problem};

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

/// The token ids of the prompt the model answers: system, user question, assistant header.
pub fn prompt_ids(
    tokenizer: &ChatTokenizer,
    system: Option<&str>,
    question: &str,
) -> anyhow::Result<Vec<u32>> {
    let conversation = Conversation {
        system: None,
        turns: vec![Message {
            role: Role::User,
            content: question.to_string(),
        }],
    };
    let text = format!(
        "{}{IM_START}assistant\n",
        rendered_text(&render(&conversation, system))
    );
    Ok(tokenizer.encode(&text)?)
}

/// Greedy continuation of `prompt` until `<|im_end|>` or `max_new` tokens.
pub fn greedy(
    cfg: &Qwen2Config,
    w: &ModelWeights,
    prompt: &[u32],
    stop: u32,
    max_new: usize,
) -> anyhow::Result<Vec<u32>> {
    let mut ids = prompt.to_vec();
    let mut generated = Vec::new();
    for _ in 0..max_new {
        let next = next_token_logits(cfg, w, &ids)?
            .argmax(0)?
            .to_scalar::<u32>()?;
        if next == stop {
            break;
        }
        generated.push(next);
        ids.push(next);
    }
    Ok(generated)
}

pub fn evaluate(
    cfg: &Qwen2Config,
    w: &ModelWeights,
    tokenizer: &ChatTokenizer,
    system: Option<&str>,
    problems: &[Problem],
    max_new: usize,
) -> anyhow::Result<Evaluation> {
    let mut correct = 0;
    let mut samples = Vec::new();
    for p in problems {
        let prompt = prompt_ids(tokenizer, system, &p.question)?;
        let out = greedy(cfg, w, &prompt, tokenizer.im_end_id(), max_new)?;
        let text = tokenizer.decode(&out)?;
        if boxed_answer(&text).as_deref() == Some(p.answer.as_str()) {
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
