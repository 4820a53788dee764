//! The request head, kept so that every attempt after the first can be built from it.

use http::request::Parts;
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};
use tonic::GrpcMethod;
use tonic::body::Body;

/// The gRPC method of a request path: its last two segments, `/package.Service/Method`.
///
/// A client made with `with_origin("http://host/api")` (a service behind a gateway's path
/// prefix) sends `/api/package.Service/Method`; the policy, the history and the span are about
/// the gRPC method, not the prefix. Generated clients build the path exactly so (tonic's
/// `GrpcMethod` extension names the same service and method), and a slice of the path costs no
/// allocation.
pub(crate) fn grpc_path(path: &str) -> &str {
    let Some(last) = path.rfind('/') else {
        return path;
    };
    match path[..last].rfind('/') {
        Some(start) => &path[start..],
        None => path,
    }
}

/// The request head, kept to build every attempt after the first.
pub(crate) struct RequestHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: SavedExtensions,
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
        RequestHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: SavedExtensions::save(&parts.extensions),
        }
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
        *request.headers_mut() = self.headers.clone();
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
