//! Which policy a call gets: `package.Service/Method`, then `package.Service`, then the default.

use std::collections::HashMap;

use super::RetryPolicy;
use crate::error::ConfigError;

/// Policies by service and method, looked up by a request's path without allocating.
#[derive(Debug)]
pub(crate) struct PolicyTable {
    /// Index 0 is the default policy.
    policies: Vec<RetryPolicy>,
    services: HashMap<Box<str>, ServiceEntry>,
}

#[derive(Debug, Default)]
struct ServiceEntry {
    whole_service: Option<usize>,
    methods: HashMap<Box<str>, usize>,
}

impl PolicyTable {
    /// The index of the policy for a request path such as `/package.Service/Method`.
    pub(crate) fn lookup(&self, path: &str) -> usize {
        if self.services.is_empty() {
            return 0;
        }
        let Some((service, method)) = split_path(path) else {
            return 0;
        };
        let Some(entry) = self.services.get(service) else {
            return 0;
        };
        entry
            .methods
            .get(method)
            .copied()
            .or(entry.whole_service)
            .unwrap_or(0)
    }

    /// Whether every call gets the default policy (no service or method has its own).
    pub(crate) fn has_only_default(&self) -> bool {
        self.services.is_empty()
    }

    pub(crate) fn policy(&self, index: usize) -> &RetryPolicy {
        &self.policies[index]
    }
}

/// Splits `/package.Service/Method` into its service and method.
pub(crate) fn split_path(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/')?.split_once('/')
}

/// Collects policies by name, validating each name as it comes.
#[derive(Debug)]
pub(crate) struct PolicyTableBuilder {
    policies: Vec<RetryPolicy>,
    services: HashMap<Box<str>, ServiceEntry>,
    error: Option<ConfigError>,
    /// Where the default policy came from; it decides what calls no name matches get.
    default: DefaultSource,
    /// Whether a service config was applied: then, as in gRPC, calls it does not name are not
    /// retried, unless a default policy was given.
    service_config: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DefaultSource {
    /// [`RetryPolicy::default`], nobody chose one.
    Builtin,
    /// `RetryLayerBuilder::default_policy`.
    Explicit,
    /// A service config's default name (`{}`), at this place.
    ServiceConfig(String),
}

impl PolicyTableBuilder {
    pub(crate) fn new() -> PolicyTableBuilder {
        PolicyTableBuilder {
            policies: vec![RetryPolicy::default()],
            services: HashMap::new(),
            error: None,
            default: DefaultSource::Builtin,
            service_config: false,
        }
    }

    /// The builder's own default policy: a second call replaces the first; a service config's
    /// default name as well is configured twice.
    pub(crate) fn set_default(&mut self, policy: RetryPolicy) {
        self.record(|table| {
            if let DefaultSource::ServiceConfig(place) = &table.default {
                return Err(default_twice(place));
            }
            table.policies[0] = policy;
            table.default = DefaultSource::Explicit;
            Ok(())
        });
    }

    /// The policy of a service config's default name, at `place` (`methodConfig[1].name[0]`).
    pub(crate) fn set_service_config_default(&mut self, policy: RetryPolicy, place: &str) {
        self.record(|table| {
            match &table.default {
                DefaultSource::Explicit => return Err(default_twice(place)),
                DefaultSource::ServiceConfig(first) => {
                    return Err(ConfigError::new(
                        "name",
                        "{}",
                        format!(
                            "is configured twice: the default name at {place} of one service \
                             config, and at {first} of another"
                        ),
                    ));
                }
                DefaultSource::Builtin => {}
            }
            table.policies[0] = policy;
            table.default = DefaultSource::ServiceConfig(place.to_owned());
            Ok(())
        });
    }

    /// A service config was applied: calls it does not name are not retried, unless a default
    /// policy is given (before or after).
    pub(crate) fn service_config_applied(&mut self) {
        self.service_config = true;
    }

    /// Adds a policy for every method of `service` (`package.Service`).
    pub(crate) fn insert_service(&mut self, service: &str, policy: RetryPolicy) {
        self.record(|table| {
            validate_service(service)?;
            table.insert(service, None, policy)
        });
    }

    /// Adds a policy for one method, `package.Service/Method`.
    pub(crate) fn insert_method(&mut self, path: &str, policy: RetryPolicy) {
        self.record(|table| {
            let Some((service, method)) = path.split_once('/') else {
                return Err(ConfigError::new(
                    "method",
                    format!("{path:?}"),
                    "must be \"package.Service/Method\"",
                ));
            };
            validate_service(service)?;
            validate_method(method)?;
            table.insert(service, Some(method), policy)
        });
    }

    /// Keeps the first error: `build` reports it.
    fn record(&mut self, insert: impl FnOnce(&mut Self) -> Result<(), ConfigError>) {
        if self.error.is_none()
            && let Err(err) = insert(self)
        {
            self.error = Some(err);
        }
    }

    fn insert(
        &mut self,
        service: &str,
        method: Option<&str>,
        policy: RetryPolicy,
    ) -> Result<(), ConfigError> {
        let index = self.policies.len();
        let entry = self.services.entry(service.into()).or_default();
        let slot = match method {
            Some(method) => entry.methods.entry(method.into()).or_insert(usize::MAX),
            None => entry.whole_service.get_or_insert(usize::MAX),
        };
        if *slot != usize::MAX {
            let name = match method {
                Some(method) => format!("{service}/{method}"),
                None => service.to_owned(),
            };
            return Err(ConfigError::new(
                "name",
                format!("{name:?}"),
                "is configured twice",
            ));
        }
        *slot = index;
        self.policies.push(policy);
        Ok(())
    }

    pub(crate) fn build(mut self) -> Result<PolicyTable, ConfigError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        if self.service_config && self.default == DefaultSource::Builtin {
            self.policies[0] = RetryPolicy::no_retries();
        }
        Ok(PolicyTable {
            policies: self.policies,
            services: self.services,
        })
    }
}

fn default_twice(place: &str) -> ConfigError {
    ConfigError::new(
        "default_policy",
        "(default)",
        format!(
            "is configured twice: by default_policy and by the service config's default name \
             (at {place})"
        ),
    )
}

/// A service name is a dot-separated list of protobuf identifiers: `helloworld.Greeter`.
pub(crate) fn validate_service(service: &str) -> Result<(), ConfigError> {
    if service.is_empty() || !service.split('.').all(is_identifier) {
        return Err(ConfigError::new(
            "service",
            format!("{service:?}"),
            "must be a fully qualified service name such as \"package.Service\"",
        ));
    }
    Ok(())
}

/// A method name is one protobuf identifier: `SayHello`.
pub(crate) fn validate_method(method: &str) -> Result<(), ConfigError> {
    if !is_identifier(method) {
        return Err(ConfigError::new(
            "method",
            format!("{method:?}"),
            "must be a method name such as \"SayHello\"",
        ));
    }
    Ok(())
}

fn is_identifier(segment: &str) -> bool {
    let mut chars = segment.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attempts(n: u32) -> RetryPolicy {
        RetryPolicy::builder().max_attempts(n).build().unwrap()
    }

    fn table() -> PolicyTable {
        let mut builder = PolicyTableBuilder::new();
        builder.set_default(attempts(2));
        builder.insert_service("pkg.Svc", attempts(3));
        builder.insert_method("pkg.Svc/Special", attempts(4));
        builder.build().unwrap()
    }

    #[test]
    fn most_specific_wins() {
        let table = table();
        let of = |path| table.policy(table.lookup(path)).max_attempts();
        assert_eq!(of("/pkg.Svc/Special"), 4);
        assert_eq!(of("/pkg.Svc/Other"), 3);
        assert_eq!(of("/pkg.Other/Special"), 2);
        assert_eq!(of("not a path"), 2);
    }

    #[test]
    fn invalid_and_duplicate_names_are_errors() {
        for bad in [
            "",
            "pkg..Svc",
            "pkg.Svc/M",
            "1pkg.Svc",
            "pkg Svc",
            "pkg.Svc.",
        ] {
            let mut builder = PolicyTableBuilder::new();
            builder.insert_service(bad, attempts(2));
            let err = builder.build().unwrap_err();
            assert_eq!(err.field(), "service", "{bad:?}: {err}");
        }
        for (bad, field) in [
            ("pkg.Svc", "method"),
            ("/pkg.Svc/M", "service"),
            ("pkg.Svc/", "method"),
            ("pkg.Svc/M/x", "method"),
        ] {
            let mut builder = PolicyTableBuilder::new();
            builder.insert_method(bad, attempts(2));
            let err = builder.build().unwrap_err();
            assert_eq!(err.field(), field, "{bad:?}: {err}");
        }
        let mut builder = PolicyTableBuilder::new();
        builder.insert_method("pkg.Svc/M", attempts(2));
        builder.insert_method("pkg.Svc/M", attempts(3));
        let err = builder.build().unwrap_err();
        assert!(err.to_string().contains("configured twice"), "{err}");
    }

    #[test]
    fn the_default_policy_by_source() {
        let default_of = |builder: PolicyTableBuilder| {
            let table = builder.build().unwrap();
            table.policy(table.lookup("/pkg.Unnamed/M")).max_attempts()
        };
        assert_eq!(default_of(PolicyTableBuilder::new()), 5, "builtin");

        // A service config without a default name: unnamed calls are not retried...
        let mut builder = PolicyTableBuilder::new();
        builder.service_config_applied();
        assert_eq!(default_of(builder), 1);
        // ...unless the builder's default is given, before or after.
        let mut builder = PolicyTableBuilder::new();
        builder.set_default(attempts(3));
        builder.service_config_applied();
        assert_eq!(default_of(builder), 3);
        let mut builder = PolicyTableBuilder::new();
        builder.service_config_applied();
        builder.set_default(attempts(3));
        assert_eq!(default_of(builder), 3);
        // The config's default name.
        let mut builder = PolicyTableBuilder::new();
        builder.set_service_config_default(attempts(4), "methodConfig[0].name[0]");
        builder.service_config_applied();
        assert_eq!(default_of(builder), 4);
        // A second explicit default replaces the first.
        let mut builder = PolicyTableBuilder::new();
        builder.set_default(attempts(3));
        builder.set_default(attempts(2));
        assert_eq!(default_of(builder), 2);
    }

    #[test]
    fn two_default_policies_from_two_sources_are_an_error_in_either_order() {
        let mut builder = PolicyTableBuilder::new();
        builder.set_default(attempts(3));
        builder.set_service_config_default(attempts(4), "methodConfig[2].name[0]");
        let err = builder.build().unwrap_err();
        assert_eq!(err.field(), "default_policy");
        assert!(err.reason().contains("methodConfig[2].name[0]"), "{err}");

        let mut builder = PolicyTableBuilder::new();
        builder.set_service_config_default(attempts(4), "methodConfig[2].name[0]");
        builder.set_default(attempts(3));
        assert_eq!(builder.build().unwrap_err().field(), "default_policy");

        let mut builder = PolicyTableBuilder::new();
        builder.set_service_config_default(attempts(4), "methodConfig[0].name[0]");
        builder.set_service_config_default(attempts(4), "methodConfig[1].name[0]");
        let err = builder.build().unwrap_err();
        assert!(err.to_string().contains("configured twice"), "{err}");
    }

    proptest! {
        #[test]
        fn lookup_never_panics(path in ".*") {
            let table = table();
            let index = table.lookup(&path);
            prop_assert!(index < 3);
        }

        #[test]
        fn insert_never_panics(name in ".*") {
            let mut builder = PolicyTableBuilder::new();
            builder.insert_service(&name, attempts(2));
            builder.insert_method(&name, attempts(2));
            let _ = builder.build();
        }
    }
}
