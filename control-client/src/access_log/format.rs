//! The access-log format compiler: a `TextFormat` string or a `JSONFormat` object with
//! Envoy's command operators (`%START_TIME%`, `%REQ(X?Y):N%`, `%RESPONSE_CODE%`, …) is
//! parsed once, when the configuration arrives, into a [`Format`] the proxy renders
//! every record with. An operator this module does not know is an error naming it,
//! so a typo never turns into a silently empty field. The operators' meanings are
//! Envoy's (its access-log documentation, "Command Operators"); which ones ferrule
//! supports, and ferrule's own, are listed in `docs/consul-semantics.md#access-logs`.

use serde_json::Value;

/// One command operator, as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `%START_TIME%` or `%START_TIME(<strftime format>)%`.
    StartTime(Option<String>),
    /// `%REQ(X?Y):N%` / `%REQUEST_HEADER(…)%`.
    RequestHeader(HeaderRef),
    /// `%RESP(X?Y):N%` / `%RESPONSE_HEADER(…)%`.
    ResponseHeader(HeaderRef),
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    BytesReceived,
    BytesSent,
    Duration,
    Protocol,
    RouteName,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamTransportFailureReason,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamPeerUriSan,
    DownstreamLocalUriSan,
    UpstreamPeerUriSan,
    RequestedServerName,
    /// ferrule's own: the intentions' decision for this connection or request
    /// (`allow` / `deny`; absent where no decision is made, as on outbound traffic).
    IntentionDecision,
}

/// The header an `%REQ(…)%` or `%RESP(…)%` reads: `X`, else `Y`, cut to `N` characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRef {
    /// Lower case; a pseudo-header keeps its colon (`:path`).
    pub name: String,
    pub alternative: Option<String>,
    pub max_len: Option<usize>,
}

/// A string with operators in it: literal text and operators, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    Op(Operator),
}

impl Template {
    /// The operator alone, when the template is exactly one: a JSON value is then typed
    /// (a number stays a number, an absent value is `null`), as Envoy's JSON formatter
    /// renders it.
    pub fn single(&self) -> Option<&Operator> {
        match self.parts.as_slice() {
            [Part::Op(op)] => Some(op),
            _ => None,
        }
    }
}

/// A value of a JSON format: a template, a nested object, or any other JSON kept as is.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonNode {
    Template(Template),
    Object(Vec<(String, JsonNode)>),
    Fixed(Value),
}

/// A compiled format.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Rendered as is; a newline is added when the text has none at its end (Consul
    /// appends one to `TextFormat`).
    Text(Template),
    /// One JSON object per line, keys in the configured order.
    Json(Vec<(String, JsonNode)>),
}

/// Why a format does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown command operator %{0}%")]
    UnknownOperator(String),
    #[error("command operator %{0}% {1}")]
    BadArgument(String, &'static str),
    #[error("JSONFormat is not a JSON object: {0}")]
    NotAnObject(String),
}

/// The default record's keys and their operators: Consul's default JSON format for
/// Envoy, then ferrule's own (the peers' SPIFFE IDs and the intentions' decision).
pub const DEFAULT_JSON: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
    ("downstream_peer_uri_san", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("upstream_peer_uri_san", "%UPSTREAM_PEER_URI_SAN%"),
    ("intention_decision", "%INTENTION_DECISION%"),
];

impl Format {
    /// The default record: [`DEFAULT_JSON`].
    pub fn default_json() -> Format {
        let fields = DEFAULT_JSON
            .iter()
            .map(|(key, op)| {
                // The table is ours and every operator in it is known.
                let template = compile(op).unwrap_or_default();
                ((*key).to_owned(), JsonNode::Template(template))
            })
            .collect();
        Format::Json(fields)
    }

    /// A `TextFormat`.
    pub fn text(text: &str) -> Result<Format, FormatError> {
        compile(text).map(Format::Text)
    }

    /// A `JSONFormat`: a string holding a JSON object (Consul's form).
    pub fn json(text: &str) -> Result<Format, FormatError> {
        let value: Ordered =
            serde_json::from_str(text).map_err(|e| FormatError::NotAnObject(e.to_string()))?;
        match value {
            Ordered::Object(fields) => Ok(Format::Json(object(fields)?)),
            Ordered::Other(other) => Err(FormatError::NotAnObject(format!("got {other}"))),
        }
    }
}

fn object(fields: Vec<(String, Ordered)>) -> Result<Vec<(String, JsonNode)>, FormatError> {
    fields
        .into_iter()
        .map(|(key, value)| {
            let node = match value {
                Ordered::Other(Value::String(s)) => JsonNode::Template(compile(&s)?),
                Ordered::Object(inner) => JsonNode::Object(object(inner)?),
                Ordered::Other(other) => JsonNode::Fixed(other),
            };
            Ok((key, node))
        })
        .collect()
}

/// A JSON value whose objects keep their keys in the order written (serde_json's own
/// map sorts them), so a record's fields come out in the configured order.
enum Ordered {
    Object(Vec<(String, Ordered)>),
    Other(Value),
}

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> serde::de::Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut fields = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Ordered>()? {
            fields.push((key, value));
        }
        Ok(Ordered::Object(fields))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Ordered::Other(Value::Array(items)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
        Ok(Ordered::Other(Value::String(v.to_owned())))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
        Ok(Ordered::Other(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
        Ok(Ordered::Other(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
        Ok(Ordered::Other(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Ordered, E> {
        Ok(Ordered::Other(Value::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Other(Value::Null))
    }
}

/// Compiles one string: `%NAME%`, `%NAME(ARG)%` and `%NAME(ARG):N%` are operators;
/// any other `%` is literal text.
pub fn compile(text: &str) -> Result<Template, FormatError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('%') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match operator_text(after) {
            Some(len) => {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Op(operator(&after[..len])?));
                rest = &after[len + 1..];
            }
            None => {
                literal.push('%');
                rest = after;
            }
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(Template { parts })
}

/// The length of the operator text at the start of `s` (up to its closing `%`), if it
/// is shaped as one: an upper-case name, an optional `(…)` and an optional `:N`.
fn operator_text(s: &str) -> Option<usize> {
    let name = s
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    if name == 0 {
        return None;
    }
    let mut at = name;
    if s[at..].starts_with('(') {
        at += s[at..].find(')')? + 1;
    }
    if s[at..].starts_with(':') {
        let digits = s[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.len() - at - 1);
        at += 1 + digits;
    }
    s[at..].starts_with('%').then_some(at)
}

/// One operator's text (between the `%`s).
fn operator(text: &str) -> Result<Operator, FormatError> {
    let (head, max_len) = match text.rsplit_once(':') {
        Some((head, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            let n = n
                .parse()
                .map_err(|_| FormatError::BadArgument(text.into(), "has a bad length"))?;
            (head, Some(n))
        }
        _ => (text, None),
    };
    let (name, arg) = match head.split_once('(') {
        Some((name, arg)) => (name, Some(arg.trim_end_matches(')'))),
        None => (head, None),
    };
    if let Some(op) = with_argument(text, name, arg, max_len)? {
        return Ok(op);
    }
    if arg.is_some() || max_len.is_some() {
        return Err(FormatError::BadArgument(text.into(), "takes no argument"));
    }
    plain(name).ok_or_else(|| FormatError::UnknownOperator(text.into()))
}

/// The operators that take an argument; `None` when `name` is not one of them.
fn with_argument(
    text: &str,
    name: &str,
    arg: Option<&str>,
    max_len: Option<usize>,
) -> Result<Option<Operator>, FormatError> {
    let header = |arg: Option<&str>| -> Result<HeaderRef, FormatError> {
        let arg = arg
            .filter(|a| !a.is_empty())
            .ok_or_else(|| FormatError::BadArgument(text.into(), "needs a header name"))?;
        let (name, alternative) = match arg.split_once('?') {
            Some((a, b)) => (a, Some(b.to_ascii_lowercase())),
            None => (arg, None),
        };
        Ok(HeaderRef {
            name: name.to_ascii_lowercase(),
            alternative,
            max_len,
        })
    };
    Ok(Some(match name {
        "REQ" | "REQUEST_HEADER" => Operator::RequestHeader(header(arg)?),
        "RESP" | "RESPONSE_HEADER" => Operator::ResponseHeader(header(arg)?),
        "START_TIME" => {
            if max_len.is_some() {
                return Err(FormatError::BadArgument(text.into(), "takes no length"));
            }
            Operator::StartTime(arg.filter(|a| !a.is_empty()).map(str::to_owned))
        }
        _ => return Ok(None),
    }))
}

fn plain(name: &str) -> Option<Operator> {
    use Operator as O;
    Some(match name {
        "RESPONSE_CODE" => O::ResponseCode,
        "RESPONSE_FLAGS" => O::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => O::ResponseCodeDetails,
        "CONNECTION_TERMINATION_DETAILS" => O::ConnectionTerminationDetails,
        "BYTES_RECEIVED" => O::BytesReceived,
        "BYTES_SENT" => O::BytesSent,
        "DURATION" => O::Duration,
        "PROTOCOL" => O::Protocol,
        "ROUTE_NAME" => O::RouteName,
        "UPSTREAM_HOST" => O::UpstreamHost,
        "UPSTREAM_CLUSTER" => O::UpstreamCluster,
        "UPSTREAM_LOCAL_ADDRESS" => O::UpstreamLocalAddress,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => O::UpstreamTransportFailureReason,
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            O::DownstreamRemoteAddress
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
        | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => O::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => O::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => O::DownstreamLocalAddressWithoutPort,
        "DOWNSTREAM_PEER_URI_SAN" => O::DownstreamPeerUriSan,
        "DOWNSTREAM_LOCAL_URI_SAN" => O::DownstreamLocalUriSan,
        "UPSTREAM_PEER_URI_SAN" => O::UpstreamPeerUriSan,
        "REQUESTED_SERVER_NAME" => O::RequestedServerName,
        "INTENTION_DECISION" => O::IntentionDecision,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(text: &str) -> Vec<Part> {
        compile(text).unwrap().parts
    }

    #[test]
    fn operators_and_literals_are_split_in_order() {
        let parts = ops(
            "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" %RESPONSE_CODE%\n",
        );
        assert_eq!(
            parts,
            vec![
                Part::Literal("[".into()),
                Part::Op(Operator::StartTime(None)),
                Part::Literal("] \"".into()),
                Part::Op(Operator::RequestHeader(HeaderRef {
                    name: ":method".into(),
                    alternative: None,
                    max_len: None
                })),
                Part::Literal(" ".into()),
                Part::Op(Operator::RequestHeader(HeaderRef {
                    name: "x-envoy-original-path".into(),
                    alternative: Some(":path".into()),
                    max_len: None
                })),
                Part::Literal("\" ".into()),
                Part::Op(Operator::ResponseCode),
                Part::Literal("\n".into()),
            ]
        );
    }

    #[test]
    fn arguments_lengths_and_aliases() {
        assert_eq!(
            ops("%REQUEST_HEADER(User-Agent):10%"),
            vec![Part::Op(Operator::RequestHeader(HeaderRef {
                name: "user-agent".into(),
                alternative: None,
                max_len: Some(10)
            }))]
        );
        assert_eq!(
            ops("%START_TIME(%Y/%m/%d %H:%M:%S)%"),
            vec![Part::Op(Operator::StartTime(Some(
                "%Y/%m/%d %H:%M:%S".into()
            )))]
        );
        assert_eq!(ops("%RESP(grpc-status)%").len(), 1);
    }

    #[test]
    fn stray_percent_signs_are_text() {
        assert_eq!(ops("100% sure"), vec![Part::Literal("100% sure".into())]);
        assert_eq!(ops("%"), vec![Part::Literal("%".into())]);
        assert_eq!(
            ops("50%%DURATION%"),
            vec![Part::Literal("50%".into()), Part::Op(Operator::Duration)]
        );
    }

    #[test]
    fn an_unknown_operator_is_an_error_naming_it() {
        let err = compile("%START_TIME% %NOT_AN_OPERATOR%").unwrap_err();
        assert_eq!(err, FormatError::UnknownOperator("NOT_AN_OPERATOR".into()));
        assert!(err.to_string().contains("%NOT_AN_OPERATOR%"), "{err}");
        assert!(matches!(
            compile("%REQ()%"),
            Err(FormatError::BadArgument(..))
        ));
        assert!(matches!(
            compile("%DURATION(x)%"),
            Err(FormatError::BadArgument(..))
        ));
        assert!(Format::json(r#"{"a": "%BYTES_SNT%"}"#).is_err());
        assert!(Format::json(r#"["%DURATION%"]"#).is_err());
    }

    #[test]
    fn json_formats_keep_order_nesting_and_fixed_values() {
        let Format::Json(fields) =
            Format::json(r#"{"z": "%DURATION%", "a": {"code": "%RESPONSE_CODE%"}, "n": 3}"#)
                .unwrap()
        else {
            panic!("not json")
        };
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "n"]);
        assert!(matches!(&fields[1].1, JsonNode::Object(inner) if inner.len() == 1));
        assert_eq!(fields[2].1, JsonNode::Fixed(serde_json::json!(3)));
    }

    #[test]
    fn the_default_record_has_consuls_keys_then_ours() {
        let Format::Json(fields) = Format::default_json() else {
            panic!("not json")
        };
        assert_eq!(fields.len(), DEFAULT_JSON.len());
        for (key, node) in &fields {
            let JsonNode::Template(t) = node else {
                panic!("{key}")
            };
            assert!(t.single().is_some(), "{key} is one operator");
        }
        assert_eq!(fields[0].0, "start_time");
        assert_eq!(fields[23].0, "upstream_transport_failure_reason");
    }
}
