fn main() {
    println!("cargo:rerun-if-changed=proto");
    // The envkit binary is linked at a fixed address (not position-independent) on Linux: a
    // PIE of this size has ~79,000 relative relocations, and the dynamic loader's writes to
    // their ~260 pages cost a page fault each on every start, ~1 ms of a 2.5 ms `--version`
    // here and of every warm build. The price is ASLR for the binary's own code and data
    // (the stack, heap, libraries and mappings stay randomised); SECURITY.md says so.
    // `ENVKIT_PIE=1 cargo build` links a PIE as before.
    println!("cargo:rerun-if-env-changed=ENVKIT_PIE");
    // A static build (`scripts/release.sh`: `+crt-static` with the static relocation model) is
    // linked at a fixed address already; `-no-pie` on top of a static-pie link breaks it.
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let crt_static = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|f| f.split(',').any(|f| f == "crt-static"));
    if linux
        && !crt_static
        && std::env::var_os("ENVKIT_PIE").is_none_or(|v| v.is_empty() || v == "0")
    {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    // A release binary on Linux has the functions a warm rebuild runs placed together before
    // the rest of its code (link/warm-text.ld, from scripts/warm-text.sh; GNU ld and lld take
    // it with the default layout kept): spread over 18 MB of code they took 126 page faults
    // of a warm parallel4, gathered 41 (BENCHMARKS.md). `ENVKIT_WARM_TEXT=0` links without
    // it (for a linker that takes no linker script).
    println!("cargo:rerun-if-changed=link/warm-text.ld");
    println!("cargo:rerun-if-env-changed=ENVKIT_WARM_TEXT");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if linux && release && std::env::var_os("ENVKIT_WARM_TEXT").is_none_or(|v| v != "0") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        let script = std::path::Path::new(&dir).join("link/warm-text.ld");
        // -Xlinker pairs: a path with a comma would be split by -Wl.
        for arg in ["-Xlinker", "-T", "-Xlinker", &script.to_string_lossy()] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
    }
    // BTreeMap for every map field: encoding walks maps in key order, which is
    // what BuildKit's deterministic marshal does, so op bytes are stable.
    let mut cfg = prost_build::Config::new();
    cfg.btree_map(["."]);
    if let Err(e) = cfg.compile_protos(&["proto/ops.proto"], &["proto"]) {
        panic!("protoc failed on proto/ops.proto: {e}");
    }
    // BuildKit's control API (a gRPC client for remote backends); LLB types come from above.
    if let Err(e) = tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .extern_path(".pb", "crate::pb")
        .compile_protos(&["proto/control.proto", "proto/gateway.proto"], &["proto"])
    {
        panic!("protoc failed on proto/control.proto or gateway.proto: {e}");
    }
    // What a client serves on its BuildKit session (file sync of local sources, health).
    if let Err(e) = tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .compile_protos(&["proto/filesync.proto", "proto/health.proto"], &["proto"])
    {
        panic!("protoc failed on proto/filesync.proto or health.proto: {e}");
    }
}
