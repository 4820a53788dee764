//! Configuration errors: each names the field, the bad value, and what was expected; and the
//! error type of the retrying service.

use std::fmt;

/// The error type of the retrying service: tonic turns it back into a [`tonic::Status`].
// Defined here, not at the crate root, so that the service and its future, which use it, do not
// import the root that declares them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An invalid retry configuration, rejected when the configuration is built.
///
/// ```
/// use tonic_retry::RetryPolicy;
///
/// let err = RetryPolicy::builder().max_attempts(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_attempts");
/// assert_eq!(err.to_string(), "max_attempts: must be >= 1, got 0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: String,
    value: String,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Places the field inside `parent`: `max_attempts` within `policy for "a.B"` becomes
    /// `policy for "a.B".max_attempts`.
    pub(crate) fn within(mut self, parent: &str) -> ConfigError {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    /// The path of the offending field, such as `max_attempts` or
    /// `methodConfig[2].retryPolicy.backoffMultiplier`.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The offending value, as written.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What the value must be.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}, got {}", self.field, self.reason, self.value)
    }
}

impl std::error::Error for ConfigError {}
