//! The Qwen2.5 chat template, rendered natively.
//!
//! Reference: chat_template.jinja of Qwen2.5-Instruct (tools-free branch). A test renders the
//! jinja file itself with minijinja and checks byte equality. The rendering is split into
//! segments that say which text is a training target: each assistant message's content, its
//! closing `<|im_end|>` and the newline after it (LLaMA-Factory's `qwen` template); system, user
//! and the `<|im_start|>assistant\n` header are context only.

use crate::format::{Conversation, Role};

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
/// What the template prints when a conversation has no system message.
pub const QWEN_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// A piece of rendered text and whether its tokens are learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub target: bool,
}

/// Renders a conversation. `default_system` is used when the conversation carries no system
/// prompt; `None` there leaves the template's own default (Qwen's).
pub fn render(conversation: &Conversation, default_system: Option<&str>) -> Vec<Segment> {
    let system = conversation
        .system
        .as_deref()
        .or(default_system)
        .unwrap_or(QWEN_DEFAULT_SYSTEM);
    let mut segments = Vec::with_capacity(2 * conversation.turns.len());
    let mut prompt = format!("{IM_START}system\n{system}{IM_END}\n");
    for message in &conversation.turns {
        prompt.push_str(IM_START);
        prompt.push_str(message.role.as_str());
        prompt.push('\n');
        if message.role == Role::Assistant {
            segments.push(Segment {
                text: std::mem::take(&mut prompt),
                target: false,
            });
            segments.push(Segment {
                text: format!("{}{IM_END}\n", message.content),
                target: true,
            });
        } else {
            prompt.push_str(&message.content);
            prompt.push_str(IM_END);
            prompt.push('\n');
        }
    }
    if !prompt.is_empty() {
        segments.push(Segment {
            text: prompt,
            target: false,
        });
    }
    segments
}

/// The full rendered text, as `apply_chat_template(messages, tokenize=False)` returns it.
pub fn rendered_text(segments: &[Segment]) -> String {
    segments.iter().map(|s| s.text.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Message;

    fn user(content: &str) -> Message {
        Message {
            role: Role::User,
            content: content.into(),
        }
    }
    fn assistant(content: &str) -> Message {
        Message {
            role: Role::Assistant,
            content: content.into(),
        }
    }

    #[test]
    fn targets_are_assistant_content_end_and_newline() {
        let conv = Conversation {
            system: None,
            turns: vec![user("Q1"), assistant("A1"), user("Q2"), assistant("A2")],
        };
        let segments = render(&conv, Some("SYS"));
        let expected = vec![
            Segment { text: "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n".into(), target: false },
            Segment { text: "A1<|im_end|>\n".into(), target: true },
            Segment { text: "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n".into(), target: false },
            Segment { text: "A2<|im_end|>\n".into(), target: true },
        ];
        assert_eq!(segments, expected);
    }

    #[test]
    fn system_precedence_example_then_config_then_qwen() {
        let mut conv = Conversation {
            system: None,
            turns: vec![user("q"), assistant("a")],
        };
        assert!(rendered_text(&render(&conv, None)).starts_with(&format!(
            "<|im_start|>system\n{QWEN_DEFAULT_SYSTEM}<|im_end|>"
        )));
        assert!(
            rendered_text(&render(&conv, Some("C"))).starts_with("<|im_start|>system\nC<|im_end|>")
        );
        conv.system = Some("E".into());
        assert!(
            rendered_text(&render(&conv, Some("C"))).starts_with("<|im_start|>system\nE<|im_end|>")
        );
    }
}
