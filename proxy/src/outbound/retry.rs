//! When a request is tried again: a route's retry policy read into the conditions it
//! names, the decision on a try's outcome (a response's status or gRPC status, a reset,
//! no connection), and the wait before the next try. Envoy's `retry_on` semantics are
//! the reference (<https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/router_filter#x-envoy-retry-on>):
//! `5xx` and `gateway-error` also cover resets and failed connections; the gRPC
//! conditions read `grpc-status` from the response headers (a trailers-only answer).

use std::time::Duration;

use ferrule_control::routing::RetryPolicy;
use http::{HeaderMap, StatusCode};

/// One `retry_on` condition; its label is Envoy's name for it, and the `reason` label
/// of `ferrule_upstream_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Condition {
    FiveXx,
    GatewayError,
    Reset,
    ConnectFailure,
    RefusedStream,
    Retriable4xx,
    RetriableStatusCodes,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

const ALL: [Condition; 12] = [
    Condition::FiveXx,
    Condition::GatewayError,
    Condition::Reset,
    Condition::ConnectFailure,
    Condition::RefusedStream,
    Condition::Retriable4xx,
    Condition::RetriableStatusCodes,
    Condition::Cancelled,
    Condition::DeadlineExceeded,
    Condition::Internal,
    Condition::ResourceExhausted,
    Condition::Unavailable,
];

impl Condition {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Condition::FiveXx => "5xx",
            Condition::GatewayError => "gateway-error",
            Condition::Reset => "reset",
            Condition::ConnectFailure => "connect-failure",
            Condition::RefusedStream => "refused-stream",
            Condition::Retriable4xx => "retriable-4xx",
            Condition::RetriableStatusCodes => "retriable-status-codes",
            Condition::Cancelled => "cancelled",
            Condition::DeadlineExceeded => "deadline-exceeded",
            Condition::Internal => "internal",
            Condition::ResourceExhausted => "resource-exhausted",
            Condition::Unavailable => "unavailable",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The gRPC status code this condition retries on, if it is a gRPC one.
    fn grpc_code(self) -> Option<u32> {
        match self {
            Condition::Cancelled => Some(1),
            Condition::DeadlineExceeded => Some(4),
            Condition::ResourceExhausted => Some(8),
            Condition::Internal => Some(13),
            Condition::Unavailable => Some(14),
            _ => None,
        }
    }
}

/// How a try failed without a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No instance could be dialled.
    ConnectFailure,
    /// The request went out and the stream or connection ended before response
    /// headers; `refused` when the server refused the stream (HTTP/2 `REFUSED_STREAM`).
    Reset { refused: bool },
}

/// A route's retry policy, read once per request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) num_retries: u32,
    on: u16,
    status_codes: Vec<u16>,
}

impl Policy {
    /// Reads `policy`; conditions this proxy does not know are ignored.
    pub(crate) fn new(policy: &RetryPolicy) -> Policy {
        let on = policy
            .on
            .iter()
            .filter_map(|name| ALL.iter().find(|c| c.label() == name.trim()))
            .fold(0, |bits, c| bits | c.bit());
        Policy {
            num_retries: policy.num_retries,
            on,
            status_codes: policy.on_status_codes.clone(),
        }
    }

    fn has(&self, c: Condition) -> bool {
        self.on & c.bit() != 0
    }

    /// Whether any try may follow the first.
    pub(crate) fn may_retry(&self) -> bool {
        self.num_retries > 0 && self.on != 0
    }

    /// The condition a response with `status` and `headers` meets, if any.
    pub(crate) fn on_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Condition> {
        let code = status.as_u16();
        let gateway = matches!(code, 502..=504);
        let met = |c: Condition| {
            self.has(c)
                && match c {
                    Condition::FiveXx => status.is_server_error(),
                    Condition::GatewayError => gateway,
                    Condition::Retriable4xx => code == 409,
                    Condition::RetriableStatusCodes => self.status_codes.contains(&code),
                    _ => false,
                }
        };
        if let Some(c) = ALL.into_iter().find(|c| met(*c)) {
            return Some(c);
        }
        let grpc = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())?;
        ALL.into_iter()
            .find(|c| self.has(*c) && c.grpc_code() == Some(grpc))
    }

    /// The condition a try that ended without a response meets, if any.
    pub(crate) fn on_failure(&self, failure: Failure) -> Option<Condition> {
        let specific = match failure {
            Failure::ConnectFailure => Condition::ConnectFailure,
            Failure::Reset { refused: true } => Condition::RefusedStream,
            Failure::Reset { refused: false } => Condition::Reset,
        };
        [
            Condition::Reset,
            Condition::FiveXx,
            Condition::GatewayError,
            specific,
        ]
        .into_iter()
        .find(|c| self.has(*c))
    }
}

/// Envoy's default back-off between tries: fully jittered, exponential from 25 ms,
/// never over 250 ms.
const BASE: Duration = Duration::from_millis(25);
const MAX: Duration = Duration::from_millis(250);

/// How long to wait before retry number `retry` (1 for the first): a random time below
/// `(2^retry - 1) * 25 ms`, at most 250 ms.
pub(crate) fn backoff(retry: u32) -> Duration {
    let ceiling = BASE.saturating_mul((1u32 << retry.min(16)) - 1).min(MAX);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(250).max(1);
    Duration::from_millis(fastrand::u64(..millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str], codes: &[u16]) -> Policy {
        Policy::new(&RetryPolicy {
            num_retries: 2,
            on: on.iter().map(|s| (*s).to_owned()).collect(),
            on_status_codes: codes.to_vec(),
        })
    }

    fn status(p: &Policy, code: u16) -> Option<Condition> {
        p.on_response(StatusCode::from_u16(code).unwrap(), &HeaderMap::new())
    }

    fn grpc(p: &Policy, code: &'static str) -> Option<Condition> {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", code.parse().unwrap());
        p.on_response(StatusCode::OK, &h)
    }

    #[test]
    fn responses_are_retried_on_the_conditions_named() {
        let five = policy(&["5xx"], &[]);
        assert_eq!(status(&five, 500), Some(Condition::FiveXx));
        assert_eq!(status(&five, 503), Some(Condition::FiveXx));
        assert_eq!(status(&five, 409), None);
        assert_eq!(status(&five, 200), None);
        let gateway = policy(&["gateway-error"], &[]);
        assert_eq!(status(&gateway, 500), None);
        for code in [502, 503, 504] {
            assert_eq!(status(&gateway, code), Some(Condition::GatewayError));
        }
        let conflict = policy(&["retriable-4xx"], &[]);
        assert_eq!(status(&conflict, 409), Some(Condition::Retriable4xx));
        assert_eq!(status(&conflict, 404), None);
        let codes = policy(&["retriable-status-codes"], &[418, 503]);
        assert_eq!(status(&codes, 418), Some(Condition::RetriableStatusCodes));
        assert_eq!(status(&codes, 500), None);
        // The codes alone do nothing without the condition.
        assert_eq!(status(&policy(&[], &[418]), 418), None);
        assert!(!policy(&[], &[]).may_retry());
        assert!(!policy(&["not-a-condition"], &[]).may_retry());
    }

    #[test]
    fn grpc_statuses_are_read_from_the_response_headers() {
        let p = policy(
            &[
                "cancelled",
                "deadline-exceeded",
                "internal",
                "resource-exhausted",
                "unavailable",
            ],
            &[],
        );
        assert_eq!(grpc(&p, "1"), Some(Condition::Cancelled));
        assert_eq!(grpc(&p, "4"), Some(Condition::DeadlineExceeded));
        assert_eq!(grpc(&p, "8"), Some(Condition::ResourceExhausted));
        assert_eq!(grpc(&p, "13"), Some(Condition::Internal));
        assert_eq!(grpc(&p, "14"), Some(Condition::Unavailable));
        assert_eq!(grpc(&p, "0"), None);
        assert_eq!(grpc(&p, "2"), None);
        assert_eq!(grpc(&p, "junk"), None);
        assert_eq!(grpc(&policy(&["unavailable"], &[]), "4"), None);
        assert_eq!(grpc(&policy(&["5xx"], &[]), "14"), None);
    }

    #[test]
    fn failures_without_a_response_are_retried_as_envoy_does() {
        let reset = Failure::Reset { refused: false };
        let refused = Failure::Reset { refused: true };
        let connect = Failure::ConnectFailure;
        let table = [
            ("5xx", [true, true, true]),
            ("gateway-error", [true, true, true]),
            ("reset", [true, true, true]),
            ("connect-failure", [false, false, true]),
            ("refused-stream", [false, true, false]),
            ("retriable-4xx", [false, false, false]),
        ];
        for (on, want) in table {
            let p = policy(&[on], &[]);
            let got = [reset, refused, connect].map(|f| p.on_failure(f).is_some());
            assert_eq!(got, want, "{on}");
        }
        let p = policy(&["connect-failure"], &[]);
        assert_eq!(p.on_failure(connect), Some(Condition::ConnectFailure));
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_ceiling_capped_at_250_ms() {
        for _ in 0..200 {
            assert!(backoff(1) < Duration::from_millis(25));
            assert!(backoff(2) < Duration::from_millis(75));
            assert!(backoff(3) < Duration::from_millis(175));
            assert!(backoff(10) < Duration::from_millis(250));
            assert!(backoff(40) < Duration::from_millis(250));
        }
        let spread: std::collections::HashSet<Duration> = (0..50).map(|_| backoff(3)).collect();
        assert!(spread.len() > 5, "jittered: {spread:?}");
    }
}
