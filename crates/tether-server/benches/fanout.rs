//! Criterion bench of hub fan-out: one publication delivered to N in-process subscribers of
//! one channel (JSON over WebSocket), encoded once and handed to every connection (these
//! handles have no socket, so the frames are queued). The queues are emptied between
//! iterations.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tether_proto::Encoding;
use tether_server::broker::{Publication, PublicationEvent};
use tether_server::hub::{ConnHandle, Hub, SubscriberFlags};
use tether_server::wire::Framing;

fn setup(n: usize) -> (Hub, Vec<ConnHandle>) {
    let hub = Hub::new();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let conn = hub.register(Encoding::Json, Framing::WebSocket, 1 << 20, None);
        let sub = hub.subscribe("news", &conn, SubscriberFlags::default());
        assert!(hub.activate("news", &sub, Vec::new(), None));
        conns.push(conn);
    }
    (hub, conns)
}

fn event(size: usize) -> PublicationEvent {
    let mut data = String::from("{\"m\":\"");
    data.push_str(&"x".repeat(size.saturating_sub(8)));
    data.push_str("\"}");
    PublicationEvent {
        publication: Arc::new(Publication {
            offset: 0,
            data: Bytes::from(data),
            info: None,
            tags: Default::default(),
            delta: false,
            time_ms: 0,
        }),
        position: None,
        previous: None,
    }
}

fn drain(conns: &[ConnHandle]) -> usize {
    conns
        .iter()
        .flat_map(|c| c.take_queued())
        .map(|frame| frame.len())
        .sum()
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_fanout");
    let ev = event(128);
    for n in [100usize, 1_000, 10_000] {
        let (hub, conns) = setup(n);
        // Every subscriber must get the frame, or the bench measures nothing.
        hub.deliver_publication("news", &ev);
        assert!(drain(&conns) >= n * 128);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("json_ws/{n}"), |b| {
            b.iter_batched(
                || drain(&conns),
                |_| hub.deliver_publication("news", &ev),
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
