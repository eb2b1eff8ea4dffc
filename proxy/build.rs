//! Lays out the optimized binary's code (profiles `release` and `dist`: cargo tells
//! build scripts `PROFILE=release` for both) so that what a running sidecar executes sits
//! together: `link-order.txt` lists those functions (see BENCHMARKS.md for how it is
//! made). Code is mapped in whole pages, and the kernel maps neighbouring pages along
//! with each one touched, so scattered hot code keeps several MiB of the binary
//! resident in every sidecar; grouped, it takes a fraction of that. Only the layout
//! changes: a missing or stale entry is skipped. Needs lld, the toolchain's default
//! linker on x86_64 Linux.

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    if release && target == "x86_64-unknown-linux-gnu" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={dir}/link-order.txt");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
