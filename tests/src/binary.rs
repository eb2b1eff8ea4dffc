//! Finding the `ferrule` binary the tests run.
//!
//! `CARGO_BIN_EXE_ferrule` exists only for tests inside the `ferrule` package, so this
//! package builds the binary itself, once per test process, with the same cargo, target
//! directory and profile as the test executable. It builds it the way `cargo test
//! --workspace` resolves features (every member selected, dev-dependencies on: `cargo
//! build --workspace --tests --bin ferrule`), so after the README's test command the
//! build is a link at most. Asking for the `ferrule` package alone would resolve
//! features without the dev-dependencies (tokio's `test-util`, tonic's `router`, ...)
//! and rebuild most of the dependency tree a second time. Cargo releases its build lock
//! before it runs test executables (both `cargo test` and `cargo nextest run`), so the
//! nested build does not deadlock; concurrent nested builds (nextest runs each test in
//! its own process) queue on that lock and all but the first find nothing to do.
//!
//! `FERRULE_BIN=/path/to/ferrule` skips the build and runs that binary instead.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of a `ferrule` binary built from this workspace. Panics with cargo's output
/// if it cannot be built.
pub fn ferrule_bin() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate_or_build) {
        Ok(path) => path,
        Err(e) => panic!("cannot get the ferrule binary: {e}"),
    }
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FERRULE_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("FERRULE_BIN={} is not a file", path.display()))
        };
    }
    let layout = TargetLayout::of_current_exe()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the tests package has no parent directory")?;

    let mut build = Command::new(&cargo);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_this_test) {
            build.env_remove(&name);
        }
    }
    build
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--tests",
            "--bin",
            "ferrule",
        ])
        .arg("--target-dir")
        .arg(&layout.target_dir);
    match layout.profile_dir_name.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        custom => {
            build.args(["--profile", custom]);
        }
    }
    if let Some(triple) = &layout.target_triple {
        build.args(["--target", triple]);
    }
    let output = build
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "`{build:?}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let bin = layout
        .profile_dir
        .join(format!("ferrule{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "cargo built ferrule, but {} is not there",
            bin.display()
        ))
    }
}

/// The variables cargo (or nextest) sets for a test process, describing the test
/// crate. They must not reach the nested cargo: build scripts that declare
/// `rerun-if-env-changed` on them (ring's does, for `CARGO_MANIFEST_DIR`) would
/// otherwise see a different environment from the outer cargo's, and the two builds
/// would rebuild those crates for each other on every run.
fn set_by_cargo_for_this_test(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
        "OUT_DIR",
    ];
    EXACT.contains(&name) || name.starts_with("CARGO_PKG_") || name.starts_with("CARGO_BIN_EXE_")
}

/// Where the test executable sits: `<target-dir>[/<triple>]/<profile>/deps/<exe>`.
struct TargetLayout {
    target_dir: PathBuf,
    target_triple: Option<String>,
    profile_dir: PathBuf,
    profile_dir_name: String,
}

impl TargetLayout {
    fn of_current_exe() -> Result<TargetLayout, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let unexpected = || {
            format!(
                "test executable {} is not in <target>/<profile>/deps/; set FERRULE_BIN",
                exe.display()
            )
        };
        let profile_dir = exe
            .parent()
            .filter(|deps| deps.ends_with("deps"))
            .and_then(Path::parent)
            .ok_or_else(unexpected)?;
        let profile_dir_name = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(unexpected)?
            .to_owned();
        let above = profile_dir.parent().ok_or_else(unexpected)?;
        // Cargo tags the root of a target directory (only when it creates it: `.ci/run`
        // may create it first, for its tools' venv) and keeps its rustc cache there; a
        // cross build adds a <triple> level.
        let is_root = |dir: &Path| {
            dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file()
        };
        let (target_dir, target_triple) = if is_root(above) {
            (above.to_owned(), None)
        } else {
            let root = above.parent().ok_or_else(unexpected)?;
            let triple = above.file_name().and_then(|n| n.to_str());
            (root.to_owned(), triple.map(str::to_owned))
        };
        Ok(TargetLayout {
            target_dir,
            target_triple,
            profile_dir: profile_dir.to_owned(),
            profile_dir_name,
        })
    }
}
