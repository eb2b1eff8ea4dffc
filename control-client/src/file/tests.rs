//! The file source end to end: real files in a temporary directory, polled.

use super::config::tests::{GOOD, NO_FILES};
use super::*;
use ferrule_dev::ca::{DevCa, LeafSpec};

/// A directory with a CA, a leaf for `api`, a bundle, intentions and a config.
struct Files {
    dir: tempfile::TempDir,
    ca: ferrule_dev::ca::DevCa,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let ca = ferrule_dev::ca::DevCa::generate(None).unwrap();
        let files = Files { dir, ca };
        files.write("ca.pem", files.ca.cert_pem());
        files.new_leaf(true, true);
        files.write("intentions.json", &allow("web"));
        files.write("ferrule.toml", GOOD);
        files
    }

    fn write(&self, name: &str, text: &str) {
        // Atomic rename, as most tools that replace certificates do.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.path().join(name)).unwrap();
    }

    fn new_leaf(&self, cert: bool, key: bool) -> String {
        let leaf = self
            .ca
            .issue(&ferrule_dev::ca::LeafSpec::service("api"))
            .unwrap();
        if cert {
            self.write("api.pem", &leaf.cert_pem);
        }
        if key {
            self.write("api-key.pem", &leaf.key_pem);
        }
        leaf.serial_hex
    }

    fn source(&self) -> watch::Receiver<Arc<Snapshot>> {
        let config = StaticConfig::load(&self.dir.path().join("ferrule.toml")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        FileSource::new(config, provider).spawn()
    }
}

fn allow(source: &str) -> String {
    format!(
        r#"{{"Kind":"service-intentions","Name":"api","Sources":[{{"Name":"{source}","Action":"allow"}}]}}"#
    )
}

/// Both present, and the same allocation.
fn both_and_same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
}

async fn next(rx: &mut watch::Receiver<Arc<Snapshot>>) -> Arc<Snapshot> {
    tokio::time::timeout(Duration::from_secs(3), rx.changed())
        .await
        .expect("a new snapshot within 3 s")
        .unwrap();
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn changes_are_published_and_unchanged_pieces_keep_their_arc() {
    let files = Files::new();
    let mut rx = files.source();
    let first = rx.borrow_and_update().clone();
    assert!(first.is_complete());
    assert_eq!(first.upstreams[0].all_endpoints()[0].identity.service, "db");

    files.write("intentions.json", &allow("billing"));
    let second = next(&mut rx).await;
    let (old, new) = (
        first.intentions.as_ref().unwrap(),
        second.intentions.as_ref().unwrap(),
    );
    assert!(!Arc::ptr_eq(old, new));
    assert!(
        new.rules()[0].to_string().contains("billing"),
        "{}",
        new.rules()[0]
    );
    assert!(both_and_same(&first.bundle, &second.bundle));
    assert!(both_and_same(&first.leaf, &second.leaf));

    // A new certificate without its key is not used; the pair is, once complete.
    let old_serial = second.leaf.as_ref().unwrap().serial.clone();
    files.new_leaf(true, false);
    tokio::time::sleep(POLL_INTERVAL * 3).await;
    assert_eq!(rx.borrow().leaf.as_ref().unwrap().serial, old_serial);
    let serial = files.new_leaf(true, true);
    let third = next(&mut rx).await;
    assert_eq!(third.leaf.as_ref().unwrap().serial, serial);
    assert!(both_and_same(&second.intentions, &third.intentions));

    // Garbage keeps the last good state.
    files.write("ca.pem", "garbage");
    files.write("intentions.json", "{ not json");
    tokio::time::sleep(POLL_INTERVAL * 3).await;
    let now = rx.borrow().clone();
    assert!(
        Arc::ptr_eq(&now, &third),
        "a bad file must not change the snapshot"
    );
}

#[tokio::test]
async fn a_leaf_for_another_service_is_refused_after_the_first() {
    let files = Files::new();
    let mut rx = files.source();
    let first = rx.borrow_and_update().clone();
    let web = files
        .ca
        .issue(&ferrule_dev::ca::LeafSpec::service("web"))
        .unwrap();
    files.write("api.pem", &web.cert_pem);
    files.write("api-key.pem", &web.key_pem);
    tokio::time::sleep(POLL_INTERVAL * 3).await;
    assert!(Arc::ptr_eq(&rx.borrow(), &first));
    assert_eq!(rx.borrow().leaf.as_ref().unwrap().id.service, "api");
}

fn identity(ca: &DevCa, service: &str, federated: &[&DevCa]) -> Arc<Identity> {
    let leaf = ca.issue(&LeafSpec::service(service)).unwrap();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let leaf =
        model::parse_leaf(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), &provider).unwrap();
    let mut bundle = model::parse_bundle(ca.cert_pem().as_bytes(), &ca.trust_domain()).unwrap();
    for fed in federated {
        let b = model::parse_bundle(fed.cert_pem().as_bytes(), &fed.trust_domain()).unwrap();
        bundle.federated.insert(fed.trust_domain(), Arc::new(b));
    }
    Arc::new(Identity {
        leaf: Arc::new(leaf),
        bundle: Arc::new(bundle),
        withdrawn: None,
    })
}

#[tokio::test]
async fn a_withdrawn_identity_is_not_served_and_says_why() {
    let ca = DevCa::generate(None).unwrap();
    let (tx, feed) = watch::channel(None);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = StaticConfig::parse_with(Path::new("/etc/ferrule/ferrule.toml"), NO_FILES, true);
    let source = FileSource::new(config.unwrap(), provider);
    let mut rx = source.with_identity(feed).spawn();
    let id = identity(&ca, "api", &[]);
    tx.send_replace(Some(id.clone()));
    assert!(next(&mut rx).await.is_complete());

    let why =
        "the Workload API withdrew this proxy's identity (PERMISSION_DENIED: no identity issued)";
    tx.send_replace(Some(Arc::new(Identity {
        leaf: id.leaf.clone(),
        bundle: id.bundle.clone(),
        withdrawn: Some(why.to_owned()),
    })));
    let snap = next(&mut rx).await;
    assert!(snap.leaf.is_none(), "a withdrawn leaf is still served");
    assert!(Arc::ptr_eq(snap.bundle.as_ref().unwrap(), &id.bundle));
    assert_eq!(snap.blocked, [why]);

    // The server issues it again: served again.
    tx.send_replace(Some(id.clone()));
    let snap = next(&mut rx).await;
    assert!(snap.is_complete());
    assert!(snap.blocked.is_empty());
}

#[tokio::test]
async fn the_workload_identity_fills_the_snapshot_and_follows_rotations() {
    let ca = DevCa::generate(None).unwrap();
    let other = DevCa::generate(None).unwrap();
    let (tx, feed) = watch::channel(None);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = StaticConfig::parse_with(Path::new("/etc/ferrule/ferrule.toml"), NO_FILES, true);
    let source = FileSource::new(config.unwrap(), provider);
    let mut rx = source.with_identity(feed).spawn();

    // Nothing yet: fail closed, no upstream identities to pin.
    let first = rx.borrow_and_update().clone();
    assert!(!first.is_complete());
    assert!(first.upstreams.is_empty());

    let id = identity(&ca, "api", &[&other]);
    tx.send_replace(Some(id.clone()));
    let snap = next(&mut rx).await;
    assert!(snap.is_complete());
    assert!(Arc::ptr_eq(snap.leaf.as_ref().unwrap(), &id.leaf));
    assert!(Arc::ptr_eq(snap.bundle.as_ref().unwrap(), &id.bundle));
    let db = &snap.upstreams[0].all_endpoints()[0].identity;
    assert_eq!(
        (db.service.as_str(), db.trust_domain.as_str()),
        ("db", ca.trust_domain().as_str())
    );

    // A rotation: new leaf, same bundle and intentions.
    let rotated = Arc::new(Identity {
        leaf: identity(&ca, "api", &[]).leaf.clone(),
        bundle: id.bundle.clone(),
        withdrawn: None,
    });
    tx.send_replace(Some(rotated.clone()));
    let snap2 = next(&mut rx).await;
    assert!(Arc::ptr_eq(snap2.leaf.as_ref().unwrap(), &rotated.leaf));
    assert!(Arc::ptr_eq(snap2.bundle.as_ref().unwrap(), &id.bundle));
    assert!(both_and_same(&snap.intentions, &snap2.intentions));

    // An SVID for another service than the pinned one is refused.
    tx.send_replace(Some(identity(&ca, "web", &[])));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(Arc::ptr_eq(&rx.borrow(), &snap2));

    // Expired without a successor: no leaf, fail closed.
    tx.send_replace(None);
    let snap3 = next(&mut rx).await;
    assert!(snap3.leaf.is_none() && snap3.bundle.is_none());
    assert!(!snap3.is_complete());
}
