fn main() {
    println!("cargo:rerun-if-changed=proto");
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
