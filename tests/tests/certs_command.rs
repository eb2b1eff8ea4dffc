//! `ferrule certs DIR`: the files static mode needs, which a sidecar then loads and
//! serves with; exit 2 naming the path and the reason when DIR cannot be written.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ferrule_tests::admin::Admin;
use ferrule_tests::binary::ferrule_bin;
use ferrule_tests::wait::free_port;

async fn certs(args: &[&str], dir: &Path) -> Output {
    let mut command = tokio::process::Command::new(ferrule_bin());
    command.arg("certs").arg(dir).args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("ferrule certs finishes")
        .expect("run ferrule")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_what_a_static_sidecar_loads() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("certs");
    let output = certs(&["--services", "web,db", "--ttl", "24h"], &dir).await;
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    for file in [
        "ca.pem",
        "ca-key.pem",
        "web.pem",
        "web-key.pem",
        "db.pem",
        "db-key.pem",
    ] {
        assert!(dir.join(file).is_file(), "{file} not written");
        assert!(
            stdout.contains(&format!("wrote {}", dir.join(file).display())),
            "{stdout}"
        );
    }
    assert!(stdout.contains("db: spiffe://"), "{stdout}");

    // A sidecar starts on them (a bad file would exit 2) and becomes ready.
    let admin = free_port();
    let config = tmp.path().join("db.toml");
    let body = format!(
        "admin_addr = \"{admin}\"\n[identity]\ncert = \"certs/db.pem\"\nkey = \"certs/db-key.pem\"\nbundle = \"certs/ca.pem\"\n"
    );
    std::fs::write(&config, body).expect("write the config");
    let log = tmp.path().join("db.log");
    let mut sidecar = std::process::Command::new(ferrule_bin())
        .arg("proxy")
        .arg("--config")
        .arg(&config)
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .spawn()
        .expect("start ferrule proxy");
    let admin = Admin {
        addr: admin,
        name: "db".to_owned(),
    };
    let ready = admin
        .wait_ready(&mut sidecar, Duration::from_secs(20), || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
        .await;
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    ready.unwrap_or_else(|e| panic!("{e:#}"));

    // Run again: the CA stays, the leaves are renewed.
    let ca = std::fs::read(dir.join("ca.pem")).expect("ca.pem");
    let again = certs(&[], &dir).await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(text(&again.stdout).starts_with("reusing the CA in "));
    assert_eq!(std::fs::read(dir.join("ca.pem")).expect("ca.pem"), ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_written_exits_2_naming_it() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("write a file");
    let dir = file.join("certs");
    let output = certs(&[], &dir).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write {}", dir.display())),
        "{stderr}"
    );
    assert!(stderr.contains("Not a directory"), "{stderr}");
}
