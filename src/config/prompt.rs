//! sandstorm.json's `system_prompt`: a prompt of its own in place of the
//! SDK's, or the SDK's Claude Code preset with text appended; and
//! `system_prompt_append`, text added to either.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The agent's system prompt, in the SDK's own shapes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SystemPrompt {
    /// A prompt that replaces the SDK's default.
    Text(String),
    /// The SDK's Claude Code prompt, with text appended.
    Preset(PresetPrompt),
}

/// `{"type": "preset", "preset": "claude_code", "append": "..."}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PresetPrompt {
    /// Always `preset`.
    #[serde(rename = "type")]
    pub kind: PresetKind,
    /// The preset; the SDK has one, `claude_code`.
    pub preset: PresetName,
    /// Text added after the preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
}

/// The `type` of a preset prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PresetKind {
    /// `preset`.
    #[serde(rename = "preset")]
    Preset,
}

/// The SDK's presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PresetName {
    /// Claude Code's own system prompt.
    #[serde(rename = "claude_code")]
    ClaudeCode,
}

impl<'de> Deserialize<'de> for SystemPrompt {
    // An untagged enum's error would only say that nothing matched; a
    // string or an object each get their own, naming the inner field.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(text) => Ok(SystemPrompt::Text(text)),
            object @ Value::Object(_) => PresetPrompt::deserialize(object)
                .map(SystemPrompt::Preset)
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "expected a string, or a preset object \
                 {\"type\": \"preset\", \"preset\": \"claude_code\", \"append\": \"...\"}",
            )),
        }
    }
}

/// The prompt the agent gets: `prompt` with `append` added as Python
/// Sandstorm 0.9.2 does it. A preset's own `append` comes first, then
/// `append`, a blank line between them; `append` alone is the whole prompt.
pub(crate) fn effective(
    prompt: Option<&SystemPrompt>,
    append: Option<&str>,
) -> Option<SystemPrompt> {
    let append = append.filter(|text| !text.is_empty());
    match (prompt, append) {
        (prompt, None) => prompt.cloned(),
        (None, Some(append)) => Some(SystemPrompt::Text(append.to_owned())),
        (Some(SystemPrompt::Text(text)), Some(append)) => {
            Some(SystemPrompt::Text(format!("{text}\n\n{append}")))
        }
        (Some(SystemPrompt::Preset(preset)), Some(append)) => {
            Some(SystemPrompt::Preset(PresetPrompt {
                append: Some(match &preset.append {
                    Some(own) => format!("{own}\n\n{append}"),
                    None => append.to_owned(),
                }),
                ..preset.clone()
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preset(append: Option<&str>) -> SystemPrompt {
        SystemPrompt::Preset(PresetPrompt {
            kind: PresetKind::Preset,
            preset: PresetName::ClaudeCode,
            append: append.map(str::to_owned),
        })
    }

    #[test]
    fn append_goes_after_the_prompt_or_the_presets_own_append() {
        let text = SystemPrompt::Text("Be brief.".into());
        assert_eq!(
            effective(Some(&text), Some("Cite sources.")),
            Some(SystemPrompt::Text("Be brief.\n\nCite sources.".into()))
        );
        assert_eq!(
            effective(Some(&preset(Some("Own."))), Some("More."))
                .and_then(|p| serde_json::to_value(p).ok()),
            Some(serde_json::json!({
                "type": "preset", "preset": "claude_code", "append": "Own.\n\nMore."
            }))
        );
        assert_eq!(
            effective(Some(&preset(None)), Some("More.")),
            Some(preset(Some("More.")))
        );
        assert_eq!(
            effective(None, Some("Only this.")),
            Some(SystemPrompt::Text("Only this.".into()))
        );
        assert_eq!(effective(Some(&text), None), Some(text.clone()));
        assert_eq!(effective(None, None), None);
    }

    #[test]
    fn a_preset_is_checked_field_by_field() {
        let parse = |json: &str| serde_json::from_str::<SystemPrompt>(json);
        assert_eq!(
            parse(r#"{"type":"preset","preset":"claude_code"}"#).ok(),
            Some(preset(None))
        );
        let error = parse(r#"{"type":"preset","preset":"other"}"#).expect_err("refused");
        assert!(error.to_string().contains("claude_code"), "{error}");
        let error =
            parse(r#"{"type":"preset","preset":"claude_code","apend":"x"}"#).expect_err("refused");
        assert!(error.to_string().contains("apend"), "{error}");
        let error = parse("3").expect_err("refused");
        assert!(
            error.to_string().contains("a string, or a preset"),
            "{error}"
        );
    }
}
