//! The request head, kept so that every attempt after the first can be built from it.

use http::request::Parts;
use http::{Extensions, HeaderName, HeaderValue, Method, Request, Uri, Version};
use std::time::Duration;

use tonic::GrpcMethod;
use tonic::body::Body;

use crate::deadline::{GRPC_TIMEOUT, parse_grpc_timeout};

/// The gRPC method of a request path: its last two segments, `/package.Service/Method`.
///
/// A client made with `with_origin("http://host/api")` (a service behind a gateway's path
/// prefix) sends `/api/package.Service/Method`; the policy, the history and the span are about
/// the gRPC method, not the prefix. Generated clients build the path exactly so (tonic's
/// `GrpcMethod` extension names the same service and method), and a slice of the path costs no
/// allocation.
pub(crate) fn grpc_path(path: &str) -> &str {
    // A plain backwards scan: the method name is a few bytes, and `rfind`'s vectorised search
    // costs more than it saves on strings this short.
    let bytes = path.as_bytes();
    let Some(last) = bytes.iter().rposition(|&byte| byte == b'/') else {
        return path;
    };
    match bytes[..last].iter().rposition(|&byte| byte == b'/') {
        Some(start) => &path[start..],
        None => path,
    }
}

/// The request head, kept to build every attempt after the first.
pub(crate) struct RequestHead {
    method: Method,
    uri: Uri,
    version: Version,
    /// Every header value, in order: one allocation, where cloning the `HeaderMap` costs two
    /// (its index table and its entries). A retry rebuilds the map.
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: SavedExtensions,
    /// The caller's `grpc-timeout`, read while the headers were copied (no second lookup).
    caller_timeout: Option<Duration>,
}

/// The request's extensions, kept for the retries. A generated client's request carries one,
/// tonic's `GrpcMethod` (two static strings): keeping that one alone costs no allocation, where
/// cloning the `Extensions` map costs three.
enum SavedExtensions {
    None,
    GrpcMethod(GrpcMethod<'static>),
    All(Extensions),
}

impl SavedExtensions {
    fn save(extensions: &Extensions) -> SavedExtensions {
        if extensions.is_empty() {
            return SavedExtensions::None;
        }
        match extensions.get::<GrpcMethod<'static>>() {
            Some(method) if extensions.len() == 1 => SavedExtensions::GrpcMethod(method.clone()),
            _ => SavedExtensions::All(extensions.clone()),
        }
    }

    fn restore(&self) -> Extensions {
        match self {
            SavedExtensions::None => Extensions::new(),
            SavedExtensions::GrpcMethod(method) => {
                let mut extensions = Extensions::new();
                extensions.insert(method.clone());
                extensions
            }
            SavedExtensions::All(extensions) => extensions.clone(),
        }
    }
}

impl RequestHead {
    /// Copies what a retry needs of the first attempt's head.
    pub(crate) fn save(parts: &Parts) -> RequestHead {
        let mut caller_timeout = None;
        let mut headers = Vec::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if *name == GRPC_TIMEOUT {
                caller_timeout = parse_grpc_timeout(value.as_bytes());
            }
            headers.push((name.clone(), value.clone()));
        }
        RequestHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
            extensions: SavedExtensions::save(&parts.extensions),
            caller_timeout,
        }
    }

    /// The timeout the caller's `grpc-timeout` header gives, if it parses.
    pub(crate) fn caller_timeout(&self) -> Option<Duration> {
        self.caller_timeout
    }

    /// The call's URI.
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// A new attempt's request with this head and `body`.
    pub(crate) fn request(&self, body: Body) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        let headers = request.headers_mut();
        headers.reserve(self.headers.len());
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        *request.extensions_mut() = self.extensions.restore();
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_grpc_method_is_kept_without_the_map() {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(GrpcMethod::new("pkg.Svc", "Method"));
        let (parts, ()) = request.into_parts();
        let head = RequestHead::save(&parts);
        assert!(matches!(head.extensions, SavedExtensions::GrpcMethod(_)));
        let retry = head.request(Body::empty());
        let method = retry.extensions().get::<GrpcMethod<'static>>().unwrap();
        assert_eq!((method.service(), method.method()), ("pkg.Svc", "Method"));
    }

    #[test]
    fn the_grpc_method_is_the_last_two_segments() {
        assert_eq!(grpc_path("/pkg.Svc/Method"), "/pkg.Svc/Method");
        assert_eq!(grpc_path("/api/v1/pkg.Svc/Method"), "/pkg.Svc/Method");
        assert_eq!(grpc_path("/Method"), "/Method");
        assert_eq!(grpc_path(""), "");
        assert_eq!(grpc_path("no-slash"), "no-slash");
        assert_eq!(grpc_path("//"), "//");
    }

    #[test]
    fn every_header_value_is_kept_in_order() {
        let mut request = Request::new(());
        let headers = request.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        headers.insert("authorization", secret);
        let (parts, ()) = request.into_parts();
        let retry = RequestHead::save(&parts).request(Body::empty());
        assert_eq!(retry.headers(), &parts.headers);
        let multi: Vec<_> = retry.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert!(retry.headers()["authorization"].is_sensitive());
    }

    #[test]
    fn other_extensions_are_all_kept() {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(GrpcMethod::new("pkg.Svc", "Method"));
        request.extensions_mut().insert(42u32);
        let (parts, ()) = request.into_parts();
        let retry = RequestHead::save(&parts).request(Body::empty());
        assert_eq!(retry.extensions().get::<u32>(), Some(&42));
        assert!(retry.extensions().get::<GrpcMethod<'static>>().is_some());
    }
}
