//! `ferrule demo`, the README's first command: it runs its whole script (traffic, a deny
//! that closes a live connection and refuses new ones, allow again, a CA root rotation
//! under traffic) and exits 0 after `--duration`.

use std::process::Stdio;
use std::time::Duration;

use ferrule_tests::binary::ferrule_bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_its_script_and_exits_cleanly() {
    let mut command = tokio::process::Command::new(ferrule_bin());
    command
        .args(["demo", "--duration", "12"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the demo ends after --duration")
        .expect("run ferrule demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let transcript = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        output.status.success(),
        "exit {}\n{transcript}",
        output.status
    );
    for expected in [
        "[1] web calls api over mutual TLS: 10 of 10 requests answered",
        "the open connection was closed by api's sidecar",
        "new connections: 10 of 10 refused",
        "calls flow again after",
        "[4] CA root rotated",
        "ferrule demo: stopped.",
    ] {
        assert!(
            stdout.contains(expected),
            "the demo did not print {expected:?}\n{transcript}"
        );
    }
    let failed_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(" failed") && !l.contains(" 0 failed"))
        .collect();
    assert!(
        failed_lines.is_empty(),
        "requests failed: {failed_lines:?}\n{transcript}"
    );
    assert!(
        stdout.contains("requests meanwhile:") && stdout.contains(" 0 failed"),
        "{transcript}"
    );
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "the demo logged problems\n{transcript}"
    );
}
