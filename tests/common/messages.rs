//! Reading the Agent SDK's messages, whether they came from the runner's
//! stdout or from the product's SSE stream.

use serde_json::Value;

/// The messages whose `type` is `kind`.
pub fn of_type<'a>(messages: &'a [Value], kind: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m.get("type").and_then(Value::as_str) == Some(kind))
        .collect()
}

/// The `system` init message, if any.
pub fn init(messages: &[Value]) -> Option<&Value> {
    messages
        .iter()
        .find(|m| m["type"] == "system" && m["subtype"] == "init")
}

/// Every `tool_use` block of `assistant` messages, as `(name, input)`.
pub fn tool_uses(messages: &[Value]) -> Vec<(&str, &Value)> {
    content_blocks(messages, "assistant", "tool_use")
        .filter_map(|b| Some((b["name"].as_str()?, &b["input"])))
        .collect()
}

/// Every `tool_result` block of `user` messages, as `(text, is_error)`.
pub fn tool_results(messages: &[Value]) -> Vec<(String, bool)> {
    content_blocks(messages, "user", "tool_result")
        .map(|b| (block_text(&b["content"]), b["is_error"] == true))
        .collect()
}

/// All `text` blocks of `assistant` messages, joined by newlines.
pub fn assistant_text(messages: &[Value]) -> String {
    content_blocks(messages, "assistant", "text")
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn content_blocks<'a>(
    messages: &'a [Value],
    message_type: &'a str,
    block_type: &'a str,
) -> impl Iterator<Item = &'a Value> {
    of_type(messages, message_type)
        .into_iter()
        .filter_map(|m| m["message"]["content"].as_array())
        .flatten()
        .filter(move |b| b["type"] == block_type)
}

/// A tool result's content: a string or a list of text blocks.
fn block_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}
