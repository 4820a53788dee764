//! The request head, kept so that every attempt after the first can be built from it.

use http::header::{CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use std::sync::OnceLock;
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

/// The scheme and authority a service's calls go to, learnt from its first call that has them.
///
/// Every call of a generated client carries its channel's origin: a call whose URI has this one
/// keeps only its path (48 bytes less in every in-flight call, and no copy of the authority,
/// which for an origin made from a `String` is an atomic reference count).
#[derive(Debug, Default)]
pub(crate) struct Origin(OnceLock<(Scheme, Authority)>);

impl Origin {
    /// Whether `uri` goes to this origin, learning it from `uri` if none is known yet.
    #[inline]
    fn is_of(&self, uri: &Uri) -> bool {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return false;
        };
        let (known_scheme, known_authority) =
            self.0.get_or_init(|| (scheme.clone(), authority.clone()));
        // The same bytes (a channel's calls share its origin's) are equal without comparing them.
        let same_authority = std::ptr::eq(known_authority.as_str(), authority.as_str())
            || known_authority.as_str() == authority.as_str();
        same_authority && known_scheme == scheme
    }

    /// The URI of `path` at this origin (known: a call kept its path only after [`Origin::is_of`]).
    fn uri(&self, path: &PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        if let Some((scheme, authority)) = self.0.get() {
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
        }
        parts.path_and_query = Some(path.clone());
        Uri::from_parts(parts).unwrap_or_default()
    }

    fn authority(&self) -> Option<&Authority> {
        self.0.get().map(|(_, authority)| authority)
    }
}

/// The request's URI: its path alone when it goes to the service's [`Origin`].
enum SavedUri {
    AtOrigin(PathAndQuery),
    Other(Box<Uri>),
}

/// The request head, kept to build every attempt after the first.
pub(crate) struct RequestHead {
    method: SavedMethod,
    uri: SavedUri,
    version: Version,
    /// The headers a generated client sets on every call, when they have the values it gives
    /// them: flags, not copies.
    usual: UsualHeaders,
    /// Every other header value, in order: one allocation (none for a generated client's
    /// plain call), where cloning the `HeaderMap` costs two (its index table and its entries).
    /// A retry rebuilds the map.
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: SavedExtensions,
}

/// The request's method: gRPC's `POST` as a flag, any other boxed (8 bytes where a `Method` is
/// 24, in a head every in-flight call holds).
enum SavedMethod {
    Post,
    Other(Box<Method>),
}

impl SavedMethod {
    #[inline]
    fn save(method: &Method) -> SavedMethod {
        // By its name: `Method`'s own comparison is a call, and a generated client's is `POST`.
        if method.as_str() == "POST" {
            SavedMethod::Post
        } else {
            SavedMethod::Other(Box::new(method.clone()))
        }
    }

    fn restore(&self) -> Method {
        match self {
            SavedMethod::Post => Method::POST,
            SavedMethod::Other(method) => Method::clone(method),
        }
    }
}

/// Which of a generated client's usual headers (`te: trailers`, `content-type:
/// application/grpc`) the request has, each as the first value of its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UsualHeaders(u8);

impl UsualHeaders {
    const TE_TRAILERS: u8 = 1;
    const CONTENT_TYPE_GRPC: u8 = 2;

    /// The flag for `name: value`, if it is one of the usual headers.
    fn flag(name: &HeaderName, value: &HeaderValue) -> Option<u8> {
        if value.is_sensitive() {
            return None;
        }
        if *name == TE && value.as_bytes() == b"trailers" {
            Some(Self::TE_TRAILERS)
        } else if *name == CONTENT_TYPE && value.as_bytes() == b"application/grpc" {
            Some(Self::CONTENT_TYPE_GRPC)
        } else {
            None
        }
    }
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
    /// Copies what a retry needs of the first attempt's head; returns it with the timeout the
    /// caller's `grpc-timeout` header gives, if it parses (read while the headers are copied: no
    /// second lookup).
    ///
    /// A `grpc-timeout` that parses is not copied: the call's deadline comes from it, and every
    /// retry says in its own `grpc-timeout` what is left of that deadline. (Should the deadline
    /// not be representable, [`RequestHead::keep_grpc_timeout`] copies it after all.)
    pub(crate) fn save<B>(
        request: &Request<B>,
        origin: &Origin,
    ) -> (RequestHead, Option<Duration>) {
        let mut caller_timeout = None;
        let mut has_timeout = false;
        let mut usual = UsualHeaders::default();
        let mut headers = Vec::new();
        let mut previous: Option<&HeaderName> = None;
        for (name, value) in request.headers() {
            // A usual header is kept as a flag only as the first value of its name: a retry
            // restores the flags first, so the values of each name keep their order.
            let first_of_name = previous != Some(name);
            previous = Some(name);
            if *name == GRPC_TIMEOUT {
                // The first value, as tonic's channel and servers read it (`HeaderMap::get`).
                if !has_timeout {
                    caller_timeout = parse_grpc_timeout(value.as_bytes());
                    has_timeout = true;
                }
                continue;
            }
            if first_of_name && let Some(flag) = UsualHeaders::flag(name, value) {
                usual.0 |= flag;
                continue;
            }
            if headers.capacity() == 0 {
                headers.reserve_exact(request.headers().len());
            }
            headers.push((name.clone(), value.clone()));
        }
        let mut head = RequestHead {
            method: SavedMethod::save(request.method()),
            uri: match request.uri().path_and_query() {
                Some(path) if origin.is_of(request.uri()) => SavedUri::AtOrigin(path.clone()),
                _ => SavedUri::Other(Box::new(request.uri().clone())),
            },
            version: request.version(),
            usual,
            headers,
            extensions: SavedExtensions::save(request.extensions()),
        };
        if has_timeout && caller_timeout.is_none() {
            head.keep_grpc_timeout(request.headers());
        }
        (head, caller_timeout)
    }

    /// Copies the caller's `grpc-timeout` values from `headers`, for retries to send as they are.
    pub(crate) fn keep_grpc_timeout(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(GRPC_TIMEOUT) {
            self.headers.push((GRPC_TIMEOUT, value.clone()));
        }
    }

    /// Whether the request carries extensions other than tonic's `GrpcMethod`.
    pub(crate) fn has_other_extensions(&self) -> bool {
        matches!(self.extensions, SavedExtensions::All(_))
    }

    /// The call's path.
    pub(crate) fn path(&self) -> &str {
        match &self.uri {
            SavedUri::AtOrigin(path) => path.path(),
            SavedUri::Other(uri) => uri.path(),
        }
    }

    /// Where the call goes, if its URI says.
    pub(crate) fn authority<'a>(&'a self, origin: &'a Origin) -> Option<&'a Authority> {
        match &self.uri {
            SavedUri::AtOrigin(_) => origin.authority(),
            SavedUri::Other(uri) => uri.authority(),
        }
    }

    /// A new attempt's request with this head and `body`; `origin` is the one `save` was given.
    pub(crate) fn request(&self, body: Body, origin: &Origin) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.restore();
        *request.uri_mut() = match &self.uri {
            SavedUri::AtOrigin(path) => origin.uri(path),
            SavedUri::Other(uri) => Uri::clone(uri),
        };
        *request.version_mut() = self.version;
        let headers = request.headers_mut();
        headers.reserve(self.headers.len() + self.usual.0.count_ones() as usize);
        if self.usual.0 & UsualHeaders::TE_TRAILERS != 0 {
            headers.append(TE, HeaderValue::from_static("trailers"));
        }
        if self.usual.0 & UsualHeaders::CONTENT_TYPE_GRPC != 0 {
            headers.append(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        }
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
        let (head, _) = RequestHead::save(&request, &Origin::default());
        assert!(matches!(head.extensions, SavedExtensions::GrpcMethod(_)));
        let retry = head.request(Body::empty(), &Origin::default());
        let method = retry.extensions().get::<GrpcMethod<'static>>().unwrap();
        assert_eq!((method.service(), method.method()), ("pkg.Svc", "Method"));
    }

    #[test]
    fn a_call_to_the_services_origin_keeps_its_path_and_is_retried_to_the_same_uri() {
        let origin = Origin::default();
        let request_to = |uri: &str| {
            let mut request = Request::new(());
            *request.uri_mut() = Uri::try_from(uri).unwrap();
            request
        };
        let first = request_to("http://backend:50051/pkg.Svc/Method");
        let (head, _) = RequestHead::save(&first, &origin);
        assert!(matches!(head.uri, SavedUri::AtOrigin(_)));
        assert_eq!(head.request(Body::empty(), &origin).uri(), first.uri());
        assert_eq!(head.path(), "/pkg.Svc/Method");
        assert_eq!(head.authority(&origin).unwrap(), "backend:50051");

        // The same origin spelled by other bytes, then other origins, then no origin at all:
        // each retried to exactly its own URI.
        for uri in [
            "http://backend:50051/pkg.Svc/Other?x=1",
            "https://backend:50051/pkg.Svc/Method",
            "http://backend:50052/pkg.Svc/Method",
            "http://other/pkg.Svc/Method",
            "/pkg.Svc/Method",
        ] {
            let request = request_to(uri);
            let (head, _) = RequestHead::save(&request, &origin);
            assert_eq!(
                head.request(Body::empty(), &origin).uri(),
                request.uri(),
                "{uri}"
            );
            assert_eq!(head.authority(&origin), request.uri().authority(), "{uri}");
        }
        let (head, _) = RequestHead::save(&request_to("http://backend:50051/a/b"), &origin);
        assert!(matches!(head.uri, SavedUri::AtOrigin(_)));
        let (head, _) = RequestHead::save(&request_to("http://other/a/b"), &origin);
        assert!(matches!(head.uri, SavedUri::Other(_)));
    }

    #[test]
    fn a_method_other_than_post_is_kept() {
        for method in [
            Method::POST,
            Method::GET,
            Method::from_bytes(b"CUSTOM-VERB").unwrap(),
        ] {
            let mut request = Request::new(());
            *request.method_mut() = method.clone();
            let retry = RequestHead::save(&request, &Origin::default())
                .0
                .request(Body::empty(), &Origin::default());
            assert_eq!(retry.method(), method);
        }
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
        let retry = RequestHead::save(&request, &Origin::default())
            .0
            .request(Body::empty(), &Origin::default());
        assert_eq!(retry.headers(), request.headers());
        let multi: Vec<_> = retry.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["1", "2"]);
        assert!(retry.headers()["authorization"].is_sensitive());
    }

    #[test]
    fn usual_headers_are_flags_and_keep_the_order_of_each_name() {
        let mut request = Request::new(());
        let headers = request.headers_mut();
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.append(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.append(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let (head, _) = RequestHead::save(&request, &Origin::default());
        assert_eq!(
            head.usual.0,
            UsualHeaders::TE_TRAILERS | UsualHeaders::CONTENT_TYPE_GRPC
        );
        assert_eq!(head.headers.len(), 2, "the repeated values are copied");
        let retry = head.request(Body::empty(), &Origin::default());
        assert_eq!(retry.headers(), request.headers());
        let types: Vec<_> = retry.headers().get_all(CONTENT_TYPE).iter().collect();
        assert_eq!(
            types,
            ["application/grpc", "application/grpc", "text/plain"]
        );

        // Another value first, or a sensitive one, is copied as it is.
        let mut request = Request::new(());
        request.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let mut secret = HeaderValue::from_static("trailers");
        secret.set_sensitive(true);
        request.headers_mut().insert(TE, secret);
        let (head, _) = RequestHead::save(&request, &Origin::default());
        assert_eq!(head.usual, UsualHeaders::default());
        let retry = head.request(Body::empty(), &Origin::default());
        assert_eq!(retry.headers(), request.headers());
        assert!(retry.headers()[TE].is_sensitive());
    }

    #[test]
    fn a_grpc_timeout_is_copied_only_when_it_does_not_parse() {
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT, HeaderValue::from_static("100m"));
        let (head, timeout) = RequestHead::save(&request, &Origin::default());
        assert_eq!(timeout, Some(Duration::from_millis(100)));
        assert!(
            head.headers.is_empty(),
            "a retry rewrites it from the deadline"
        );

        let mut request = Request::new(());
        request
            .headers_mut()
            .insert(GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        let (head, timeout) = RequestHead::save(&request, &Origin::default());
        assert_eq!(timeout, None);
        assert_eq!(
            head.request(Body::empty(), &Origin::default()).headers(),
            request.headers(),
            "one that does not parse is sent again as it is"
        );
    }

    #[test]
    fn of_two_grpc_timeouts_the_first_is_the_deadline_as_tonic_reads_it() {
        let mut request = Request::new(());
        let headers = request.headers_mut();
        headers.append(GRPC_TIMEOUT, HeaderValue::from_static("1S"));
        headers.append(GRPC_TIMEOUT, HeaderValue::from_static("1H"));
        let (_, timeout) = RequestHead::save(&request, &Origin::default());
        assert_eq!(timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn other_extensions_are_all_kept() {
        let mut request = Request::new(());
        request
            .extensions_mut()
            .insert(GrpcMethod::new("pkg.Svc", "Method"));
        request.extensions_mut().insert(42u32);
        let retry = RequestHead::save(&request, &Origin::default())
            .0
            .request(Body::empty(), &Origin::default());
        assert_eq!(retry.extensions().get::<u32>(), Some(&42));
        assert!(retry.extensions().get::<GrpcMethod<'static>>().is_some());
    }
}
