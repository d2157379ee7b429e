//! The native Qwen2.5 renderer against the reference chat_template.jinja (rendered with
//! minijinja the way transformers does: trim_blocks, lstrip_blocks), and the target labels.

mod common;

use limo_data::format::{parse_record, Conversation, Role};
use limo_data::template::{render, rendered_text};
use limo_data::{encode_record, Columns, DataConfig, Format, IGNORE_INDEX, LIMO_SYSTEM_PROMPT};
use serde_json::{json, Value};

/// What `tokenizer.apply_chat_template(messages, tokenize=False)` gives.
fn jinja_render(messages: &[Value]) -> String {
    let source =
        std::fs::read_to_string(common::tokenizer_dir().join("chat_template.jinja")).unwrap();
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_template("chat", &source).unwrap();
    env.get_template("chat")
        .unwrap()
        .render(minijinja::context! { messages => messages, add_generation_prompt => false })
        .unwrap()
}

/// The message list the jinja template sees for a conversation, system prompt included.
fn as_jinja_messages(conversation: &Conversation, default_system: Option<&str>) -> Vec<Value> {
    let mut messages = Vec::new();
    if let Some(system) = conversation.system.as_deref().or(default_system) {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in &conversation.turns {
        messages.push(json!({"role": m.role.as_str(), "content": m.content}));
    }
    messages
}

fn math_config() -> DataConfig {
    let mut config = DataConfig::new(
        common::data("math.jsonl").display().to_string(),
        Format::Limo,
    );
    config.columns.set("question", "problem").unwrap();
    config
}

fn math_rows() -> Vec<Value> {
    std::fs::read_to_string(common::data("math.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn limo_example_renders_like_the_jinja_template_byte_for_byte() {
    let config = math_config();
    for row in math_rows().iter().take(50) {
        let conversation = parse_record(row, Format::Limo, &config.columns).unwrap();
        let ours = rendered_text(&render(&conversation, Some(LIMO_SYSTEM_PROMPT)));
        let reference = jinja_render(&as_jinja_messages(&conversation, Some(LIMO_SYSTEM_PROMPT)));
        assert_eq!(ours, reference);
        let question = row["problem"].as_str().unwrap();
        assert!(ours.starts_with(&format!(
            "<|im_start|>system\n{LIMO_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        )));
    }
}

#[test]
fn messages_alpaca_and_default_system_render_like_jinja() {
    let columns = Columns::default();
    let records = [
        (
            json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}),
            Format::Messages,
        ),
        (
            json!({"messages": [
                {"role": "system", "content": "Terse."},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "system", "content": "Now verbose."},
                {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": " six\n"}
            ]}),
            Format::Messages,
        ),
        (
            json!({"instruction": "Add.", "input": "4 9", "output": "13"}),
            Format::Alpaca,
        ),
    ];
    for (record, format) in &records {
        let conversation = parse_record(record, *format, &columns).unwrap();
        for default_system in [None, Some(LIMO_SYSTEM_PROMPT)] {
            let ours = rendered_text(&render(&conversation, default_system));
            // With no system at all, the jinja template inserts Qwen's default itself.
            assert_eq!(
                ours,
                jinja_render(&as_jinja_messages(&conversation, default_system)),
                "{record}"
            );
        }
    }
}

#[test]
fn labels_cover_exactly_the_answer_im_end_and_newline() {
    let tokenizer = common::tokenizer();
    let config = math_config();
    for row in math_rows().iter().take(50) {
        let example = encode_record(row, &config, tokenizer).unwrap();
        assert_eq!(example.input_ids.len(), example.labels.len());
        let first_target = example
            .labels
            .iter()
            .position(|&l| l != IGNORE_INDEX)
            .unwrap();
        // Targets are one contiguous run up to the end, equal to the input ids there.
        assert!(example.labels[first_target..]
            .iter()
            .all(|&l| l != IGNORE_INDEX));
        for (id, label) in example
            .input_ids
            .iter()
            .zip(&example.labels)
            .skip(first_target)
        {
            assert_eq!(i64::from(*id), *label);
        }
        // The context ends with the assistant header, the targets decode to solution + <|im_end|> + \n.
        let context = tokenizer
            .decode(&example.input_ids[..first_target])
            .unwrap();
        assert!(
            context.ends_with("<|im_end|>\n<|im_start|>assistant\n"),
            "{context:?}"
        );
        let target = tokenizer
            .decode(&example.input_ids[first_target..])
            .unwrap();
        assert_eq!(
            target,
            format!("{}<|im_end|>\n", row["solution"].as_str().unwrap())
        );
        let n = example.input_ids.len();
        assert_eq!(&example.input_ids[n - 2..], &[151645, 198]);
    }
}

#[test]
fn multi_turn_targets_every_assistant_turn_only() {
    let tokenizer = common::tokenizer();
    let config = DataConfig::new("unused", Format::Messages);
    let record = json!({"messages": [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}
    ]});
    let example = encode_record(&record, &config, tokenizer).unwrap();
    let targets: Vec<u32> = example
        .input_ids
        .iter()
        .zip(&example.labels)
        .filter(|(_, &l)| l != IGNORE_INDEX)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(
        tokenizer.decode(&targets).unwrap(),
        "4<|im_end|>\n6<|im_end|>\n"
    );
    let conversation = parse_record(&record, Format::Messages, &config.columns).unwrap();
    assert_eq!(
        conversation
            .turns
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count(),
        2
    );
}

#[test]
fn segment_encoding_equals_whole_string_encoding_on_math500() {
    let tokenizer = common::tokenizer();
    let config = math_config();
    for (i, row) in math_rows().iter().enumerate() {
        let example = encode_record(row, &config, tokenizer).unwrap();
        let conversation = parse_record(row, Format::Limo, &config.columns).unwrap();
        let whole = tokenizer
            .encode(&rendered_text(&render(
                &conversation,
                Some(LIMO_SYSTEM_PROMPT),
            )))
            .unwrap();
        assert_eq!(example.input_ids, whole, "row {}", i + 1);
    }
}

#[test]
fn leading_whitespace_reply_keeps_the_llama_factory_split() {
    // The one documented case where segments and whole-string encoding differ: the reply's
    // leading "\n" would merge with the header's "\n" as one token ("\n\n") in a whole-string pass.
    let tokenizer = common::tokenizer();
    let config = DataConfig::new("unused", Format::Limo);
    let example = encode_record(
        &json!({"question": "q", "solution": "\nA"}),
        &config,
        tokenizer,
    )
    .unwrap();
    let first_target = example
        .labels
        .iter()
        .position(|&l| l != IGNORE_INDEX)
        .unwrap();
    assert_eq!(
        &example.input_ids[first_target - 2..first_target],
        &[77091, 198]
    ); // "assistant", "\n"
    assert_eq!(
        tokenizer
            .decode(&example.input_ids[first_target..])
            .unwrap(),
        "\nA<|im_end|>\n"
    );
}
