//! Records the git revision the binary was built from, for `/api/health` and
//! `sofiia_build_info`. Release builds outside a git checkout (a container
//! build context, say) pass it in `SOFIIA_BUILD_GIT_SHA`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOFIIA_BUILD_GIT_SHA");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    let sha = std::env::var("SOFIIA_BUILD_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SOFIIA_GIT_SHA={sha}");
}
