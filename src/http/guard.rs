//! What the HTTP surface takes from web browsers: a request a page on another site made, or
//! one addressed to a name the server does not answer to, is refused before anything else
//! reads it.
//!
//! A web page the user merely visits can send requests to a server on the user's machine:
//! "simple" cross-site POSTs need no CORS preflight (the gateway's own refusal of bodies not
//! said to be JSON closes that door for bodies, see `gateway`), and by "DNS rebinding" a page
//! on `evil.example` that re-points its own name to 127.0.0.1 can even read the answers, as
//! the browser thinks them its own origin's. So:
//! - a request whose `Origin` is not the server's own (the origin the request was sent to:
//!   the dashboard's pages calling the gateway) nor one allowed by the operator is refused,
//!   whatever its method; `Origin: null` (sandboxed frames, files) is refused too;
//! - on a listener that checks names (by default a loopback one, where no name but the
//!   machine's own can be meant), a `Host` that is neither `localhost` (nor a name under
//!   `.localhost`), an IP address, nor a name the operator allowed is refused: a rebinding
//!   page's requests carry its own name.
//!
//! Clients that are not browsers (curl, the SDKs) send no `Origin` and are not affected.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;
use tonic::Code;

use super::error::{error_response, gateway_status};
use crate::text::quote;

/// Which origins and host names the HTTP surface answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowserRules {
    /// Host names answered besides `localhost` and IP addresses; `None`: any host.
    hosts: Option<Vec<String>>,
    /// Origins allowed besides the server's own, lower-case, without a trailing slash.
    origins: Vec<String>,
}

impl BrowserRules {
    /// Any host name; requests from the server's own origin only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also allows requests from pages of `origin` (`https://app.example.com`, scheme, host
    /// and port as a browser sends them in `Origin`).
    pub fn allow_origin(mut self, origin: &str) -> Self {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        if !origin.is_empty() && !self.origins.contains(&origin) {
            self.origins.push(origin);
        }
        self
    }

    /// Answers only requests addressed (`Host`) to `localhost`, an IP address, or one of
    /// `names` (host names without a port, e.g. `oprun.internal`).
    pub fn only_hosts<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, names: I) -> Self {
        let list = self.hosts.get_or_insert_with(Vec::new);
        for name in names {
            let name = name
                .as_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !name.is_empty() && !list.contains(&name) {
                list.push(name);
            }
        }
        self
    }

    /// Whether requests are checked against a list of host names.
    pub fn checks_hosts(&self) -> bool {
        self.hosts.is_some()
    }

    /// Why `headers` (and the request's URI authority, for HTTP/2) may not be answered.
    fn refusal(&self, headers: &HeaderMap, uri: &http::Uri) -> Option<tonic::Status> {
        let host = headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| uri.authority().map(|a| a.as_str().to_owned()));
        if let (Some(names), Some(host)) = (&self.hosts, &host) {
            if !host_allowed(names, host) {
                return Some(gateway_status(
                    Code::PermissionDenied,
                    "HOST_NOT_ALLOWED",
                    format!(
                        "this server does not answer to the name {}: it answers to localhost, \
                         IP addresses and the names given with --http-allowed-host",
                        quote(host)
                    ),
                ));
            }
        }
        let origin = headers.get(http::header::ORIGIN)?;
        let origin_text = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
        let own = host.is_some_and(|host| {
            let host = host.to_ascii_lowercase();
            origin_text
                .split_once("://")
                .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && rest == host)
        });
        if own || self.origins.contains(&origin_text) {
            return None;
        }
        Some(gateway_status(
            Code::PermissionDenied,
            "ORIGIN_NOT_ALLOWED",
            format!(
                "a request from a web page of {} is refused: only this server's own pages may \
                 call it from a browser (allow another origin with --http-allowed-origin)",
                quote(&origin_text)
            ),
        ))
    }
}

/// Whether `host` (a `Host` header: a name or address, maybe with a port) is one of `names`,
/// `localhost` (or under `.localhost`), or an IP address.
fn host_allowed(names: &[String], host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<IpAddr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok()
        || names.contains(&name)
}

/// The middleware: answers a refused request with Google's JSON error (403), passes the rest.
pub(super) async fn guard(
    State(rules): State<std::sync::Arc<BrowserRules>>,
    request: Request,
    next: Next,
) -> Response {
    match rules.refusal(request.headers(), request.uri()) {
        None => next.run(request).await,
        Some(status) => {
            tracing::info!(
                path = %request.uri().path(),
                reason = status.message(),
                "HTTP request from a browser refused"
            );
            error_response(&status, crate::proto::descriptor_pool())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        map
    }

    /// The server's own origin passes, others are refused; listed origins pass.
    #[test]
    fn origins() {
        let uri: http::Uri = "/v1/operations".parse().expect("uri");
        let rules = BrowserRules::new().allow_origin("https://App.example.com/");
        let pass = |h: &[(&str, &str)]| rules.refusal(&headers(h), &uri).is_none();
        assert!(
            pass(&[("host", "127.0.0.1:8080")]),
            "no Origin: not a browser"
        );
        assert!(pass(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ]));
        assert!(pass(&[
            ("host", "localhost:8080"),
            ("origin", "https://LOCALHOST:8080")
        ]));
        assert!(pass(&[
            ("host", "x"),
            ("origin", "https://app.example.com")
        ]));
        assert!(!pass(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9090")
        ]));
        assert!(!pass(&[("host", "127.0.0.1:8080"), ("origin", "null")]));
        assert!(!pass(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example")
        ]));
        assert!(
            !pass(&[("origin", "http://127.0.0.1:8080")]),
            "no host to be the same as"
        );
    }

    /// With a host list, only localhost, addresses and listed names pass.
    #[test]
    fn hosts() {
        let uri: http::Uri = "/".parse().expect("uri");
        let any = BrowserRules::new();
        assert!(any
            .refusal(&headers(&[("host", "evil.example")]), &uri)
            .is_none());
        let rules = BrowserRules::new().only_hosts(["oprun.internal"]);
        for ok in [
            "localhost",
            "localhost:8080",
            "app.localhost:1",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "OPRUN.internal:443",
        ] {
            assert!(
                rules.refusal(&headers(&[("host", ok)]), &uri).is_none(),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "[nope]:1",
        ] {
            let status = rules.refusal(&headers(&[("host", bad)]), &uri).expect(bad);
            assert_eq!(status.code(), Code::PermissionDenied, "{bad}");
        }
        let h2: http::Uri = "http://evil.example:8080/v1".parse().expect("uri");
        assert!(
            rules.refusal(&HeaderMap::new(), &h2).is_some(),
            "HTTP/2's :authority"
        );
        assert!(
            rules.refusal(&HeaderMap::new(), &uri).is_none(),
            "HTTP/1.0 without Host"
        );
    }
}
