//! Turning one raw record into a conversation, for each supported dataset format.
//!
//! LIMO format: the assistant's reply is the `solution` alone. In GAIR/LIMO the solution already
//! holds the full reasoning chain ending in `\boxed{...}`; `answer` is metadata, checked for type
//! but never appended, even when the solution has no `\boxed{` (rewriting a curated target
//! silently would change what the model learns).

use serde_json::{Map, Value};

use crate::config::{Columns, Format};
use crate::error::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

/// A validated conversation: an optional leading system prompt, then turns ending with the
/// assistant. Every assistant turn is non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub system: Option<String>,
    pub turns: Vec<Message>,
}

/// Reads a record in the given format.
pub fn parse_record(
    record: &Value,
    format: Format,
    columns: &Columns,
) -> Result<Conversation, FieldError> {
    let object = record.as_object().ok_or_else(|| {
        FieldError::record(format!("expected a JSON object, found {}", kind(record)))
    })?;
    let system = optional_string(object, &columns.system)?.filter(|s| !s.is_empty());
    let turns = match format {
        Format::Limo => limo_turns(object, columns)?,
        Format::Alpaca => alpaca_turns(object, columns)?,
        Format::Messages => return messages_conversation(object, columns, system),
        Format::Tokenized => {
            return Err(FieldError::record(
                "tokenized rows carry no conversation; the trainer reads them as they are",
            ))
        }
    };
    Ok(Conversation { system, turns })
}

fn limo_turns(object: &Map<String, Value>, columns: &Columns) -> Result<Vec<Message>, FieldError> {
    let question = required_text(object, &columns.question)?;
    let solution = required_text(object, &columns.solution)?;
    // `answer` is optional metadata; a present answer must still be a string or a number.
    if let Some(answer) = object.get(&columns.answer) {
        if !(answer.is_string() || answer.is_number() || answer.is_null()) {
            return Err(FieldError::field(
                &columns.answer,
                format!("expected a string, found {}", kind(answer)),
            ));
        }
    }
    Ok(vec![
        Message {
            role: Role::User,
            content: question,
        },
        Message {
            role: Role::Assistant,
            content: solution,
        },
    ])
}

fn alpaca_turns(
    object: &Map<String, Value>,
    columns: &Columns,
) -> Result<Vec<Message>, FieldError> {
    let instruction = required_text(object, &columns.instruction)?;
    let input = optional_string(object, &columns.input)?.unwrap_or_default();
    let output = required_text(object, &columns.output)?;
    // LLaMA-Factory's alpaca converter joins instruction and input with one newline.
    let user = if input.is_empty() {
        instruction
    } else {
        format!("{instruction}\n{input}")
    };
    Ok(vec![
        Message {
            role: Role::User,
            content: user,
        },
        Message {
            role: Role::Assistant,
            content: output,
        },
    ])
}

fn messages_conversation(
    object: &Map<String, Value>,
    columns: &Columns,
    column_system: Option<String>,
) -> Result<Conversation, FieldError> {
    let field = &columns.messages;
    let list = match object.get(field) {
        None => return Err(missing(field, object)),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(FieldError::field(
                field,
                format!("expected a list of messages, found {}", kind(other)),
            ))
        }
    };
    let mut system = column_system;
    let mut turns = Vec::with_capacity(list.len());
    for (index, item) in list.iter().enumerate() {
        let at = |what: &str| format!("{field}[{index}].{what}");
        let message = item.as_object().ok_or_else(|| {
            FieldError::field(
                format!("{field}[{index}]"),
                format!("expected an object, found {}", kind(item)),
            )
        })?;
        let text = |key: &str| match message.get(key) {
            Some(Value::String(text)) => Ok(text.as_str()),
            Some(other) => Err(FieldError::field(
                at(key),
                format!("expected a string, found {}", kind(other)),
            )),
            None => Err(FieldError::field(at(key), "missing")),
        };
        let role = text(&columns.role)?;
        let content = text(&columns.content)?.to_string();
        let role = match role {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(FieldError::field(
                    at(&columns.role),
                    format!("unknown role `{other}` (expected system, user or assistant)"),
                ))
            }
        };
        if role == Role::System && index == 0 {
            // A leading system message wins over the `system` column.
            system = Some(content);
            continue;
        }
        if content.trim().is_empty() && role != Role::System {
            return Err(FieldError::field(
                at(&columns.content),
                format!("empty {} message", role.as_str()),
            ));
        }
        turns.push(Message { role, content });
    }
    match turns.last() {
        None => return Err(FieldError::field(field, "no user or assistant messages")),
        Some(last) if last.role != Role::Assistant => {
            return Err(FieldError::field(
                field,
                "the last message must be from the assistant (nothing after it would be learned)",
            ))
        }
        Some(_) => {}
    }
    Ok(Conversation { system, turns })
}

/// A string field that must be present and not blank.
fn required_text(object: &Map<String, Value>, field: &str) -> Result<String, FieldError> {
    match object.get(field) {
        None => Err(missing(field, object)),
        Some(Value::String(text)) if text.trim().is_empty() => {
            Err(FieldError::field(field, "empty"))
        }
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(FieldError::field(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

fn optional_string(object: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(FieldError::field(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

/// "missing" plus the fields that are there: the usual cause is a column name to map.
fn missing(field: &str, object: &Map<String, Value>) -> FieldError {
    let present: Vec<&str> = object.keys().map(String::as_str).collect();
    let has = match present.is_empty() {
        true => "record has no fields".to_string(),
        false => format!("record has: {}", present.join(", ")),
    };
    FieldError::field(
        field,
        format!("missing ({has}; map columns with --column/`columns`)"),
    )
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(record: Value, format: Format) -> Result<Conversation, FieldError> {
        parse_record(&record, format, &Columns::default())
    }

    #[test]
    fn limo_record_becomes_user_then_assistant() {
        let conv = parse(
            json!({"question": "1+1?", "solution": "2. \\boxed{2}", "answer": "2"}),
            Format::Limo,
        )
        .unwrap();
        assert_eq!(conv.system, None);
        assert_eq!(
            conv.turns[0],
            Message {
                role: Role::User,
                content: "1+1?".into()
            }
        );
        // The solution is the target as is; the answer is not appended.
        assert_eq!(
            conv.turns[1],
            Message {
                role: Role::Assistant,
                content: "2. \\boxed{2}".into()
            }
        );
        let no_box = parse(
            json!({"question": "q", "solution": "s", "answer": "2"}),
            Format::Limo,
        )
        .unwrap();
        assert_eq!(no_box.turns[1].content, "s");
    }

    #[test]
    fn limo_errors_name_the_field() {
        let err = parse(json!({"question": "q"}), Format::Limo).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("solution"));
        assert!(
            err.message.contains("missing") && err.message.contains("question"),
            "{}",
            err.message
        );
        let err = parse(json!({"question": "q", "solution": 3}), Format::Limo).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("solution"));
        assert!(err.message.contains("expected a string, found a number"));
        let err = parse(json!({"question": "q", "solution": "  \n"}), Format::Limo).unwrap_err();
        assert_eq!(
            (err.field.as_deref(), err.message.as_str()),
            (Some("solution"), "empty")
        );
        let err = parse(
            json!({"question": "q", "solution": "s", "answer": ["x"]}),
            Format::Limo,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("answer"));
        let err = parse(json!(["q", "s"]), Format::Limo).unwrap_err();
        assert!(err.message.contains("expected a JSON object, found a list"));
    }

    #[test]
    fn alpaca_joins_instruction_and_input() {
        let conv = parse(
            json!({"instruction": "Add.", "input": "1 1", "output": "2"}),
            Format::Alpaca,
        )
        .unwrap();
        assert_eq!(conv.turns[0].content, "Add.\n1 1");
        let conv = parse(
            json!({"instruction": "Hi", "input": "", "output": "Hello", "system": "Be brief."}),
            Format::Alpaca,
        )
        .unwrap();
        assert_eq!(conv.turns[0].content, "Hi");
        assert_eq!(conv.system.as_deref(), Some("Be brief."));
    }

    #[test]
    fn messages_multi_turn_with_system_and_bad_roles() {
        let conv = parse(
            json!({"messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"}
            ]}),
            Format::Messages,
        )
        .unwrap();
        assert_eq!(conv.system.as_deref(), Some("S"));
        assert_eq!(conv.turns.len(), 4);
        assert_eq!(conv.turns[3].role, Role::Assistant);

        let err = parse(
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            Format::Messages,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("messages[0].role"));
        assert!(err.message.contains("unknown role `tool`"));
        let err = parse(
            json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}),
            Format::Messages,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("messages[1].content"));
        let err = parse(
            json!({"messages": [{"role": "user", "content": "q"}]}),
            Format::Messages,
        )
        .unwrap_err();
        assert!(err
            .message
            .contains("last message must be from the assistant"));
        let err = parse(
            json!({"messages": [{"role": "user", "content": 5}]}),
            Format::Messages,
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("messages[0].content"));
        let err = parse(json!({"messages": "hi"}), Format::Messages).unwrap_err();
        assert!(err.message.contains("expected a list of messages"));
    }

    #[test]
    fn custom_columns_are_used() {
        let mut columns = Columns::default();
        columns.set("question", "problem").unwrap();
        columns.set("messages", "conversations").unwrap();
        columns.set("role", "from").unwrap();
        columns.set("content", "value").unwrap();
        let conv = parse_record(
            &json!({"problem": "p", "solution": "s"}),
            Format::Limo,
            &columns,
        )
        .unwrap();
        assert_eq!(conv.turns[0].content, "p");
        let conv = parse_record(
            &json!({"conversations": [{"from": "user", "value": "u"}, {"from": "assistant", "value": "a"}]}),
            Format::Messages,
            &columns,
        )
        .unwrap();
        assert_eq!(conv.turns[1].content, "a");
    }
}
