//! Criterion benches of the codecs: decoding typical client commands and encoding typical
//! server replies, in JSON and in Protobuf. Inputs are built from JSON text through the codecs
//! themselves, so both encodings carry the same messages.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tether_proto::{Command, Encoding, Reply};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiIsImV4cCI6MTkwMDAwMDAwMH0.\
                     dGhpcy1pcy1hLWJlbmNoLXNpZ25hdHVyZS1vbmx5";

/// (name, JSON frame) of client commands.
fn commands() -> Vec<(&'static str, String)> {
    vec![
        (
            "connect",
            format!(r#"{{"id":1,"connect":{{"token":"{TOKEN}","name":"js","version":"5.0.0"}}}}"#),
        ),
        (
            "subscribe_recover",
            r#"{"id":2,"subscribe":{"channel":"chat:room-42","recover":true,"offset":1234,"epoch":"AbCdEfGh"}}"#
                .to_owned(),
        ),
        (
            "publish",
            r#"{"id":3,"publish":{"channel":"chat:room-42","data":{"text":"hello, world","user":"42","ts":1700000000000}}}"#
                .to_owned(),
        ),
        ("pong", "{}".to_owned()),
    ]
}

/// (name, JSON frame) of server replies.
fn replies() -> Vec<(&'static str, String)> {
    vec![
        (
            "publication_push",
            r#"{"push":{"channel":"chat:room-42","pub":{"data":{"text":"hello, world","user":"42","ts":1700000000000},"offset":1235}}}"#
                .to_owned(),
        ),
        (
            "connect_result",
            r#"{"id":1,"connect":{"client":"2b6f0cc9-4e4b-4c4e-9c7a-0d3c0f1e2a3b","version":"0.1.0","ping":25,"pong":true}}"#
                .to_owned(),
        ),
        (
            "subscribe_result",
            r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"AbCdEfGh","recovered":true,"offset":1234,"positioned":true,"was_recovering":true}}"#
                .to_owned(),
        ),
    ]
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_command");
    for (name, json) in commands() {
        let cmds: Vec<Command> = Encoding::Json.decode_commands(json.as_bytes()).unwrap();
        let mut pb = Vec::new();
        Encoding::Protobuf.encode_commands(&cmds, &mut pb).unwrap();
        for (enc, frame) in [
            (Encoding::Json, json.as_bytes().to_vec()),
            (Encoding::Protobuf, pb),
        ] {
            g.throughput(Throughput::Bytes(frame.len() as u64));
            g.bench_function(format!("{enc:?}/{name}"), |b| {
                b.iter(|| enc.decode_commands(black_box(&frame)).unwrap());
            });
        }
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_reply");
    for (name, json) in replies() {
        let reply: Reply = Encoding::Json
            .decode_replies(json.as_bytes())
            .unwrap()
            .remove(0);
        for enc in [Encoding::Json, Encoding::Protobuf] {
            let mut out = Vec::with_capacity(512);
            g.bench_function(format!("{enc:?}/{name}"), |b| {
                b.iter(|| {
                    out.clear();
                    enc.encode_reply(black_box(&reply), &mut out).unwrap();
                    out.len()
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
