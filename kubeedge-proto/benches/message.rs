//! Decode, encode and relay (decode + re-encode) of real captured KubeEdge messages, beside the
//! same work done through `serde_json::Value`, the baseline a naive implementation would use.
//!
//! Run: `cargo bench -p kubeedge-proto --features codec --bench message`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kubeedge_proto::json_lines::JsonLinesCodec;
use kubeedge_proto::{DEFAULT_MAX_MESSAGE_LEN, Message};

#[path = "../tests/support/capture.rs"]
mod capture;

fn inputs() -> Vec<(&'static str, Bytes)> {
    vec![
        // edgecontroller/resource insert default/pod/pod-demo: a full Pod with managedFields.
        ("pod_insert", capture::payload(13)),
        // websocket/resource keepalive node "ping".
        ("keepalive", capture::payload(7)),
    ]
}

fn bench(c: &mut Criterion) {
    for (name, wire) in inputs() {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(wire.len() as u64));

        group.bench_function(BenchmarkId::new("decode", "kubeedge-proto"), |b| {
            b.iter(|| {
                Message::decode_json(black_box(wire.clone()), DEFAULT_MAX_MESSAGE_LEN).unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("decode", "serde_json::Value"), |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&wire)).unwrap())
        });

        let msg = Message::decode_json(wire.clone(), DEFAULT_MAX_MESSAGE_LEN).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        let mut out = Vec::with_capacity(wire.len() * 2);
        group.bench_function(BenchmarkId::new("encode", "kubeedge-proto"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&msg).write_json(&mut out);
                black_box(out.len())
            })
        });
        group.bench_function(BenchmarkId::new("encode", "serde_json::Value"), |b| {
            b.iter(|| {
                out.clear();
                serde_json::to_writer(&mut out, black_box(&value)).unwrap();
                black_box(out.len())
            })
        });

        // Relay: what a hub does with every frame: decode, look at the route, re-encode.
        group.bench_function(BenchmarkId::new("relay", "kubeedge-proto"), |b| {
            b.iter(|| {
                let msg =
                    Message::decode_json(black_box(wire.clone()), DEFAULT_MAX_MESSAGE_LEN).unwrap();
                black_box(&msg.route.operation);
                out.clear();
                msg.write_json(&mut out);
                black_box(out.len())
            })
        });
        group.bench_function(BenchmarkId::new("relay", "serde_json::Value"), |b| {
            b.iter(|| {
                let value: serde_json::Value = serde_json::from_slice(black_box(&wire)).unwrap();
                black_box(&value["route"]["operation"]);
                out.clear();
                serde_json::to_writer(&mut out, &value).unwrap();
                black_box(out.len())
            })
        });

        // Stream framing: decode one line from a buffer, as the JSON-lines codec does.
        let mut line = BytesMut::from(&wire[..]);
        line.extend_from_slice(b"\n");
        let line = line.freeze();
        group.bench_function(
            BenchmarkId::new("json_lines_decode", "kubeedge-proto"),
            |b| {
                let mut codec = JsonLinesCodec::default();
                b.iter(|| {
                    let mut buf = BytesMut::from(black_box(&line[..]));
                    codec.decode_from(&mut buf).unwrap().unwrap()
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
