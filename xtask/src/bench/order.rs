//! `cargo xtask link-order`: writes `proxy/link-order.txt`, the functions a running
//! sidecar executes, which the link of the `release` and `dist` profiles places
//! together (see `proxy/build.rs`).
//!
//! It runs the bench's ferrule pair (L4, then L7) under callgrind, puts keep-alive and
//! connection-per-request load and a few `/metrics` scrapes through it, stops it, and
//! keeps every function callgrind saw run that the `dist` binary defines. Names of
//! generic code carry a hash that changes with the code, so the list goes stale slowly
//! as the code changes: run this again after large changes (a stale name is skipped).

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::peers::{self, Env, Mode, Peer};
use super::{BACKEND, PROXY_CPU, backend, build, load, target_dir, workspace_root};

pub(crate) fn run() -> Result<()> {
    let root = workspace_root();
    if !super::have("valgrind") {
        bail!("valgrind is needed (apt-get install valgrind)");
    }
    build(&root, "dist")?;
    let ferrule = target_dir(&root).join("dist").join("ferrule");
    let dir = target_dir(&root).join("link-order");
    let _ = fs::remove_dir_all(&dir);
    let trust_domain = super::write_certs(&dir.join("certs"))?;
    let env = Env {
        dir: dir.clone(),
        ferrule: ferrule.clone(),
        envoy: None,
        trust_domain,
        backend: BACKEND.parse()?,
        proxy_cpu: PROXY_CPU,
        callgrind: true,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(exercise(&env))?;

    // What every sidecar runs first (start-up, TLS, the L4 path, metrics), then what
    // only L4 or only L7 runs: an L4 sidecar then touches none of the L7 pages.
    let mut seen = Vec::new();
    for mode in ["l4", "l7"] {
        let mut executed = BTreeSet::new();
        for side in ["a", "b"] {
            let path = dir
                .join(format!("ferrule-{mode}"))
                .join(format!("{side}.callgrind"));
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            executed.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("fn="))
                    .map(str::to_owned),
            );
        }
        seen.push(executed);
    }
    let defined = defined_functions(&ferrule)?;
    let (l4, l7) = (&seen[0], &seen[1]);
    let order: Vec<&String> = l4
        .intersection(l7)
        .chain(l4.difference(l7))
        .chain(l7.difference(l4))
        .filter(|f| defined.contains(*f))
        .collect();
    if order.is_empty() {
        bail!("callgrind saw none of the binary's functions run");
    }
    let out = root.join("proxy").join("link-order.txt");
    let mut text = String::new();
    for f in &order {
        text.push_str(f);
        text.push('\n');
    }
    fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{} functions written to {}; rebuild to use them",
        order.len(),
        out.display()
    );
    Ok(())
}

async fn exercise(env: &Env) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(env.backend)
        .await
        .with_context(|| format!("binding the backend on {}", env.backend))?;
    let serving = tokio::spawn(backend::serve(listener));
    for mode in [Mode::L4, Mode::L7] {
        let pair = peers::start(env, Peer::Ferrule { resumption: true }, mode).await?;
        let entry = pair.entry;
        let busy = Duration::from_secs(3);
        load::keepalive(entry, 4, busy).await;
        load::per_connection(entry, 8, busy).await;
        for admin in ["127.0.0.1:19201", "127.0.0.1:19202"] {
            let mut conn = load::Conn::open(admin.parse()?).await?;
            for _ in 0..3 {
                conn.call(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n")
                    .await?;
            }
        }
        pair.stop();
    }
    serving.abort();
    Ok(())
}

/// The function symbols the binary defines (`nm`), the names the linker can place.
fn defined_functions(binary: &std::path::Path) -> Result<BTreeSet<String>> {
    let out = Command::new("nm")
        .arg("--defined-only")
        .arg(binary)
        .output()
        .context("running nm")?;
    if !out.status.success() {
        bail!("nm {} failed", binary.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (_addr, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
            matches!(kind, "t" | "T" | "w" | "W").then(|| name.to_owned())
        })
        .collect())
}
