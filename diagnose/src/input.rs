//! What the caller asks to diagnose: the URI and the `package.Service[/Method]` target, parsed,
//! and the error for an input that cannot be diagnosed.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use http::Uri;

use crate::text::clean;

/// A diagnosis input that cannot be diagnosed: a malformed URI or service/method name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnoseError {
    what: &'static str,
    value: String,
    reason: String,
}

impl DiagnoseError {
    fn new(what: &'static str, value: &str, reason: impl Into<String>) -> DiagnoseError {
        DiagnoseError {
            what,
            value: clean(value, 200),
            reason: reason.into(),
        }
    }

    /// Which input was wrong: `uri` or `target`.
    pub fn input(&self) -> &'static str {
        self.what
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for DiagnoseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.value, self.reason)
    }
}

impl Error for DiagnoseError {}

/// The service (and optionally method) the caller wants checked, `package.Service[/Method]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) service: String,
    pub(crate) method: Option<String>,
}

impl Target {
    pub(crate) fn parse(text: &str) -> Result<Target, DiagnoseError> {
        let bad = |reason: &str| DiagnoseError::new("target", text, reason);
        let trimmed = text.trim().trim_start_matches('/');
        let (service, method) = match trimmed.split_once('/') {
            Some((service, method)) => (service, Some(method)),
            None => (trimmed, None),
        };
        let ident =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if service.is_empty() || !service.split('.').all(ident) {
            return Err(bad(
                "expected package.Service or package.Service/Method (letters, digits, '_', '.')",
            ));
        }
        if let Some(method) = method
            && !ident(method)
        {
            return Err(bad("the method name must be letters, digits and '_'"));
        }
        Ok(Target {
            service: service.to_owned(),
            method: method.map(str::to_owned),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.service)?;
        if let Some(method) = &self.method {
            write!(f, "/{method}")?;
        }
        Ok(())
    }
}

/// Where to connect: the URI as given, its host and port.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The URI as given (with `http://` added when it had no scheme).
    pub(crate) given: String,
    pub(crate) uri: Uri,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Endpoint {
    pub(crate) fn parse(text: &str) -> Result<Endpoint, DiagnoseError> {
        let text = text.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = with_scheme
            .parse()
            .map_err(|e| DiagnoseError::new("uri", text, format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(DiagnoseError::new(
                    "uri",
                    text,
                    "the scheme must be http or https",
                ));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| DiagnoseError::new("uri", text, "no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Endpoint {
            given: with_scheme,
            uri,
            host,
            port,
            tls,
        })
    }

    /// The address, when the host is an IP literal (nothing to resolve).
    pub(crate) fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("pkg.v1.Svc/Do_It").unwrap();
        assert_eq!(
            (t.service.as_str(), t.method.as_deref()),
            ("pkg.v1.Svc", Some("Do_It"))
        );
        assert_eq!(Target::parse("/pkg.Svc").unwrap().method, None);
        for bad in [
            "",
            "pkg..Svc",
            "pkg.Svc/",
            "pkg.Svc/a/b",
            "a b",
            "pkg.Svc/M-1",
            "é",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uris() {
        let e = Endpoint::parse("localhost:50051").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("localhost", 50051, false)
        );
        let e = Endpoint::parse("https://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("::1", 443, true));
        assert_eq!(e.literal(), Some("[::1]:443".parse().unwrap()));
        for bad in ["", "ftp://x", "http://", "http://a b", "::::"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
