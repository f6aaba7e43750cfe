//! A collector endpoint URL, split into what a connection needs (`http[s]://host[:port]
//! [/path]`). Built into every binary, tracing's transports or not, so that
//! configuration checks (`--check-config`, a reload) refuse an endpoint the exporter
//! could never use, instead of the next start failing.
//!
//! A query (`?…`) or a fragment (`#…`) is refused: OTLP/HTTP appends `/v1/traces` to
//! the endpoint's path, which after a query would land inside it (`/otlp?key=abc
//! /v1/traces`), and a fragment is never sent over the wire at all. A collector's key
//! goes in `otlp_headers`, not in the URL (docs/tracing.md).

/// Default port of an `https://` endpoint without one (the URL's own default).
pub const HTTPS_PORT: u16 = 443;

/// Why an endpoint with a query or a fragment is refused.
pub const NO_QUERY_IN_COLLECTOR_URL: &str =
    "the collector URL has a query (?...) or a fragment (#...): neither is supported \
     (OTLP/HTTP adds /v1/traces to the path); send a key as a header (otlp_headers or \
     OTEL_EXPORTER_OTLP_HEADERS)";

/// A collector endpoint, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://`: TLS.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path, at least `/`.
    pub path: String,
}

impl Endpoint {
    /// `http[s]://host[:port][/path]`; `plain_port` is the port of an `http://` URL
    /// without one (`https://` defaults to [`HTTPS_PORT`]).
    pub fn parse(url: &str, plain_port: u16) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err("the collector URL must start with http:// or https://".into());
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            // It would break the request line or the `:authority` it is written into.
            return Err("the collector URL contains a space or a control character".into());
        }
        // No message below repeats the URL: a password before the host may be in it
        // (`http://user:pa/ss@host` is read as host `user`, port `pa`).
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(crate::config::NO_CREDENTIALS_IN_COLLECTOR_URL.into());
        }
        // Not repeated either: a query may hold a key.
        if rest.contains(['?', '#']) {
            return Err(NO_QUERY_IN_COLLECTOR_URL.into());
        }
        let default_port = if tls { HTTPS_PORT } else { plain_port };
        let bad_port = || {
            "the collector URL's port is not a number from 1 to 65535 (credentials in it, \
             user:password@host, are not supported either)"
                .to_string()
        };
        // `[v6]` or `[v6]:port`; otherwise `host` or `host:port`.
        let (host, port_text) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (h, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| "unclosed [ in the collector URL's host".to_string())?;
                match after {
                    "" => (h, None),
                    _ => (h, Some(after.strip_prefix(':').ok_or_else(bad_port)?)),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        let port = match port_text {
            Some(p) => p.parse().ok().filter(|p| *p > 0).ok_or_else(bad_port)?,
            None => default_port,
        };
        if host.is_empty() {
            return Err("the collector URL has no host".into());
        }
        // A name or an IPv4 address; in brackets, an IPv6 address (with its zone).
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '-' | '_')
                || (authority.starts_with('[') && matches!(c, ':' | '%'))
        };
        if !host.chars().all(allowed) {
            return Err("the collector URL's host is not a host name or an IP address".into());
        }
        Ok(Endpoint {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// `host:port` as an HTTP `Host` header or URI authority (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_endpoints() {
        let e = Endpoint::parse("http://localhost:4317", 1).unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.path.as_str()),
            (false, "localhost", 4317, "/")
        );
        let e = Endpoint::parse("http://127.0.0.1:4318/v1/traces", 1).unwrap();
        assert_eq!((e.port, e.path.as_str()), (4318, "/v1/traces"));
        assert_eq!(
            Endpoint::parse("http://collector", 4317).unwrap().port,
            4317
        );
        let e = Endpoint::parse("https://collector/v1/traces", 4318).unwrap();
        assert_eq!((e.tls, e.port), (true, HTTPS_PORT));
        let e = Endpoint::parse("https://[::1]:9/x", 1).unwrap();
        assert_eq!(
            (e.host.as_str(), e.authority()),
            ("::1", "[::1]:9".to_string())
        );
        assert!(Endpoint::parse("ftp://x", 1).is_err());
        // Credentials before the host: refused, and no message repeats them.
        for url in [
            "http://user:s3cret@collector:4318",
            "https://user:pa/s3cret@collector/v1/traces",
            "http://user:s3cret@[::1]",
            "http://[::1]:s3cret",
        ] {
            let e = Endpoint::parse(url, 1).unwrap_err();
            assert!(!e.contains("cret"), "{e}");
        }
        assert!(Endpoint::parse("http://:80", 1).is_err());
        assert!(Endpoint::parse("http://h:x", 1).is_err());
        // Bracketed IPv6 without a port takes the default one.
        let e = Endpoint::parse("http://[::1]/v1/traces", 4318).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("::1", 4318, "/v1/traces")
        );
        let e = Endpoint::parse("https://[fe80::1]", 1).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("fe80::1", HTTPS_PORT));
        assert!(Endpoint::parse("http://[::1", 1).is_err());
        assert!(Endpoint::parse("http://[::1]x", 1).is_err());
        assert!(Endpoint::parse("http://[]:80", 1).is_err());
        // What a connection could never use.
        for url in [
            "http://",
            "http://collector:43l7",
            "http://collector:0",
            "http://h h:4318",
            "http://collector:4318/v1/tr aces",
            "http://coll\u{0}ector",
            "http://collector?x=1",
            "http://coll:ector:1",
        ] {
            assert!(Endpoint::parse(url, 1).is_err(), "{url}");
        }
        // A query or a fragment: refused, wherever it starts, and not repeated.
        for url in [
            "http://c/otlp?key=s3cret",
            "http://c/otlp#s3cret",
            "http://c:4318?key=s3cret",
            "https://c/v1/traces?",
            "http://c/#",
            "http://[::1]:4318/otlp?key=s3cret",
        ] {
            let e = Endpoint::parse(url, 1).unwrap_err();
            assert_eq!(e, NO_QUERY_IN_COLLECTOR_URL, "{url}");
        }
        let e = Endpoint::parse("http://[fe80::1%eth0]:4317", 1).unwrap();
        assert_eq!(e.host, "fe80::1%eth0");
        assert!(Endpoint::parse("http://otel_collector.local:4317", 1).is_ok());
    }
}
