//! Trace context on the wire: W3C `traceparent`/`tracestate`, and Zipkin's B3 in its
//! single-header (`b3`) and multi-header (`X-B3-*`) forms, read from a request and
//! written onto the request a sidecar sends on. W3C wins when both came; B3 that came
//! in is written back in the form it came, naming our span, so an app that only reads
//! B3 still sees the hop (`docs/consul-semantics.md#tracing`). Anything malformed is
//! ignored, as if absent: a peer's header can never fail a request.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(super) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub(super) const B3: HeaderName = HeaderName::from_static("b3");
pub(super) const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(super) const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(super) const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(super) const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub(super) const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which B3 form came in, to write back the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum B3Form {
    Single,
    /// `short`: the trace ID came as 16 hex digits (64 bits), and goes on that way.
    Multi {
        short: bool,
    },
}

/// What a B3 header said about sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum B3Sampling {
    Sampled,
    NotSampled,
    /// No decision: the receiver's own sampler decides.
    Deferred,
}

/// The trace context a request came with.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Incoming {
    /// The caller's span, the parent of ours (remote; sampled flag as it came).
    pub(super) parent: Option<SpanContext>,
    /// B3 came in, in this form: it is written back too.
    pub(super) b3: Option<B3Form>,
    /// The parent came from B3 without a sampling decision.
    pub(super) deferred: bool,
    /// A bare `b3: 0`: the caller asked for no trace at all.
    pub(super) deny: bool,
}

/// Reads the trace context of a request's headers.
pub(super) fn extract(headers: &HeaderMap) -> Incoming {
    let w3c = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let (b3, b3_parent) = b3_of(headers);
    let mut incoming = Incoming {
        parent: None,
        b3,
        deferred: false,
        deny: false,
    };
    if let Some((trace_id, span_id, flags)) = w3c {
        let state = tracestate_of(headers);
        incoming.parent = Some(SpanContext::new(trace_id, span_id, flags, true, state));
        return incoming;
    }
    match b3_parent {
        B3Parsed::Parent {
            trace_id,
            span_id,
            sampling,
        } => {
            let flags = match sampling {
                B3Sampling::Sampled => TraceFlags::SAMPLED,
                B3Sampling::NotSampled | B3Sampling::Deferred => TraceFlags::NOT_SAMPLED,
            };
            incoming.deferred = sampling == B3Sampling::Deferred;
            incoming.parent = Some(SpanContext::new(
                trace_id,
                span_id,
                flags,
                true,
                TraceState::NONE,
            ));
        }
        B3Parsed::DenyOnly => incoming.deny = true,
        B3Parsed::None => {}
    }
    incoming
}

/// Writes `ours` (our span's context) onto a request going on: `traceparent`, the
/// `tracestate` it carries, and B3 in `b3`'s form when B3 came in. `parent` is our
/// span's parent, for B3's parent span ID.
pub(super) fn inject(
    headers: &mut HeaderMap,
    ours: &SpanContext,
    parent: Option<SpanId>,
    b3: Option<B3Form>,
) {
    let sampled = ours.is_sampled();
    let traceparent = format!(
        "00-{:032x}-{:016x}-{:02x}",
        ours.trace_id(),
        ours.span_id(),
        ours.trace_flags().to_u8()
    );
    if let Ok(v) = HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT, v);
    }
    let state = ours.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(v) if !state.is_empty() => {
            headers.insert(TRACESTATE, v);
        }
        _ => {
            headers.remove(TRACESTATE);
        }
    }
    match b3 {
        None => {}
        Some(B3Form::Single) => {
            let value = format!(
                "{:032x}-{:016x}-{}",
                ours.trace_id(),
                ours.span_id(),
                if sampled { "1" } else { "0" }
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(B3, v);
            }
        }
        Some(B3Form::Multi { short }) => {
            let trace_id = if short {
                // The high 64 bits were zero when it came in: the same ID, as it came.
                format!(
                    "{:016x}",
                    u128::from_be_bytes(ours.trace_id().to_bytes()) as u64
                )
            } else {
                format!("{:032x}", ours.trace_id())
            };
            let span_id = format!("{:016x}", ours.span_id());
            for (name, value) in [(B3_TRACE_ID, trace_id), (B3_SPAN_ID, span_id)] {
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
            match parent.and_then(|p| HeaderValue::from_str(&format!("{p:016x}")).ok()) {
                Some(v) => {
                    headers.insert(B3_PARENT_SPAN_ID, v);
                }
                None => {
                    headers.remove(B3_PARENT_SPAN_ID);
                }
            }
            // Debug (`X-B3-Flags: 1`) implies sampled and is passed on as it came.
            if headers.get(B3_FLAGS).is_none_or(|f| f != "1") {
                headers.insert(
                    B3_SAMPLED,
                    HeaderValue::from_static(if sampled { "1" } else { "0" }),
                );
            }
        }
    }
}

/// `traceparent`, as W3C Trace Context level 1 defines it: version `00` exactly 55
/// characters; a later version at least that, with what follows set off by `-`;
/// version `ff`, upper-case hex and all-zero IDs are invalid.
pub(super) fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim();
    let b = value.as_bytes();
    if b.len() < 55 {
        return None;
    }
    let version = &value[..2];
    if !is_lower_hex(version) || version == "ff" {
        return None;
    }
    if version == "00" && b.len() != 55 {
        return None;
    }
    if b.len() > 55 && b[55] != b'-' {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let span_id = hex_u64(&value[36..52])?;
    let flags = &value[53..55];
    if !is_lower_hex(flags) || trace_id == 0 || span_id == 0 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((
        TraceId::from_bytes(trace_id.to_be_bytes()),
        SpanId::from_bytes(span_id.to_be_bytes()),
        // Only the sampled bit is known to level 1; the others are not passed on.
        TraceFlags::new(flags & 0x01),
    ))
}

/// Every `tracestate` header, joined as the specification says; invalid: none.
fn tracestate_of(headers: &HeaderMap) -> TraceState {
    let joined = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if joined.trim().is_empty() {
        return TraceState::NONE;
    }
    joined.parse().unwrap_or(TraceState::NONE)
}

enum B3Parsed {
    None,
    /// Only a sampling decision of "no" (`b3: 0`).
    DenyOnly,
    Parent {
        trace_id: TraceId,
        span_id: SpanId,
        sampling: B3Sampling,
    },
}

/// B3, single header first (it wins when both forms came, as Zipkin's libraries read
/// them).
fn b3_of(headers: &HeaderMap) -> (Option<B3Form>, B3Parsed) {
    if let Some(value) = headers.get(B3).and_then(|v| v.to_str().ok()) {
        return (Some(B3Form::Single), parse_b3_single(value));
    }
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(trace), Some(span)) = (text(B3_TRACE_ID), text(B3_SPAN_ID)) else {
        return (None, B3Parsed::None);
    };
    let trace = trace.trim();
    let short = trace.len() == 16;
    let sampling = if text(B3_FLAGS).is_some_and(|f| f.trim() == "1") {
        B3Sampling::Sampled
    } else {
        match text(B3_SAMPLED).map(str::trim) {
            Some("1" | "true") => B3Sampling::Sampled,
            Some("0" | "false") => B3Sampling::NotSampled,
            _ => B3Sampling::Deferred,
        }
    };
    let parsed = match (b3_trace_id(trace), hex_u64(span.trim())) {
        (Some(trace_id), Some(span_id)) if span_id != 0 => B3Parsed::Parent {
            trace_id,
            span_id: SpanId::from_bytes(span_id.to_be_bytes()),
            sampling,
        },
        _ => B3Parsed::None,
    };
    let form = matches!(parsed, B3Parsed::Parent { .. }).then_some(B3Form::Multi { short });
    (form, parsed)
}

/// `b3: {trace}-{span}[-{sampling}[-{parent span}]]`, or a bare sampling decision.
#[cfg(test)]
fn parse_b3_single_parts(value: &str) -> Option<(TraceId, SpanId, B3Sampling)> {
    match parse_b3_single(value) {
        B3Parsed::Parent {
            trace_id,
            span_id,
            sampling,
        } => Some((trace_id, span_id, sampling)),
        _ => None,
    }
}

fn parse_b3_single(value: &str) -> B3Parsed {
    let value = value.trim();
    let parts: Vec<&str> = value.split('-').collect();
    match parts.as_slice() {
        ["0"] => B3Parsed::DenyOnly,
        // "1" and "d" alone: sample, but no IDs to continue; our sampler decides.
        [_] => B3Parsed::None,
        [trace, span, rest @ ..] if rest.len() <= 2 => {
            let sampling = match rest.first() {
                None => B3Sampling::Deferred,
                Some(&"1" | &"d") => B3Sampling::Sampled,
                Some(&"0") => B3Sampling::NotSampled,
                Some(_) => return B3Parsed::None,
            };
            if let Some(parent) = rest.get(1)
                && hex_u64(parent).is_none()
            {
                return B3Parsed::None;
            }
            match (b3_trace_id(trace), hex_u64(span)) {
                (Some(trace_id), Some(span_id)) if span_id != 0 => B3Parsed::Parent {
                    trace_id,
                    span_id: SpanId::from_bytes(span_id.to_be_bytes()),
                    sampling,
                },
                _ => B3Parsed::None,
            }
        }
        _ => B3Parsed::None,
    }
}

/// A B3 trace ID: 32 hex digits, or 16 (the high 64 bits zero).
fn b3_trace_id(text: &str) -> Option<TraceId> {
    let id = match text.len() {
        32 => hex_u128(text)?,
        16 => u128::from(hex_u64(text)?),
        _ => return None,
    };
    (id != 0).then(|| TraceId::from_bytes(id.to_be_bytes()))
}

fn is_lower_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_u128(text: &str) -> Option<u128> {
    (text.len() == 32 && is_lower_hex(text))
        .then(|| u128::from_str_radix(text, 16).ok())
        .flatten()
}

fn hex_u64(text: &str) -> Option<u64> {
    (text.len() == 16 && is_lower_hex(text))
        .then(|| u64::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn traceparent_follows_the_w3c_grammar() {
        let ok = format!("00-{TRACE}-{SPAN}-01");
        let (t, s, f) = parse_traceparent(&ok).unwrap();
        assert_eq!(format!("{t:032x}"), TRACE);
        assert_eq!(format!("{s:016x}"), SPAN);
        assert!(f.is_sampled());
        assert!(
            !parse_traceparent(&format!("00-{TRACE}-{SPAN}-00"))
                .unwrap()
                .2
                .is_sampled()
        );
        // A later version may carry more, set off by a dash.
        assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01-more")).is_some());
        for bad in [
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01-more"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{TRACE}-{SPAN}-0x"),
            format!("00_{TRACE}-{SPAN}-01"),
            format!("01-{TRACE}-{SPAN}-01x"),
            "00-abc".to_owned(),
            String::new(),
        ] {
            assert!(parse_traceparent(&bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn w3c_wins_and_tracestate_comes_along() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "vendor=a"),
            ("tracestate", "other=b"),
            ("b3", &format!("{}-{}-1", "1".repeat(32), "2".repeat(16))),
        ]);
        let incoming = extract(&h);
        let parent = incoming.parent.unwrap();
        assert_eq!(format!("{:032x}", parent.trace_id()), TRACE);
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_state().header(), "vendor=a,other=b");
        assert_eq!(incoming.b3, Some(B3Form::Single));
    }

    #[test]
    fn b3_single_forms() {
        let (t, s, sampling) = parse_b3_single_parts(&format!("{TRACE}-{SPAN}-1")).unwrap();
        assert_eq!(format!("{t:032x}-{s:016x}"), format!("{TRACE}-{SPAN}"));
        assert_eq!(sampling, B3Sampling::Sampled);
        let with_parent = format!("{TRACE}-{SPAN}-d-{SPAN}");
        assert_eq!(
            parse_b3_single_parts(&with_parent).unwrap().2,
            B3Sampling::Sampled
        );
        let short = parse_b3_single_parts(&format!("a3ce929d0e0e4736-{SPAN}-0")).unwrap();
        assert_eq!(
            format!("{:032x}", short.0),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert_eq!(short.2, B3Sampling::NotSampled);
        assert_eq!(
            parse_b3_single_parts(&format!("{TRACE}-{SPAN}")).unwrap().2,
            B3Sampling::Deferred
        );
        for bad in [
            "1",
            "d",
            "x-y",
            &format!("{TRACE}-{SPAN}-2"),
            &format!("{TRACE}-zz"),
        ] {
            assert!(parse_b3_single_parts(bad).is_none(), "{bad}");
        }
        assert!(extract(&headers(&[("b3", "0")])).deny);
        assert!(extract(&headers(&[("b3", "1")])).parent.is_none());
    }

    #[test]
    fn b3_multi_with_flags_and_deferral() {
        let h = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]);
        let incoming = extract(&h);
        assert_eq!(incoming.b3, Some(B3Form::Multi { short: true }));
        assert!(incoming.parent.unwrap().is_sampled());
        let deferred = extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
        assert!(deferred.deferred);
        assert!(!deferred.parent.unwrap().is_sampled());
        let debug = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-flags", "1"),
        ]));
        assert!(debug.parent.unwrap().is_sampled() && !debug.deferred);
        assert!(
            extract(&headers(&[("x-b3-traceid", "nope"), ("x-b3-spanid", SPAN)]))
                .parent
                .is_none()
        );
    }

    #[test]
    fn injection_names_our_span_in_every_form_that_came() {
        let trace_id = TraceId::from_bytes(0xa3ce929d0e0e4736u128.to_be_bytes());
        let ours = SpanContext::new(
            trace_id,
            SpanId::from_bytes(7u64.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            "k=v".parse().unwrap(),
        );
        let parent = SpanId::from_bytes(9u64.to_be_bytes());
        let mut h = HeaderMap::new();
        inject(
            &mut h,
            &ours,
            Some(parent),
            Some(B3Form::Multi { short: true }),
        );
        assert_eq!(
            h["traceparent"],
            "00-0000000000000000a3ce929d0e0e4736-0000000000000007-01"
        );
        assert_eq!(h["tracestate"], "k=v");
        assert_eq!(h["x-b3-traceid"], "a3ce929d0e0e4736");
        assert_eq!(h["x-b3-spanid"], "0000000000000007");
        assert_eq!(h["x-b3-parentspanid"], "0000000000000009");
        assert_eq!(h["x-b3-sampled"], "1");

        let mut single = headers(&[("tracestate", "stale=1")]);
        let unsampled = SpanContext::new(
            trace_id,
            SpanId::from_bytes(7u64.to_be_bytes()),
            TraceFlags::NOT_SAMPLED,
            false,
            TraceState::NONE,
        );
        inject(&mut single, &unsampled, None, Some(B3Form::Single));
        assert_eq!(
            single["b3"],
            "0000000000000000a3ce929d0e0e4736-0000000000000007-0"
        );
        assert!(single.get("tracestate").is_none());
        assert!(single["traceparent"].to_str().unwrap().ends_with("-00"));
    }
}
