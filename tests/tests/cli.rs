//! The command line's own contract: log levels (`warning` read as `warn`, an unknown
//! level exits 2 naming the levels, `RUST_LOG` honoured when `--log-level` is not given)
//! and address flags in the short forms (`localhost:PORT`, `:PORT`).
//!
//! Each case runs the real binary against a config file that does not exist: getting
//! past the flags shows as the config error (exit 2, "bad config"), so nothing is left
//! running.

use std::process::Output;
use std::time::Duration;

use ferrule_tests::binary::ferrule_bin;

const LEVELS: &str = "one of: trace, debug, info, warn, error, off";

/// Runs `ferrule proxy --config <missing> ARGS` with `RUST_LOG` set as given.
async fn proxy(args: &[&str], rust_log: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("missing.toml");
    let mut command = tokio::process::Command::new(ferrule_bin());
    command
        .arg("proxy")
        .arg("--config")
        .arg(&missing)
        .args(args)
        .env_remove("FERRULE_LOG")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("ferrule exits on a missing config instead of running")
        .expect("run ferrule")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Past the flags: the missing config is what stops it.
fn reached_the_config(output: &Output) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("bad config"), "{text}");
    assert!(!text.contains(LEVELS), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_is_a_level_and_an_unknown_level_exits_2() {
    for level in ["warning", "WARN", "info,ferrule=warning", "debug"] {
        reached_the_config(&proxy(&["--log-level", level], None).await);
    }
    for level in ["verbose", "info,chatty"] {
        let output = proxy(&["--log-level", level], None).await;
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(text.contains("--log-level"), "{text}");
        assert!(text.contains(LEVELS), "{text}");
        assert!(
            !text.contains("bad config"),
            "refused before anything else: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_applies_when_no_level_is_given() {
    let output = proxy(&[], Some("verbose")).await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("RUST_LOG") && text.contains(LEVELS), "{text}");

    // The flag wins over RUST_LOG.
    reached_the_config(&proxy(&["--log-level", "info"], Some("verbose")).await);
    reached_the_config(&proxy(&[], Some("warn")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_flags_take_the_short_forms() {
    for addr in ["localhost:0", ":0", "127.0.0.1:0", "[::1]:0"] {
        reached_the_config(&proxy(&["--admin-addr", addr], None).await);
    }
    let output = proxy(&["--admin-addr", "nowhere:1"], None).await;
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("--admin-addr"), "{text}");
    assert!(
        text.contains("localhost:8080"),
        "the error shows the forms: {text}"
    );
}
