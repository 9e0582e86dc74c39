fn main() {
    println!("cargo:rerun-if-changed=proto");
    // BTreeMap for every map field: encoding walks maps in key order, which is
    // what BuildKit's deterministic marshal does, so op bytes are stable.
    let mut cfg = prost_build::Config::new();
    cfg.btree_map(["."]);
    if let Err(e) = cfg.compile_protos(&["proto/ops.proto"], &["proto"]) {
        panic!("protoc failed on proto/ops.proto: {e}");
    }
}
