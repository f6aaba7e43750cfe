//! Records the git commit the binaries are built from, for `--version` and build info.
//! `MCP_BRIDGE_GIT_COMMIT` in the environment wins (for builds outside a checkout).

fn main() {
    println!("cargo:rerun-if-env-changed=MCP_BRIDGE_GIT_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("MCP_BRIDGE_GIT_COMMIT").ok().or_else(|| {
        std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    });
    println!(
        "cargo:rustc-env=MCP_BRIDGE_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
