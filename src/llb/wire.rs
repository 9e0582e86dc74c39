//! Byte-exact encoding where prost's derived encoder differs from BuildKit's Go client.
//!
//! Two differences matter for digests:
//! * Go's protobuf runtime writes the fields of a `oneof` after all regular fields, so an `Op`
//!   is `inputs, platform, constraints, <op body>`; prost would put the body in tag order.
//! * Go writes both key and value of every map entry, even empty ones; prost skips defaults.
//!
//! Everything else (nested messages without maps) goes through prost unchanged.

use std::collections::BTreeMap;

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::pb;

fn str_field_len(tag: u32, s: &str) -> usize {
    key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
}

fn put_str(tag: u32, s: &str, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(s.len() as u64, buf);
    buf.extend_from_slice(s.as_bytes());
}

fn put_len_prefixed(tag: u32, inner: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(inner.len() as u64, buf);
    buf.extend_from_slice(inner);
}

/// `map<string,string>` with key and value always present, keys in order.
fn put_str_map(tag: u32, map: &BTreeMap<String, String>, buf: &mut Vec<u8>) {
    for (k, v) in map {
        let len = str_field_len(1, k) + str_field_len(2, v);
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        put_str(1, k, buf);
        put_str(2, v, buf);
    }
}

/// `map<string,bool>`, Go style.
fn put_bool_map(tag: u32, map: &BTreeMap<String, bool>, buf: &mut Vec<u8>) {
    for (k, v) in map {
        let len = str_field_len(1, k) + key_len(2) + 1;
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        put_str(1, k, buf);
        encode_key(2, WireType::Varint, buf);
        encode_varint(u64::from(*v), buf);
    }
}

/// `map<string, M>` where the value is given already encoded.
fn put_msg_map_entry(tag: u32, key: &str, value: &[u8], buf: &mut Vec<u8>) {
    let len =
        str_field_len(1, key) + key_len(2) + encoded_len_varint(value.len() as u64) + value.len();
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
    put_str(1, key, buf);
    put_len_prefixed(2, value, buf);
}

fn encode_source_op(s: &pb::SourceOp) -> Vec<u8> {
    let mut b = Vec::new();
    if !s.identifier.is_empty() {
        put_str(1, &s.identifier, &mut b);
    }
    put_str_map(2, &s.attrs, &mut b);
    b
}

fn encode_build_op(op: &pb::BuildOp) -> Vec<u8> {
    let mut b = Vec::new();
    if op.builder != 0 {
        encode_key(1, WireType::Varint, &mut b);
        encode_varint(op.builder as u64, &mut b);
    }
    for (k, v) in &op.inputs {
        put_msg_map_entry(2, k, &v.encode_to_vec(), &mut b);
    }
    if let Some(def) = &op.def {
        put_len_prefixed(3, &encode_definition(def), &mut b);
    }
    put_str_map(4, &op.attrs, &mut b);
    b
}

/// Encodes an op the way BuildKit's Go client does (see module docs).
pub(crate) fn encode_op(op: &pb::Op) -> Vec<u8> {
    let mut b = Vec::with_capacity(128);
    for i in &op.inputs {
        prost::encoding::message::encode(1, i, &mut b);
    }
    if let Some(p) = &op.platform {
        prost::encoding::message::encode(10, p, &mut b);
    }
    if let Some(c) = &op.constraints {
        prost::encoding::message::encode(11, c, &mut b);
    }
    match &op.op {
        None => {}
        Some(pb::op::Op::Source(s)) => put_len_prefixed(3, &encode_source_op(s), &mut b),
        Some(pb::op::Op::Build(s)) => put_len_prefixed(5, &encode_build_op(s), &mut b),
        Some(other) => other.encode(&mut b),
    }
    b
}

/// Encodes op metadata with Go's map behaviour.
pub(crate) fn encode_op_metadata(m: &pb::OpMetadata) -> Vec<u8> {
    let mut b = Vec::new();
    if m.ignore_cache {
        encode_key(1, WireType::Varint, &mut b);
        encode_varint(1, &mut b);
    }
    put_str_map(2, &m.description, &mut b);
    if let Some(e) = &m.export_cache {
        prost::encoding::message::encode(4, e, &mut b);
    }
    put_bool_map(5, &m.caps, &mut b);
    if let Some(p) = &m.progress_group {
        prost::encoding::message::encode(6, p, &mut b);
    }
    if let Some(r) = &m.linux_resources {
        prost::encoding::message::encode(7, r, &mut b);
    }
    b
}

fn encode_source_map(s: &pb::Source) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in &s.locations {
        put_msg_map_entry(1, k, &v.encode_to_vec(), &mut b);
    }
    for info in &s.infos {
        let mut ib = Vec::new();
        if !info.filename.is_empty() {
            put_str(1, &info.filename, &mut ib);
        }
        if !info.data.is_empty() {
            put_len_prefixed(2, &info.data, &mut ib);
        }
        if let Some(d) = &info.definition {
            put_len_prefixed(3, &encode_definition(d), &mut ib);
        }
        if !info.language.is_empty() {
            put_str(4, &info.language, &mut ib);
        }
        put_len_prefixed(2, &ib, &mut b);
    }
    b
}

/// Encodes a Definition deterministically (sorted metadata keys, Go map behaviour).
pub(crate) fn encode_definition(d: &pb::Definition) -> Vec<u8> {
    let mut b = Vec::with_capacity(d.def.iter().map(|x| x.len() + 4).sum::<usize>() + 256);
    for op in &d.def {
        put_len_prefixed(1, op, &mut b);
    }
    for (k, m) in &d.metadata {
        put_msg_map_entry(2, k, &encode_op_metadata(m), &mut b);
    }
    if let Some(s) = &d.source {
        put_len_prefixed(3, &encode_source_map(s), &mut b);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oneof_goes_after_platform_and_constraints() {
        let op = pb::Op {
            inputs: vec![],
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: "x".into(),
                attrs: BTreeMap::new(),
            })),
            platform: Some(pb::Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                ..Default::default()
            }),
            constraints: Some(pb::WorkerConstraints::default()),
        };
        let b = encode_op(&op);
        // platform (field 10) first, then constraints (11), then source (3).
        assert_eq!(b[0], 0x52);
        let pos_constraints = b.iter().position(|&x| x == 0x5a).unwrap_or(usize::MAX);
        let pos_source = b.iter().rposition(|&x| x == 0x1a).unwrap_or(0);
        assert!(pos_constraints < pos_source);
        // it still decodes to the same op
        assert_eq!(pb::Op::decode(b.as_slice()).ok(), Some(op));
    }

    #[test]
    fn empty_map_values_are_written() {
        let mut attrs = BTreeMap::new();
        attrs.insert("k".to_string(), String::new());
        let b = encode_source_op(&pb::SourceOp {
            identifier: String::new(),
            attrs,
        });
        assert_eq!(b, vec![0x12, 0x05, 0x0a, 0x01, b'k', 0x12, 0x00]);
    }
}
