//! Responses as gRPC messages, assembled from shared pieces instead of encoded per stream.
//!
//! ```text
//! Response --> [gRPC prefix + leading fields] [resource entry]... [trailing fields]
//!                 (a few bytes, per stream)    (encoded once, shared)  (per stream)
//! ```
//!
//! Each resource's entry is encoded once ([`Resource::delta_entry`],
//! [`Resource::sotw_entry`]) and every stream that sends it writes the same `Bytes`, so a
//! push to thousands of streams copies nothing and no stream keeps a buffer the size of
//! its largest message. Fields are laid out in field-number order, as prost encodes them:
//! the concatenation is byte for byte the message prost would write.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

use super::Response;

/// A gRPC message as the chunks to write, in order (the first starts with the 5-byte
/// length prefix).
pub type Message = Vec<Bytes>;

/// Length of the gRPC message prefix: a compression flag and a big-endian length.
pub const GRPC_PREFIX: usize = 5;

/// Field numbers (envoy.service.discovery.v3).
mod field {
    pub const DELTA_SYSTEM_VERSION: u32 = 1;
    pub const DELTA_TYPE_URL: u32 = 4;
    pub const DELTA_NONCE: u32 = 5;
    pub const DELTA_REMOVED: u32 = 6;
    pub const SOTW_VERSION: u32 = 1;
    pub const SOTW_TYPE_URL: u32 = 4;
    pub const SOTW_NONCE: u32 = 5;
}

fn put_string(buf: &mut BytesMut, tag: u32, value: &str) {
    if value.is_empty() {
        return; // proto3: an empty string is not written
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value.as_bytes());
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

/// The prefix for a message of `len` bytes.
fn prefix(buf: &mut BytesMut, len: usize) {
    buf.put_u8(0); // not compressed
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// A `DeltaDiscoveryResponse`: version, resources, type URL, nonce, removed names.
pub fn delta(response: &Response) -> Message {
    let version = response.version_string();
    let nonce = response.nonce.to_string();
    let type_url = response.type_.type_url();
    let entries: Vec<Bytes> = response.resources.iter().map(|r| r.delta_entry()).collect();
    let head_len = string_len(field::DELTA_SYSTEM_VERSION, &version);
    let tail_len = string_len(field::DELTA_TYPE_URL, type_url)
        + string_len(field::DELTA_NONCE, &nonce)
        + response
            .removed
            .iter()
            .map(|n| {
                // Repeated strings are written even when empty.
                prost::encoding::key_len(field::DELTA_REMOVED)
                    + encoded_len_varint(n.len() as u64)
                    + n.len()
            })
            .sum::<usize>();
    let len = head_len + entries.iter().map(Bytes::len).sum::<usize>() + tail_len;
    let mut head = BytesMut::with_capacity(GRPC_PREFIX + head_len);
    prefix(&mut head, len);
    put_string(&mut head, field::DELTA_SYSTEM_VERSION, &version);
    let mut tail = BytesMut::with_capacity(tail_len);
    put_string(&mut tail, field::DELTA_TYPE_URL, type_url);
    put_string(&mut tail, field::DELTA_NONCE, &nonce);
    for name in &response.removed {
        encode_key(field::DELTA_REMOVED, WireType::LengthDelimited, &mut tail);
        encode_varint(name.len() as u64, &mut tail);
        tail.put_slice(name.as_bytes());
    }
    assemble(head, entries, tail)
}

/// A `DiscoveryResponse`: version, resources, type URL, nonce.
pub fn sotw(response: &Response) -> Message {
    let version = response.version_string();
    let nonce = response.nonce.to_string();
    let type_url = response.type_.type_url();
    let entries: Vec<Bytes> = response.resources.iter().map(|r| r.sotw_entry()).collect();
    let head_len = string_len(field::SOTW_VERSION, &version);
    let tail_len =
        string_len(field::SOTW_TYPE_URL, type_url) + string_len(field::SOTW_NONCE, &nonce);
    let len = head_len + entries.iter().map(Bytes::len).sum::<usize>() + tail_len;
    let mut head = BytesMut::with_capacity(GRPC_PREFIX + head_len);
    prefix(&mut head, len);
    put_string(&mut head, field::SOTW_VERSION, &version);
    let mut tail = BytesMut::with_capacity(tail_len);
    put_string(&mut tail, field::SOTW_TYPE_URL, type_url);
    put_string(&mut tail, field::SOTW_NONCE, &nonce);
    assemble(head, entries, tail)
}

fn assemble(head: BytesMut, entries: Vec<Bytes>, tail: BytesMut) -> Message {
    let mut chunks = Vec::with_capacity(entries.len() + 2);
    chunks.push(head.freeze());
    chunks.extend(entries);
    if !tail.is_empty() {
        chunks.push(tail.freeze());
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ads::tests::mk_resource;
    use crate::ads::{Connection, DeltaConnection, SotwConnection};
    use crate::resources::{Resource, ResourceType};
    use prost::Message as _;
    use std::sync::Arc;

    fn joined(message: &Message) -> Vec<u8> {
        message.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn framed(encoded: Vec<u8>) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend((encoded.len() as u32).to_be_bytes());
        out.extend(encoded);
        out
    }

    fn response(resources: Vec<Resource>, removed: &[&str]) -> Response {
        Response {
            type_: ResourceType::Cluster,
            version: 0x0123_4567_89ab_cdef,
            nonce: 42,
            resources,
            removed: removed.iter().map(|n| Arc::from(*n)).collect(),
        }
    }

    /// The shared pieces make, byte for byte, the message prost encodes per stream.
    #[test]
    fn assembled_messages_are_byte_identical_to_prost_encodings() {
        let resources = vec![
            mk_resource(
                "outbound|9080||reviews.shop.svc.cluster.local",
                "cluster body",
            ),
            mk_resource("b", ""),
            Resource::from_any(
                "big",
                envoy_types::pb::google::protobuf::Any {
                    type_url: "type.googleapis.com/x".into(),
                    value: vec![7u8; 70_000], // lengths that need multi-byte varints
                },
            ),
        ];
        for (resources, removed) in [
            (resources.clone(), vec!["gone", ""]),
            (Vec::new(), vec!["gone"]),
            (resources, vec![]),
            (Vec::new(), vec![]),
        ] {
            let r = response(resources, &removed);
            assert_eq!(
                joined(&delta(&r)),
                framed(DeltaConnection::encode(r.clone()).encode_to_vec()),
                "delta with {removed:?}"
            );
            assert_eq!(
                joined(&sotw(&r)),
                framed(SotwConnection::encode(r.clone()).encode_to_vec()),
                "sotw"
            );
        }
    }

    #[test]
    fn every_stream_sending_a_resource_shares_its_bytes() {
        let r = mk_resource("a", "body");
        let (one, two) = (
            delta(&response(vec![r.clone()], &[])),
            delta(&response(vec![r], &[])),
        );
        assert_eq!(
            one[1].as_ptr(),
            two[1].as_ptr(),
            "the same allocation, not a copy"
        );
    }
}
