//! The intentions decision (`ferrule_control::intentions::decide`): per connection (L4)
//! against 10 and 1,000 intentions, and per request (L7) against one intention with 20
//! permissions. The callers are chosen so the decision scans everything: the last source
//! in evaluation order, or nobody.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrule_control::api::intentions::ServiceIntentionsEntry;
use ferrule_control::identity::ServiceId;
use ferrule_control::intentions::{Action, Destination, Intentions, Peer, Request, decide};
use http::HeaderMap;

const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

fn intentions(sources: &str) -> Intentions {
    let json =
        format!(r#"[{{ "Kind": "service-intentions", "Name": "api", "Sources": [{sources}] }}]"#);
    let entries: Vec<ServiceIntentionsEntry> =
        serde_json::from_str(&json).expect("the bench's own intentions parse");
    Intentions::from_config_entries(
        &entries,
        Destination::new("default", "default", "api"),
        Action::Deny,
    )
    .expect("the bench's own intentions are valid")
}

fn peer(service: &str) -> Peer {
    Peer::from(&ServiceId::new(TD, "default", "dc1", service))
}

fn l4(c: &mut Criterion) {
    for n in [10, 1_000] {
        let sources: Vec<String> = (0..n)
            .map(|i| format!(r#"{{ "Name": "svc{i:04}", "Action": "allow" }}"#))
            .collect();
        let ixns = intentions(&sources.join(", "));
        let last = ixns
            .rules()
            .last()
            .map(|r| r.source().name.as_str().to_owned())
            .expect("rules");
        let (matched, stranger) = (peer(&last), peer("stranger"));
        c.bench_function(&format!("l4 decision, {n} intentions, last matches"), |b| {
            b.iter(|| decide(black_box(&ixns), black_box(&matched), None))
        });
        c.bench_function(&format!("l4 decision, {n} intentions, none matches"), |b| {
            b.iter(|| decide(black_box(&ixns), black_box(&stranger), None))
        });
    }
}

fn l7(c: &mut Criterion) {
    let permissions: Vec<String> = (0..20)
        .map(|i| format!(r#"{{ "Action": "allow", "HTTP": {{ "PathPrefix": "/api/p{i}/" }} }}"#))
        .collect();
    let ixns = intentions(&format!(
        r#"{{ "Name": "web", "Permissions": [{}] }}"#,
        permissions.join(", ")
    ));
    let web = peer("web");
    let headers = HeaderMap::new();
    let last = Request {
        method: "GET",
        path: "/api/p19/item",
        headers: &headers,
    };
    let none = Request {
        path: "/admin",
        ..last
    };
    c.bench_function("l7 decision, 20 permissions, last matches", |b| {
        b.iter(|| decide(black_box(&ixns), black_box(&web), Some(black_box(&last))))
    });
    c.bench_function("l7 decision, 20 permissions, none matches", |b| {
        b.iter(|| decide(black_box(&ixns), black_box(&web), Some(black_box(&none))))
    });
}

criterion_group!(benches, l4, l7);
criterion_main!(benches);
