//! The keys every test uses. They have the providers' shapes (E2B's `e2b_`
//! prefix, which the emulator checks; Anthropic's `sk-ant-`) and are long
//! enough for the server's redactor to treat them as secrets, so a test
//! that finds one in a log or an event has found a leak.

/// An E2B key; the emulator accepts it (it accepts any `e2b_` key unless
/// started with one of its own).
pub const E2B_KEY: &str = "e2b_0123456789abcdef0123456789abcdef";

/// An Anthropic key. Never valid: the model is scripted or unreachable.
pub const ANTHROPIC_KEY: &str = "sk-ant-tests-3f9c1a7d5b2e";
