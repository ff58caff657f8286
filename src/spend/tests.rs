use std::sync::Arc;

use super::prices::{PriceTable, base_id};
use super::usage::{Usage, UsageReader};
use super::{Cap, Caps, Refusal, SpendMeter, cost};

const EVENTS: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"claude-sonnet-4-5-20250929\",\"usage\":{\"input_tokens\":1000,\"output_tokens\":1,\"cache_creation_input_tokens\":2000,\"cache_read_input_tokens\":3000}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"message_delta is only text here\"}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":500}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

fn table() -> Arc<PriceTable> {
    Arc::new(PriceTable::default())
}

#[test]
fn model_ids_lose_their_provider_wrapping_and_date() {
    for (id, base) in [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1", "claude-opus-4-1"),
        (
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "claude-sonnet-4-5",
        ),
        (
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            "claude-3-5-haiku",
        ),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("Claude-3-7-Sonnet-Latest", "claude-3-7-sonnet"),
    ] {
        assert_eq!(base_id(id), base, "{id}");
    }
}

#[test]
fn aliases_are_told_from_ids() {
    for alias in [
        "sonnet",
        "Opus",
        "haiku",
        "opusplan",
        "sonnet[1m]",
        "default",
    ] {
        assert!(super::prices::is_alias(alias), "{alias}");
    }
    for id in ["claude-sonnet-4-5", "sonnet-x", "anthropic/claude-opus-4.5"] {
        assert!(!super::prices::is_alias(id), "{id}");
    }
}

#[test]
fn known_models_have_list_prices_and_overrides_win() {
    let list = PriceTable::default();
    let sonnet = list.get("claude-sonnet-4-5-20250929").expect("priced");
    assert_eq!((sonnet.input, sonnet.output), (3.0, 15.0));
    assert_eq!(list.get("claude-haiku-4-5").map(|p| p.output), Some(5.0));
    assert!(list.get("scripted-model").is_none());

    let table = PriceTable::new(Some(
        r#"{"scripted-model": {"input": 1, "output": 2, "cache_write": 3, "cache_read": 4},
            "claude-haiku-4-5-20251001": {"input": 9, "output": 9, "cache_write": 9, "cache_read": 9}}"#,
    ))
    .expect("valid overrides");
    assert_eq!(table.get("scripted-model").map(|p| p.output), Some(2.0));
    assert_eq!(table.get("claude-haiku-4-5").map(|p| p.input), Some(9.0));
}

#[test]
fn bad_overrides_name_the_variable() {
    for bad in [
        "[1]",
        r#"{"m": {"input": 1}}"#,
        r#"{"m": {"input": -1, "output": 1, "cache_write": 1, "cache_read": 1}}"#,
        r#"{"m": {"input": 1, "output": 1, "cache_write": 1, "cache_read": 1, "extra": 1}}"#,
    ] {
        let error = PriceTable::new(Some(bad)).expect_err(bad);
        assert!(error.contains("SANDSTORM_MODEL_PRICES"), "{error}");
    }
}

#[test]
fn an_event_stream_is_read_across_any_chunking() {
    for size in [1, 7, 64, EVENTS.len()] {
        let mut reader = UsageReader::new(Some("text/event-stream; charset=utf-8"), None);
        let mut completed = 0;
        for chunk in EVENTS.as_bytes().chunks(size) {
            completed += usize::from(reader.push(chunk));
        }
        assert_eq!(
            completed, 1,
            "message_stop completes once (chunks of {size})"
        );
        let reading = reader.finish();
        assert_eq!(reading.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            (
                reading.usage.input_tokens,
                reading.usage.output_tokens,
                reading.usage.cache_creation_input_tokens,
                reading.usage.cache_read_input_tokens
            ),
            (1000, 500, 2000, 3000),
            "chunks of {size}"
        );
    }
}

#[test]
fn a_json_answer_is_read_when_it_is_whole() {
    let body = br#"{"model":"claude-haiku-4-5","usage":{"input_tokens":10,"output_tokens":20}}"#;
    let mut reader = UsageReader::new(Some("application/json"), Some(body.len()));
    assert!(!reader.push(&body[..10]));
    assert!(reader.push(&body[10..]));
    assert_eq!(reader.reading().usage.output_tokens, 20);
    assert_eq!(reader.reading().model.as_deref(), Some("claude-haiku-4-5"));
}

#[test]
fn long_content_lines_are_not_held() {
    let mut reader = UsageReader::new(Some("text/event-stream"), None);
    let long = format!("data: {}\n", "x".repeat(200_000));
    reader.push(long.as_bytes());
    reader.push(EVENTS.as_bytes());
    assert_eq!(reader.finish().usage.output_tokens, 500);
}

#[test]
fn cost_uses_every_kind_of_token() {
    let price = PriceTable::default()
        .get("claude-opus-4-5")
        .expect("priced");
    let usage = Usage {
        input_tokens: 1_000_000,
        output_tokens: 1_000_000,
        cache_creation_input_tokens: 1_000_000,
        cache_read_input_tokens: 1_000_000,
        cache_creation: None,
    };
    assert!((cost(&price, &usage) - (5.0 + 25.0 + 6.25 + 0.5)).abs() < 1e-9);

    // Sonnet 4.5 past 200K prompt tokens is billed at its long-context price.
    let sonnet = PriceTable::default()
        .get("claude-sonnet-4-5")
        .expect("priced");
    let long = Usage {
        input_tokens: 250_000,
        ..Usage::default()
    };
    assert!((cost(&sonnet, &long) - 250_000.0 * 6.0 / 1e6).abs() < 1e-9);
}

fn reading(model: &str, input: u64, output: u64) -> super::usage::Reading {
    super::usage::Reading {
        model: Some(model.to_owned()),
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
        saw_usage: true,
        complete: true,
    }
}

#[test]
fn a_cost_cap_refuses_the_call_after_the_one_that_crossed_it() {
    // Haiku 4.5: 100 in + 20 out = $0.0002 a call.
    let meter = SpendMeter::new(
        Caps {
            max_cost_usd: Some(0.0005),
            max_tokens: None,
        },
        table(),
    );
    for _ in 0..3 {
        meter
            .admit(Some("claude-haiku-4-5"))
            .expect("under the cap");
        meter.record(None, &reading("claude-haiku-4-5", 100, 20), true);
    }
    let refusal = meter
        .admit(Some("claude-haiku-4-5"))
        .expect_err("over the cap");
    assert!(matches!(
        refusal,
        Refusal::CapReached {
            cap: Cap::MaxCostUsd(_),
            ..
        }
    ));
    assert!(
        refusal.to_string().contains("max_cost_usd of $0.0005"),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("$0.000600"), "{refusal}");
    let spend = meter.spend();
    assert_eq!((spend.calls, spend.refused_calls), (3, 1));
    assert_eq!(spend.exceeded, Some(Cap::MaxCostUsd(0.0005)));
}

#[test]
fn a_token_cap_counts_every_token() {
    let meter = SpendMeter::new(
        Caps {
            max_cost_usd: None,
            max_tokens: Some(240),
        },
        table(),
    );
    meter.admit(Some("anything")).expect("first call");
    meter.record(None, &reading("unpriced", 100, 20), true);
    meter.admit(None).expect("120 of 240");
    meter.record(None, &reading("unpriced", 100, 20), true);
    assert!(matches!(
        meter.admit(None),
        Err(Refusal::CapReached {
            cap: Cap::MaxTokens(240),
            ..
        })
    ));
    assert_eq!(
        meter
            .spend()
            .unpriced_models
            .into_iter()
            .collect::<Vec<_>>(),
        ["unpriced"]
    );
}

#[test]
fn a_cost_cap_needs_a_priced_model() {
    let meter = SpendMeter::new(
        Caps {
            max_cost_usd: Some(1.0),
            max_tokens: None,
        },
        table(),
    );
    assert_eq!(
        meter.admit(Some("scripted-model")),
        Err(Refusal::Unpriced {
            model: "scripted-model".into()
        })
    );
    assert_eq!(meter.admit(None), Err(Refusal::NoModel));
    assert!(meter.admit(Some("claude-sonnet-4-5")).is_ok());
}

#[test]
fn the_stricter_cap_wins() {
    let config = Caps {
        max_cost_usd: Some(1.0),
        max_tokens: None,
    };
    let request = Caps {
        max_cost_usd: Some(5.0),
        max_tokens: Some(100),
    };
    assert_eq!(
        config.stricter(request),
        Caps {
            max_cost_usd: Some(1.0),
            max_tokens: Some(100)
        }
    );
}

#[test]
fn an_answer_whose_usage_cannot_be_read_closes_a_capped_run() {
    let unread = super::usage::Reading::default();
    let capped = SpendMeter::new(
        Caps {
            max_cost_usd: None,
            max_tokens: Some(1_000_000),
        },
        table(),
    );
    // An API error cost nothing; a success that cannot be read might have.
    capped.record(None, &unread, false);
    capped.admit(None).expect("an error answer costs nothing");
    capped.record(None, &unread, true);
    assert_eq!(capped.admit(None), Err(Refusal::Unmetered));
    assert_eq!(capped.spend().unmetered_calls, 1);

    let uncapped = SpendMeter::new(Caps::default(), table());
    uncapped.record(None, &unread, true);
    assert!(
        uncapped.admit(None).is_ok(),
        "without a cap nothing is refused"
    );
}

/// An AWS event stream frame as Bedrock sends one: the event, base64, in
/// a `{"bytes": …}` payload with one header. CRCs are left zero: they are
/// not checked.
fn aws_frame(event: &str) -> Vec<u8> {
    use base64::Engine;
    let payload = format!(
        r#"{{"bytes":"{}"}}"#,
        base64::engine::general_purpose::STANDARD.encode(event)
    );
    let header = b"\x0b:event-type\x07\x00\x05chunk";
    let total = 12 + header.len() + payload.len() + 4;
    let mut frame = Vec::new();
    frame.extend_from_slice(&u32::try_from(total).expect("small").to_be_bytes());
    frame.extend_from_slice(&u32::try_from(header.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(header);
    frame.extend_from_slice(payload.as_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame
}

#[test]
fn a_bedrock_event_stream_is_read_across_any_chunking() {
    let stream: Vec<u8> = [
        r#"{"type":"message_start","message":{"model":"claude-haiku-4-5","usage":{"input_tokens":40,"output_tokens":1}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
        r#"{"type":"message_delta","usage":{"output_tokens":9}}"#,
        r#"{"type":"message_stop"}"#,
    ]
    .iter()
    .flat_map(|event| aws_frame(event))
    .collect();
    for size in [1, 5, 100, stream.len()] {
        let mut reader = UsageReader::new(Some("application/vnd.amazon.eventstream"), None);
        let completed: usize = stream
            .chunks(size)
            .map(|chunk| usize::from(reader.push(chunk)))
            .sum();
        assert_eq!(completed, 1, "chunks of {size}");
        let reading = reader.finish();
        assert_eq!(
            (reading.usage.input_tokens, reading.usage.output_tokens),
            (40, 9),
            "chunks of {size}"
        );
        assert_eq!(reading.model.as_deref(), Some("claude-haiku-4-5"));
    }
}
