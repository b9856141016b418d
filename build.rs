//! Build script: link settings for the ROS 2 node binaries only (the `vw2_policy_node`
//! binary and the node examples), when built with `--features ros2` against a real ROS 2.
//!
//! - `VW2_NODE_RPATH` (colon-separated directories; CMakeLists.txt sets it to the ROS
//!   libraries' directories, as r2r's `r2r_cargo.cmake` does through RUSTFLAGS): added
//!   as run paths. Passing them here instead of in RUSTFLAGS keeps a shared target dir's
//!   other crates built.
//! - `VW2_LINK_LIBPYTHON` (a libpython shared library; scripts/ros-env.sh sets it): ROS 2
//!   from PyPI wheels has a `librcl` that pulls in libraries needing libpython without
//!   linking it; the node gets it as a NEEDED entry and run path, so it starts without
//!   `LD_PRELOAD`. A system ROS 2 install needs neither.

use std::path::Path;

fn main() {
    println!("cargo::rerun-if-env-changed=VW2_LINK_LIBPYTHON");
    println!("cargo::rerun-if-env-changed=VW2_NODE_RPATH");
    let ros = std::env::var_os("CARGO_FEATURE_ROS2").is_some();
    let check_only = std::env::var_os("CARGO_FEATURE_ROS2_CHECK").is_some();
    if !ros || check_only {
        return;
    }
    let mut args = Vec::new();
    if let Ok(dirs) = std::env::var("VW2_NODE_RPATH") {
        for d in dirs.split(':').filter(|d| !d.is_empty()) {
            args.push(format!("-Wl,-rpath,{d}"));
        }
    }
    if let Some(lib) = std::env::var_os("VW2_LINK_LIBPYTHON").filter(|l| !l.is_empty()) {
        let lib = Path::new(&lib);
        let (Some(dir), Some(name)) = (lib.parent(), lib.file_name().and_then(|n| n.to_str()))
        else {
            panic!(
                "VW2_LINK_LIBPYTHON={}: expected the path of a libpython shared library",
                lib.display()
            );
        };
        if !lib.is_file() {
            panic!(
                "VW2_LINK_LIBPYTHON={}: no such file (expected a libpython shared library, \
                 as scripts/ros-env.sh finds it with Python's sysconfig LIBDIR/LDLIBRARY)",
                lib.display()
            );
        }
        args.extend([
            "-Wl,--push-state,--no-as-needed".to_string(),
            format!("-L{}", dir.display()),
            format!("-l:{name}"),
            "-Wl,--pop-state".to_string(),
            format!("-Wl,-rpath,{}", dir.display()),
        ]);
    }
    for a in &args {
        println!("cargo::rustc-link-arg-bin=vw2_policy_node={a}");
        println!("cargo::rustc-link-arg-examples={a}");
    }
}
