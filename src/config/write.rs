//! A typed service config back to JSON, pretty-printed, fields in gRFC A6's order.

use std::fmt::Write as _;

use super::duration::format_duration;
use super::{ConfigRetryPolicy, MethodConfig, ServiceConfig};
use crate::code::code_name;
use crate::retry_policy::HedgingPolicy;

/// A JSON string literal, escaped.
pub(super) fn string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A JSON number that parses back to the same `f64` (shortest exact form).
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        // Integral: `2`, not `2.0`, as configs are written by hand.
        return format!("{value:.0}");
    }
    serde_json::Number::from_f64(value).map_or_else(|| "null".to_owned(), |n| n.to_string())
}

pub(super) fn write(config: &ServiceConfig) -> String {
    let mut members = Vec::new();
    if !config.method_configs.is_empty() {
        let entries: Vec<String> = config.method_configs.iter().map(method_config).collect();
        members.push(format!("\"methodConfig\": [\n{}\n  ]", entries.join(",\n")));
    }
    if let Some(throttling) = config.retry_throttling {
        members.push(format!(
            "\"retryThrottling\": {{ \"maxTokens\": {}, \"tokenRatio\": {} }}",
            number(throttling.max_tokens),
            number(throttling.token_ratio),
        ));
    }
    if members.is_empty() {
        return "{}\n".to_owned();
    }
    let mut out = String::from("{\n");
    for (i, member) in members.iter().enumerate() {
        let separator = if i + 1 < members.len() { "," } else { "" };
        let _ = writeln!(out, "  {member}{separator}");
    }
    out.push_str("}\n");
    out
}

fn method_config(config: &MethodConfig) -> String {
    let names: Vec<String> = config
        .names
        .iter()
        .map(|name| {
            let mut fields = Vec::new();
            if let Some(service) = &name.service {
                fields.push(format!("\"service\": {}", string(service)));
            }
            if let Some(method) = &name.method {
                fields.push(format!("\"method\": {}", string(method)));
            }
            if fields.is_empty() {
                "{}".to_owned()
            } else {
                format!("{{ {} }}", fields.join(", "))
            }
        })
        .collect();
    let mut members = vec![format!("\"name\": [{}]", names.join(", "))];
    if let Some(timeout) = config.timeout {
        members.push(format!(
            "\"timeout\": {}",
            string(&format_duration(timeout))
        ));
    }
    if let Some(policy) = &config.retry_policy {
        members.push(retry_policy(policy));
    }
    if let Some(policy) = &config.hedging_policy {
        members.push(hedging_policy(policy));
    }
    format!("    {{\n      {}\n    }}", members.join(",\n      "))
}

fn retry_policy(policy: &ConfigRetryPolicy) -> String {
    let codes: Vec<String> = policy
        .retryable_status_codes
        .iter()
        .map(|code| string(code_name(code)))
        .collect();
    let fields = [
        format!("\"maxAttempts\": {}", policy.max_attempts),
        format!(
            "\"initialBackoff\": {}",
            string(&format_duration(policy.initial_backoff))
        ),
        format!(
            "\"maxBackoff\": {}",
            string(&format_duration(policy.max_backoff))
        ),
        format!(
            "\"backoffMultiplier\": {}",
            number(policy.backoff_multiplier)
        ),
        format!("\"retryableStatusCodes\": [{}]", codes.join(", ")),
    ];
    format!(
        "\"retryPolicy\": {{\n        {}\n      }}",
        fields.join(",\n        ")
    )
}

/// What gRFC A6 says of a hedging policy; the adaptive delay and the extra-load cap, which a
/// service config cannot say, are left out.
fn hedging_policy(policy: &HedgingPolicy) -> String {
    let codes: Vec<String> = policy
        .non_fatal_codes()
        .iter()
        .map(|code| string(code_name(code)))
        .collect();
    let fields = [
        format!("\"maxAttempts\": {}", policy.max_attempts()),
        format!(
            "\"hedgingDelay\": {}",
            string(&format_duration(policy.delay()))
        ),
        format!("\"nonFatalStatusCodes\": [{}]", codes.join(", ")),
    ];
    format!(
        "\"hedgingPolicy\": {{\n        {}\n      }}",
        fields.join(",\n        ")
    )
}
