//! JSON to a typed [`ServiceConfig`], every error placed at its exact path.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tonic::Code;

use super::duration::{MALFORMED, parse_duration};
use super::{
    ConfigRetryPolicy, ConfigThrottling, MethodConfig, MethodName, ServiceConfig, check_duration,
    duplicate,
};
use crate::code::{code_from_name, code_from_number};
use crate::error::ConfigError;
use crate::retry_policy::{HedgingPolicy, MAX_HEDGED_ATTEMPTS};

type Object = Map<String, Value>;

/// The field of an error about the document as a whole.
const ROOT: &str = "service config";

/// The longest value an error quotes.
const SHOWN_CHARS: usize = 80;

pub(super) fn parse(json: &str, max_attempts_cap: u32) -> Result<ServiceConfig, ConfigError> {
    let root: Value = serde_json::from_str(json).map_err(|err| {
        ConfigError::new(
            ROOT,
            truncate(&format!("{json:?}")),
            format!("must be valid JSON ({err})"),
        )
    })?;
    let root = object(&root, ROOT)?;
    let mut config = ServiceConfig::default();
    if let Some(list) = get(root, "methodConfig") {
        for (i, entry) in array(list, "methodConfig")?.iter().enumerate() {
            let path = format!("methodConfig[{i}]");
            let parsed = method_config(entry, &path, max_attempts_cap, &config)?;
            config.push(parsed);
        }
    }
    if let Some(throttling) = get(root, "retryThrottling") {
        config.retry_throttling = Some(retry_throttling(throttling, "retryThrottling")?);
    }
    Ok(config)
}

fn method_config(
    value: &Value,
    path: &str,
    max_attempts_cap: u32,
    config: &ServiceConfig,
) -> Result<MethodConfig, ConfigError> {
    let entry = object(value, path)?;
    let names_path = format!("{path}.name");
    let listed = match get(entry, "name") {
        None => None,
        Some(list) => Some(array(list, &names_path)?),
    };
    let Some(listed) = listed.filter(|list| !list.is_empty()) else {
        return Err(ConfigError::new(
            names_path,
            if listed.is_some() { "[]" } else { "nothing" },
            "must list at least one name (an entry without names applies to nothing)",
        ));
    };
    let mut names: Vec<MethodName> = Vec::with_capacity(listed.len());
    // Positions in this entry; earlier entries are indexed by the config: linear in the names.
    let mut seen: HashMap<MethodName, usize> = HashMap::with_capacity(listed.len());
    for (j, value) in listed.iter().enumerate() {
        let name_path = format!("{names_path}[{j}]");
        let name = method_name(value, &name_path)?;
        let first = seen
            .get(&name)
            .map(|k| format!("{names_path}[{k}]"))
            .or_else(|| config.place_of(&name));
        if let Some(first) = first {
            return Err(duplicate(&name, &first).within(&name_path));
        }
        seen.insert(name.clone(), j);
        names.push(name);
    }

    let timeout = match get(entry, "timeout") {
        None => None,
        Some(value) => {
            let timeout_path = format!("{path}.timeout");
            let timeout = duration(value, &timeout_path)?;
            check_duration("timeout", timeout)
                .map_err(|err| relocate(err, &timeout_path, value))?;
            Some(timeout)
        }
    };
    let retry_policy = match get(entry, "retryPolicy") {
        None => None,
        Some(value) => Some(retry_policy(
            value,
            &format!("{path}.retryPolicy"),
            max_attempts_cap,
        )?),
    };
    let hedging_policy = match get(entry, "hedgingPolicy") {
        None => None,
        Some(value) => Some(hedging_policy(
            value,
            &format!("{path}.hedgingPolicy"),
            max_attempts_cap.min(MAX_HEDGED_ATTEMPTS),
        )?),
    };
    if retry_policy.is_some() && hedging_policy.is_some() {
        return Err(ConfigError::new(
            path.to_owned(),
            "retryPolicy and hedgingPolicy",
            format!(
                "must have one of retryPolicy and hedgingPolicy, not both (gRFC A6), for {}",
                names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(MethodConfig {
        names,
        retry_policy,
        hedging_policy,
        timeout,
    })
}

/// `{"service": "pkg.Svc", "method": "M"}`; `""`, `null` and absent are the same.
fn method_name(value: &Value, path: &str) -> Result<MethodName, ConfigError> {
    let name = object(value, path)?;
    let part = |key: &str| -> Result<Option<&str>, ConfigError> {
        match get(name, key) {
            None => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(error(&format!("{path}.{key}"), other, "must be a string")),
        }
    };
    match (part("service")?, part("method")?) {
        (None, None) => Ok(MethodName::default()),
        (None, Some(_)) => Err(ConfigError::new(
            format!("{path}.service"),
            get(name, "service").map_or_else(|| "nothing".to_owned(), shown),
            "must be set when method is set (only the default name leaves it empty)",
        )),
        (Some(service), None) => MethodName::service(service).map_err(|err| err.within(path)),
        (Some(service), Some(method)) => {
            MethodName::method(service, method).map_err(|err| err.within(path))
        }
    }
}

fn retry_policy(
    value: &Value,
    path: &str,
    max_attempts_cap: u32,
) -> Result<ConfigRetryPolicy, ConfigError> {
    let policy = object(value, path)?;
    let field = |key: &str| -> Result<(&Value, String), ConfigError> {
        let field_path = format!("{path}.{key}");
        match get(policy, key) {
            Some(value) => Ok((value, field_path)),
            None => Err(ConfigError::new(
                field_path,
                "nothing",
                "is required in a retryPolicy (gRFC A6)",
            )),
        }
    };

    let (value, at) = field("maxAttempts")?;
    let max_attempts = max_attempts(value, &at, max_attempts_cap)?;
    let (value, at) = field("initialBackoff")?;
    let initial_backoff = duration(value, &at)?;
    let (value, at) = field("maxBackoff")?;
    let max_backoff = duration(value, &at)?;
    let (value, at) = field("backoffMultiplier")?;
    let backoff_multiplier = number(value, &at)?;
    let (value, at) = field("retryableStatusCodes")?;
    let mut codes = Vec::new();
    for (k, code) in array(value, &at)?.iter().enumerate() {
        codes.push(status_code(code, &format!("{at}[{k}]"))?);
    }

    ConfigRetryPolicy::new(
        max_attempts,
        initial_backoff,
        max_backoff,
        backoff_multiplier,
        codes,
    )
    .map_err(|err| match get(policy, err.field()) {
        Some(value) => {
            let at = format!("{path}.{}", err.field());
            relocate(err, &at, value)
        }
        None => err.within(path),
    })
}

/// `{"maxAttempts": 3, "hedgingDelay": "0.5s", "nonFatalStatusCodes": ["UNAVAILABLE"]}`: only
/// `maxAttempts` is required.
fn hedging_policy(value: &Value, path: &str, cap: u32) -> Result<HedgingPolicy, ConfigError> {
    let policy = object(value, path)?;
    let at = |key: &str| format!("{path}.{key}");
    let Some(value) = get(policy, "maxAttempts") else {
        return Err(ConfigError::new(
            at("maxAttempts"),
            "nothing",
            "is required in a hedgingPolicy (gRFC A6)",
        ));
    };
    let mut builder =
        HedgingPolicy::builder().max_attempts(max_attempts(value, &at("maxAttempts"), cap)?);
    if let Some(value) = get(policy, "hedgingDelay") {
        builder = builder.delay(duration(value, &at("hedgingDelay"))?);
    }
    if let Some(value) = get(policy, "nonFatalStatusCodes") {
        let codes_at = at("nonFatalStatusCodes");
        let mut codes = Vec::new();
        for (k, code) in array(value, &codes_at)?.iter().enumerate() {
            codes.push(status_code(code, &format!("{codes_at}[{k}]"))?);
        }
        builder = builder.non_fatal_codes(codes);
    }
    builder.build().map_err(|err| {
        let key = match err.field() {
            "non_fatal_codes" => "nonFatalStatusCodes",
            _ => "maxAttempts",
        };
        match get(policy, key) {
            Some(value) => relocate(err, &at(key), value),
            None => err.within(path),
        }
    })
}

/// An integer >= 2; above the cap it is lowered to the cap, with a warning.
fn max_attempts(value: &Value, path: &str, cap: u32) -> Result<u32, ConfigError> {
    let Value::Number(number) = value else {
        return Err(error(path, value, "must be an integer >= 2"));
    };
    let attempts = match (number.as_u64(), number.as_f64()) {
        (Some(attempts), _) => attempts,
        (None, Some(float)) if float.fract() == 0.0 => {
            // Saturates: negative to 0, huge to u64::MAX.
            float as u64
        }
        _ => return Err(error(path, value, "must be an integer")),
    };
    if attempts < 2 {
        return Err(error(path, value, "must be >= 2"));
    }
    if attempts > u64::from(cap) {
        tracing::warn!(
            path = %path,
            configured = attempts,
            cap,
            "{path}: maxAttempts {attempts} is above the cap of {cap}; capped to {cap}"
        );
        return Ok(cap);
    }
    Ok(u32::try_from(attempts).unwrap_or(cap))
}

fn retry_throttling(value: &Value, path: &str) -> Result<ConfigThrottling, ConfigError> {
    let throttling = object(value, path)?;
    let required = |key: &str| -> Result<f64, ConfigError> {
        let at = format!("{path}.{key}");
        match get(throttling, key) {
            Some(value) => number(value, &at),
            None => Err(ConfigError::new(
                at,
                "nothing",
                "is required in retryThrottling (gRFC A6)",
            )),
        }
    };
    let max_tokens = required("maxTokens")?;
    let token_ratio = required("tokenRatio")?;
    ConfigThrottling::new(max_tokens, token_ratio).map_err(|err| {
        match get(throttling, err.field()) {
            Some(value) => {
                let at = format!("{path}.{}", err.field());
                relocate(err, &at, value)
            }
            None => err.within(path),
        }
    })
}

/// A status code by name (any case) or number; never OK.
fn status_code(value: &Value, path: &str) -> Result<Code, ConfigError> {
    let code = match value {
        Value::String(name) => code_from_name(name).ok_or_else(|| {
            error(
                path,
                value,
                "must be a status code name such as \"UNAVAILABLE\"",
            )
        })?,
        Value::Number(number) => number
            .as_i64()
            .and_then(code_from_number)
            .ok_or_else(|| error(path, value, "must be a status code number in 0..=16"))?,
        _ => {
            return Err(error(
                path,
                value,
                "must be a status code name such as \"UNAVAILABLE\" or a number",
            ));
        }
    };
    if code == Code::Ok {
        return Err(error(
            path,
            value,
            "must not be OK: OK is not a retryable code",
        ));
    }
    Ok(code)
}

fn duration(value: &Value, path: &str) -> Result<std::time::Duration, ConfigError> {
    match value {
        Value::String(text) => parse_duration(text).map_err(|reason| error(path, value, reason)),
        _ => Err(error(path, value, MALFORMED)),
    }
}

fn number(value: &Value, path: &str) -> Result<f64, ConfigError> {
    match value.as_f64() {
        Some(number) => Ok(number),
        None => Err(error(path, value, "must be a number")),
    }
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Object, ConfigError> {
    value
        .as_object()
        .ok_or_else(|| error(path, value, "must be a JSON object"))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a Vec<Value>, ConfigError> {
    value
        .as_array()
        .ok_or_else(|| error(path, value, "must be a JSON array"))
}

/// A field by its exact name, else ignoring ASCII case (as grpc-go's decoder matches fields);
/// `null` counts as absent.
fn get<'a>(object: &'a Object, key: &str) -> Option<&'a Value> {
    object
        .get(key)
        .or_else(|| {
            object
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(key))
                .map(|(_, value)| value)
        })
        .filter(|value| !value.is_null())
}

fn error(path: &str, value: &Value, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(path, shown(value), reason)
}

/// A validation error from a typed constructor, placed at `path` and quoting the value as
/// written.
fn relocate(err: ConfigError, path: &str, value: &Value) -> ConfigError {
    ConfigError::new(path, shown(value), err.reason())
}

/// A value as JSON, cut short if long.
fn shown(value: &Value) -> String {
    truncate(&value.to_string())
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}
