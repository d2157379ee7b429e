//! Every problem of the nine benchmarks is asked as transformers would ask it:
//! `tokenizer.apply_chat_template([system, user], add_generation_prompt=True)` with LIMO's
//! system prompt, rendered here from the tokenizer's own chat_template.jinja with minijinja
//! (trim_blocks, lstrip_blocks, as transformers renders it) and tokenized whole.

use limo_data::ChatTokenizer;
use limo_eval::benchmarks::{load, NAMES};
use limo_eval::run::{prompt_ids, LIMO_SYSTEM_PROMPT};
use serde_json::json;

#[test]
fn prompts_are_the_chat_templates_generation_prompts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/qwen2.5-tokenizer");
    let dir = dir.as_path();
    let source = std::fs::read_to_string(dir.join("chat_template.jinja")).unwrap();
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_template("chat", &source).unwrap();
    let template = env.get_template("chat").unwrap();
    let tokenizer = ChatTokenizer::from_path(dir).unwrap();
    let mut checked = 0;
    for name in NAMES {
        for problem in load(name).unwrap() {
            for system in [Some(LIMO_SYSTEM_PROMPT), None] {
                let mut messages = Vec::new();
                if let Some(system) = system {
                    messages.push(json!({"role": "system", "content": system}));
                }
                messages.push(json!({"role": "user", "content": problem.question}));
                let text = template
                    .render(
                        minijinja::context! { messages => messages, add_generation_prompt => true },
                    )
                    .unwrap();
                let ours = prompt_ids(&tokenizer, system, &problem.question).unwrap();
                assert_eq!(
                    ours,
                    tokenizer.encode(&text).unwrap(),
                    "{name} {}: {text:?}",
                    problem.id
                );
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        2 * 2035,
        "every problem of the nine, with and without a system prompt"
    );
}
