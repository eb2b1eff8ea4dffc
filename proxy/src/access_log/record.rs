//! One access-log record: the facts of a finished L4 connection, L7 request or refused
//! connection, and how a compiled format renders them (text, or one JSON object per
//! line). Values follow Envoy's conventions: in text an absent value is `-`; in JSON a
//! field that is exactly one operator is typed (numbers stay numbers, an absent value
//! is `null`), anything else is a string with `-` for what is absent.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ferrule_control::access_log::format::{Format, HeaderRef, JsonNode, Operator, Part, Template};
use http::HeaderMap;
use serde_json::Value;

/// What an HTTP request said, as the log reads it.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    pub authority: Option<String>,
    pub scheme: Option<&'static str>,
    pub headers: HeaderMap,
}

/// Everything a record may show; `None` is absent.
#[derive(Debug, Clone)]
pub struct Record {
    pub start: SystemTime,
    pub duration: Duration,
    pub request: Option<RequestFacts>,
    pub response_headers: Option<HeaderMap>,
    /// 0 for L4 connections, as Envoy logs them.
    pub response_code: u16,
    pub response_flags: Option<&'static str>,
    pub response_code_details: Option<&'static str>,
    pub termination_details: Option<&'static str>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub protocol: Option<&'static str>,
    pub route_name: Option<String>,
    pub upstream_host: Option<String>,
    pub upstream_cluster: Option<String>,
    pub upstream_local_address: Option<SocketAddr>,
    pub upstream_transport_failure_reason: Option<String>,
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub downstream_peer_uri_san: Option<String>,
    pub downstream_local_uri_san: Option<String>,
    pub upstream_peer_uri_san: Option<String>,
    pub requested_server_name: Option<String>,
    pub decision: Option<&'static str>,
}

impl Record {
    pub fn new(start: SystemTime) -> Record {
        Record {
            start,
            duration: Duration::ZERO,
            request: None,
            response_headers: None,
            response_code: 0,
            response_flags: None,
            response_code_details: None,
            termination_details: None,
            bytes_received: 0,
            bytes_sent: 0,
            protocol: None,
            route_name: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_local_address: None,
            upstream_transport_failure_reason: None,
            downstream_remote: None,
            downstream_local: None,
            downstream_peer_uri_san: None,
            downstream_local_uri_san: None,
            upstream_peer_uri_san: None,
            requested_server_name: None,
            decision: None,
        }
    }
}

/// One operator's value.
#[derive(Debug, PartialEq)]
enum Val<'a> {
    Absent,
    Str(Cow<'a, str>),
    Num(u64),
}

fn text<'a>(s: Option<&'a str>) -> Val<'a> {
    s.map_or(Val::Absent, |s| Val::Str(Cow::Borrowed(s)))
}

fn owned<'a>(s: Option<String>) -> Val<'a> {
    s.map_or(Val::Absent, |s| Val::Str(Cow::Owned(s)))
}

impl Record {
    fn value(&self, op: &Operator) -> Val<'_> {
        use Operator as O;
        let addr = |a: Option<SocketAddr>| owned(a.map(|a| a.to_string()));
        let ip = |a: Option<SocketAddr>| owned(a.map(|a| a.ip().to_string()));
        match op {
            O::StartTime(format) => Val::Str(Cow::Owned(super::time::format(
                self.start,
                format.as_deref(),
            ))),
            O::RequestHeader(h) => self.request_header(h),
            O::ResponseHeader(h) => header(self.response_headers.as_ref(), h),
            O::ResponseCode => Val::Num(u64::from(self.response_code)),
            O::ResponseFlags => Val::Str(Cow::Borrowed(self.response_flags.unwrap_or("-"))),
            O::ResponseCodeDetails => text(self.response_code_details),
            O::ConnectionTerminationDetails => text(self.termination_details),
            O::BytesReceived => Val::Num(self.bytes_received),
            O::BytesSent => Val::Num(self.bytes_sent),
            O::Duration => Val::Num(self.duration.as_millis() as u64),
            O::Protocol => text(self.protocol),
            O::RouteName => text(self.route_name.as_deref()),
            O::UpstreamHost => text(self.upstream_host.as_deref()),
            O::UpstreamCluster => text(self.upstream_cluster.as_deref()),
            O::UpstreamLocalAddress => addr(self.upstream_local_address),
            O::UpstreamTransportFailureReason => {
                text(self.upstream_transport_failure_reason.as_deref())
            }
            O::DownstreamRemoteAddress => addr(self.downstream_remote),
            O::DownstreamRemoteAddressWithoutPort => ip(self.downstream_remote),
            O::DownstreamLocalAddress => addr(self.downstream_local),
            O::DownstreamLocalAddressWithoutPort => ip(self.downstream_local),
            O::DownstreamPeerUriSan => text(self.downstream_peer_uri_san.as_deref()),
            O::DownstreamLocalUriSan => text(self.downstream_local_uri_san.as_deref()),
            O::UpstreamPeerUriSan => text(self.upstream_peer_uri_san.as_deref()),
            O::RequestedServerName => text(self.requested_server_name.as_deref()),
            O::IntentionDecision => text(self.decision),
        }
    }

    fn request_header(&self, h: &HeaderRef) -> Val<'_> {
        let Some(req) = &self.request else {
            return Val::Absent;
        };
        let one = |name: &str| -> Option<&str> {
            match name {
                ":method" => Some(&req.method),
                ":path" => Some(&req.path),
                ":authority" => req.authority.as_deref(),
                ":scheme" => req.scheme,
                _ => req.headers.get(name).and_then(|v| v.to_str().ok()),
            }
        };
        let found = one(&h.name).or_else(|| h.alternative.as_deref().and_then(one));
        truncated(found, h.max_len)
    }
}

fn header<'a>(headers: Option<&'a HeaderMap>, h: &HeaderRef) -> Val<'a> {
    let Some(headers) = headers else {
        return Val::Absent;
    };
    let one = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let found = one(&h.name).or_else(|| h.alternative.as_deref().and_then(one));
    truncated(found, h.max_len)
}

fn truncated(found: Option<&str>, max_len: Option<usize>) -> Val<'_> {
    match (found, max_len) {
        (None, _) => Val::Absent,
        (Some(s), Some(n)) => match s.char_indices().nth(n) {
            Some((cut, _)) => Val::Str(Cow::Borrowed(&s[..cut])),
            None => Val::Str(Cow::Borrowed(s)),
        },
        (Some(s), None) => Val::Str(Cow::Borrowed(s)),
    }
}

/// The record as one line, newline included.
pub fn render(format: &Format, record: &Record) -> String {
    match format {
        Format::Text(template) => {
            let mut line = render_text(template, record);
            if !line.ends_with('\n') {
                line.push('\n');
            }
            line
        }
        Format::Json(fields) => {
            let mut line = String::new();
            json_object(fields, record, &mut line);
            line.push('\n');
            line
        }
    }
}

fn render_text(template: &Template, record: &Record) -> String {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            Part::Literal(s) => out.push_str(s),
            Part::Op(op) => match record.value(op) {
                Val::Absent => out.push('-'),
                Val::Str(s) => out.push_str(&s),
                Val::Num(n) => {
                    let _ = write!(out, "{n}");
                }
            },
        }
    }
    out
}

/// Writes one JSON object with its keys in the configured order (serde_json's map
/// would sort them).
fn json_object(fields: &[(String, JsonNode)], record: &Record, out: &mut String) {
    out.push('{');
    for (i, (key, node)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key.as_str()).to_string());
        out.push(':');
        let value = match node {
            JsonNode::Template(t) => match t.single() {
                Some(op) => match record.value(op) {
                    Val::Absent => Value::Null,
                    Val::Str(s) => Value::String(s.into_owned()),
                    Val::Num(n) => Value::from(n),
                },
                None => Value::String(render_text(t, record)),
            },
            JsonNode::Object(inner) => {
                json_object(inner, record, out);
                continue;
            }
            JsonNode::Fixed(v) => v.clone(),
        };
        out.push_str(&value.to_string());
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use ferrule_control::access_log::format::Format;

    fn l7() -> Record {
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/8".parse().unwrap());
        headers.insert("x-request-id", "abc".parse().unwrap());
        let mut response = HeaderMap::new();
        response.insert("content-type", "text/plain".parse().unwrap());
        let mut record = Record::new(UNIX_EPOCH + Duration::from_millis(1_460_751_420_310));
        record.duration = Duration::from_millis(12);
        record.request = Some(RequestFacts {
            method: "GET".into(),
            path: "/hello?x=1".into(),
            authority: Some("api".into()),
            scheme: None,
            headers,
        });
        record.response_headers = Some(response);
        record.response_code = 200;
        record.response_code_details = Some("via_upstream");
        record.bytes_sent = 5;
        record.protocol = Some("HTTP/1.1");
        record.downstream_remote = Some("127.0.0.1:5000".parse().unwrap());
        record.downstream_peer_uri_san = Some("spiffe://td/ns/default/dc/dc1/svc/web".into());
        record.decision = Some("allow");
        record
    }

    #[test]
    fn the_default_record_is_typed_json_with_nulls_for_what_is_absent() {
        let line = render(&Format::default_json(), &l7());
        assert!(line.ends_with("}\n"), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["start_time"], "2016-04-15T20:17:00.310Z");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/hello?x=1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["bytes_received"], 0);
        assert_eq!(v["bytes_sent"], 5);
        assert_eq!(v["duration"], 12);
        assert_eq!(v["user_agent"], "curl/8");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["authority"], "api");
        assert_eq!(v["x_forwarded_for"], Value::Null);
        assert_eq!(v["upstream_host"], Value::Null);
        assert_eq!(v["downstream_remote_address"], "127.0.0.1:5000");
        assert_eq!(
            v["downstream_peer_uri_san"],
            "spiffe://td/ns/default/dc/dc1/svc/web"
        );
        assert_eq!(v["intention_decision"], "allow");
        // Keys in the configured order.
        assert!(
            line.starts_with("{\"start_time\":\"2016-04-15T20:17:00.310Z\",\"route_name\":null,")
        );
    }

    #[test]
    fn text_renders_dashes_truncates_and_falls_back() {
        let format = Format::text(
            "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESP(CONTENT-TYPE)% %REQ(USER-AGENT):4% %UPSTREAM_HOST% %RESPONSE_CODE% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        )
        .unwrap();
        assert_eq!(
            render(&format, &l7()),
            "GET /hello?x=1 text/plain curl - 200 127.0.0.1\n"
        );
        let l4 = Record::new(UNIX_EPOCH);
        assert_eq!(render(&format, &l4), "- - - - - 0 -\n");
    }

    #[test]
    fn json_mixes_typed_fields_strings_and_nested_objects() {
        let format =
            Format::json(r#"{"who": "%INTENTION_DECISION% by %DOWNSTREAM_PEER_URI_SAN%", "n": {"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%"}, "fixed": true}"#)
                .unwrap();
        let line = render(&format, &l7());
        assert_eq!(
            line,
            "{\"who\":\"allow by spiffe://td/ns/default/dc/dc1/svc/web\",\"n\":{\"code\":200,\"flags\":\"-\"},\"fixed\":true}\n"
        );
    }
}
