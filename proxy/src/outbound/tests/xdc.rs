//! Dialling across datacenters: a target reached through a mesh gateway keeps its own
//! server name and identity, and the instances of a prepared query each prove their
//! own identity (`docs/consul-semantics.md#mesh-gateways`, `#prepared-queries`).

use std::sync::atomic::{AtomicUsize, Ordering};

use ferrule_control::identity::ServiceId;

use super::*;

/// `api`'s leaf in dc2, signed by dc2's intermediate and carrying it.
fn api_in_dc2(mesh: &Mesh) -> Arc<Leaf> {
    let dc2 = mesh.ca.intermediate().unwrap();
    let spec = LeafSpec {
        datacenter: "dc2".into(),
        ..LeafSpec::service("api")
    };
    let issued = dc2.issue(&spec).unwrap();
    let pem = (issued.cert_pem.as_bytes(), issued.key_pem.as_bytes());
    Arc::new(model::parse_leaf(pem.0, pem.1, &provider()).unwrap())
}

/// A mesh gateway's part in a dial, as far as the caller can tell: bytes relayed both
/// ways to `to`, TLS untouched. Counts the connections it carried.
struct Relay {
    addr: SocketAddr,
    carried: Arc<AtomicUsize>,
    _task: AbortOnDropHandle<()>,
}

async fn relay(to: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let carried = Arc::new(AtomicUsize::new(0));
    let count = carried.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut downstream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut upstream) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                }
            });
        }
    });
    Relay {
        addr,
        carried,
        _task: AbortOnDropHandle::new(task),
    }
}

/// One target, `id`, with `endpoints` (address, identity required there).
fn one_target(id: &ServiceId, sni: String, endpoints: &[(SocketAddr, &ServiceId)]) -> Routing {
    let target = Target {
        id: "target".into(),
        sni,
        identity: id.clone(),
        endpoints: endpoints
            .iter()
            .map(|(addr, identity)| Endpoint {
                addr: addr.to_string(),
                identity: (*identity).clone(),
            })
            .collect(),
    };
    Routing::direct(target, Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_behind_a_gateway_is_dialled_with_its_own_name_and_identity() {
    let mesh = Mesh::new();
    let seen = recorder();
    let dc2_leaf = api_in_dc2(&mesh);
    let api_dc2 = dc2_leaf.id.clone();
    let api = instance_as(&mesh, dc2_leaf, "dc2", answers(200), seen.clone()).await;
    let gateway = relay(api.addr).await;
    let sni = model::service_sni(&api_dc2, None);
    let routing = one_target(&api_dc2, sni.clone(), &[(gateway.addr, &api_dc2)]);
    let listener = Listener::start(&mesh, upstream(Protocol::Http, routing)).await;
    let (status, _, body) = listener.get("/", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "dc2"));
    assert_eq!(
        gateway.carried.load(Ordering::SeqCst),
        1,
        "through the gateway"
    );
    assert_eq!(
        seen.lock()[0].sni.as_deref(),
        Some(sni.as_str()),
        "the target's server name, for the gateway to route on"
    );

    // The identity required is the target's, not the gateway's address's: the same
    // gateway for a target in dc1 finds the dc2 instance and refuses it.
    let api_dc1 = mesh.api.id.clone();
    let wrong = one_target(
        &api_dc1,
        model::service_sni(&api_dc1, None),
        &[(gateway.addr, &api_dc1)],
    );
    let mut listener = Listener::start(&mesh, upstream(Protocol::Http, wrong.clone())).await;
    listener.set_routing(wrong).await;
    let (status, _, _) = listener.get("/", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.lock().len(), 1, "nothing reached the dc2 instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_of_a_query_proves_its_own_identity() {
    let mesh = Mesh::new();
    let seen = recorder();
    let dc2_leaf = api_in_dc2(&mesh);
    let (api_dc1, api_dc2) = (mesh.api.id.clone(), dc2_leaf.id.clone());
    let one = instance(&mesh, "dc1", answers(200), seen.clone()).await;
    let two = instance_as(&mesh, dc2_leaf, "dc2", answers(200), seen.clone()).await;
    let td = &api_dc1.trust_domain;
    let sni = model::query_sni("geo-api", "dc1", td);
    let both = one_target(
        &api_dc1,
        sni.clone(),
        &[(one.addr, &api_dc1), (two.addr, &api_dc2)],
    );
    let mut listener = Listener::start(&mesh, upstream(Protocol::Tcp, both.clone())).await;
    listener.set_routing(both).await;
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let answer = raw_call(listener.addr).await;
        answered.insert(answer.rsplit("\r\n").next().unwrap_or_default().to_owned());
    }
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        ["dc1", "dc2"],
        "round robin over both, each verified as itself"
    );
    assert!(
        seen.lock()
            .iter()
            .all(|s| s.sni.as_deref() == Some(sni.as_str()))
    );

    // The dc1 instance required to be dc2's is refused; its connections go to the other.
    let crossed = one_target(&api_dc1, sni, &[(one.addr, &api_dc2), (two.addr, &api_dc2)]);
    listener.set_routing(crossed).await;
    for _ in 0..4 {
        assert!(raw_call(listener.addr).await.ends_with("dc2"));
    }
}
