//! gRPC status codes by their canonical names (`"UNAVAILABLE"`, as in a service config) and
//! [`CodeSet`], a copyable set of codes.
//!
//! One table inside holds every code's name; parsing, display and the HTTP mapping derive from it.

use std::fmt;

use tonic::Code;

/// Every code with its canonical name, indexed by the code's number.
///
/// Names are those of the gRPC service config (`"UNAVAILABLE"`); every other view of a code in
/// this crate (parsing, display, the bit in a [`CodeSet`]) is derived from this table.
const TABLE: [(Code, &str); 17] = [
    (Code::Ok, "OK"),
    (Code::Cancelled, "CANCELLED"),
    (Code::Unknown, "UNKNOWN"),
    (Code::InvalidArgument, "INVALID_ARGUMENT"),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (Code::NotFound, "NOT_FOUND"),
    (Code::AlreadyExists, "ALREADY_EXISTS"),
    (Code::PermissionDenied, "PERMISSION_DENIED"),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (Code::Aborted, "ABORTED"),
    (Code::OutOfRange, "OUT_OF_RANGE"),
    (Code::Unimplemented, "UNIMPLEMENTED"),
    (Code::Internal, "INTERNAL"),
    (Code::Unavailable, "UNAVAILABLE"),
    (Code::DataLoss, "DATA_LOSS"),
    (Code::Unauthenticated, "UNAUTHENTICATED"),
];

/// The canonical upper-case name of a code, as written in a gRPC service config.
///
/// ```
/// assert_eq!(tonic_retry::code::code_name(tonic::Code::Unavailable), "UNAVAILABLE");
/// ```
pub fn code_name(code: Code) -> &'static str {
    TABLE[code as usize].1
}

/// Parses a code from its canonical name, in any case (`"unavailable"`, `"UNAVAILABLE"`).
///
/// ```
/// use tonic::Code;
/// use tonic_retry::code::code_from_name;
///
/// assert_eq!(code_from_name("resource_exhausted"), Some(Code::ResourceExhausted));
/// assert_eq!(code_from_name("UNAVAIL"), None);
/// ```
pub fn code_from_name(name: &str) -> Option<Code> {
    TABLE
        .iter()
        .find(|(_, canonical)| canonical.eq_ignore_ascii_case(name))
        .map(|(code, _)| *code)
}

/// The code for a number, if it is one of the 17 defined codes.
pub(crate) fn code_from_number(number: i64) -> Option<Code> {
    usize::try_from(number)
        .ok()
        .and_then(|index| TABLE.get(index))
        .map(|(code, _)| *code)
}

/// gRPC's mapping of an HTTP status to a code, for a response that carries no `grpc-status`
/// (see gRPC's `http-grpc-status-mapping.md`; tonic maps it the same way).
pub(crate) fn code_from_http_status(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// A set of gRPC status codes, stored as a bit mask: `Copy`, no allocation, constant-time
/// membership.
///
/// ```
/// use tonic::Code;
/// use tonic_retry::code::CodeSet;
///
/// let set = CodeSet::from_iter([Code::Unavailable, Code::ResourceExhausted]);
/// assert!(set.contains(Code::Unavailable));
/// assert!(!set.contains(Code::Internal));
/// assert_eq!(set.to_string(), "RESOURCE_EXHAUSTED, UNAVAILABLE");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CodeSet(u32);

impl CodeSet {
    /// The one check every code setting shares: OK is not a failure, so it can be neither
    /// retried nor failed fast. The error names `field`.
    pub(crate) fn reject_ok(self, field: &str) -> Result<CodeSet, crate::ConfigError> {
        if self.contains(Code::Ok) {
            return Err(crate::ConfigError::new(
                field,
                self.to_string(),
                "must not contain OK",
            ));
        }
        Ok(self)
    }

    /// The empty set.
    pub const EMPTY: CodeSet = CodeSet(0);

    /// A set of the given codes; usable in `const` items.
    pub const fn of(codes: &[Code]) -> CodeSet {
        let mut bits = 0;
        let mut i = 0;
        while i < codes.len() {
            bits |= 1 << codes[i] as u32;
            i += 1;
        }
        CodeSet(bits)
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: Code) -> bool {
        self.0 & (1 << code as u32) != 0
    }

    /// The set with `code` added.
    #[must_use]
    pub const fn with(self, code: Code) -> CodeSet {
        CodeSet(self.0 | (1 << code as u32))
    }

    /// The set with `code` removed.
    #[must_use]
    pub const fn without(self, code: Code) -> CodeSet {
        CodeSet(self.0 & !(1 << code as u32))
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The codes in the set, in numeric order.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        TABLE
            .iter()
            .map(|(code, _)| *code)
            .filter(move |code| self.contains(*code))
    }
}

impl FromIterator<Code> for CodeSet {
    fn from_iter<I: IntoIterator<Item = Code>>(iter: I) -> Self {
        iter.into_iter().fold(CodeSet::EMPTY, CodeSet::with)
    }
}

impl fmt::Display for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = self.iter().map(code_name);
        if let Some(first) = names.next() {
            f.write_str(first)?;
        }
        for name in names {
            write!(f, ", {name}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeSet[{self}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_number() {
        for (number, (code, _)) in TABLE.iter().enumerate() {
            assert_eq!(*code as usize, number);
            assert_eq!(code_from_number(number as i64), Some(*code));
        }
        assert_eq!(code_from_number(17), None);
        assert_eq!(code_from_number(-1), None);
    }

    #[test]
    fn names_round_trip_in_any_case() {
        for (code, name) in TABLE {
            assert_eq!(code_from_name(name), Some(code));
            assert_eq!(code_from_name(&name.to_ascii_lowercase()), Some(code));
            assert_eq!(code_name(code), name);
        }
        assert_eq!(code_from_name("UNAVAILABLE "), None);
        assert_eq!(code_from_name(""), None);
    }

    #[test]
    fn set_operations() {
        let set = CodeSet::of(&[Code::Ok, Code::Unauthenticated]);
        assert!(set.contains(Code::Ok) && set.contains(Code::Unauthenticated));
        assert!(!set.without(Code::Ok).contains(Code::Ok));
        assert_eq!(set.iter().count(), 2);
        assert!(CodeSet::EMPTY.is_empty());
    }

    #[test]
    fn http_mapping_matches_grpc() {
        assert_eq!(
            code_from_http_status(http::StatusCode::NOT_FOUND),
            Code::Unimplemented
        );
        assert_eq!(
            code_from_http_status(http::StatusCode::SERVICE_UNAVAILABLE),
            Code::Unavailable
        );
        assert_eq!(
            code_from_http_status(http::StatusCode::IM_A_TEAPOT),
            Code::Unknown
        );
    }
}
