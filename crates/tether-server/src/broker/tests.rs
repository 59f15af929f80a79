//! Unit tests of the memory engine through its public surface, with injected `Instant`s.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::*;

/// Records everything the broker emits, in emission order.
#[derive(Default)]
pub(super) struct Recorder {
    publications: Mutex<Vec<(String, PublicationEvent)>>,
    joins: Mutex<Vec<(String, ClientInfo)>>,
    leaves: Mutex<Vec<(String, ClientInfo)>>,
}

impl BrokerEvents for Recorder {
    fn on_publication(&self, channel: &str, event: &PublicationEvent) {
        self.publications
            .lock()
            .push((channel.to_owned(), event.clone()));
    }
    fn on_join(&self, channel: &str, info: &ClientInfo) {
        self.joins.lock().push((channel.to_owned(), info.clone()));
    }
    fn on_leave(&self, channel: &str, info: &ClientInfo) {
        self.leaves.lock().push((channel.to_owned(), info.clone()));
    }
}

impl Recorder {
    pub(super) fn offsets(&self, channel: &str) -> Vec<u64> {
        self.publications
            .lock()
            .iter()
            .filter(|(name, _)| name == channel)
            .map(|(_, event)| event.publication.offset)
            .collect()
    }
}

fn broker() -> (MemoryBroker, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    (MemoryBroker::new(recorder.clone()), recorder)
}

pub(super) fn publication(data: &str) -> Publication {
    Publication {
        data: Bytes::copy_from_slice(data.as_bytes()),
        ..Publication::default()
    }
}

const TTL: Duration = Duration::from_secs(60);
pub(super) const META_TTL: Duration = Duration::from_secs(3600);

pub(super) fn with_history(size: usize) -> PublishOptions {
    PublishOptions {
        history: Some(HistoryOptions {
            size,
            ttl: TTL,
            meta_ttl: META_TTL,
        }),
        idempotency_key: None,
    }
}

fn publish(
    broker: &MemoryBroker,
    channel: &str,
    data: &str,
    size: usize,
    now: Instant,
) -> StreamPosition {
    broker
        .publish(channel, publication(data), &with_history(size), now)
        .unwrap()
        .position
        .unwrap()
}

pub(super) fn query(
    since: Option<StreamPosition>,
    limit: Option<usize>,
    reverse: bool,
) -> HistoryQuery {
    HistoryQuery {
        since,
        limit,
        reverse,
        meta_ttl: META_TTL,
    }
}

pub(super) fn offsets(page: &HistoryPage) -> Vec<u64> {
    page.publications.iter().map(|p| p.offset).collect()
}

fn position(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: epoch.to_owned(),
    }
}

#[test]
fn offsets_are_contiguous_from_one_within_one_epoch() {
    let (broker, recorder) = broker();
    let now = Instant::now();
    let positions: Vec<_> = (0..5)
        .map(|i| publish(&broker, "chat", &format!("m{i}"), 10, now))
        .collect();
    let epoch = &positions[0].epoch;
    assert_eq!(epoch.len(), 8);
    assert!(epoch.chars().all(|c| c.is_ascii_alphabetic()), "{epoch}");
    for (i, position) in positions.iter().enumerate() {
        assert_eq!(position.offset, i as u64 + 1);
        assert_eq!(&position.epoch, epoch);
    }
    assert_eq!(recorder.offsets("chat"), vec![1, 2, 3, 4, 5]);
    // Another channel has its own stream.
    let other = publish(&broker, "news", "x", 10, now);
    assert_eq!(other.offset, 1);
    assert_ne!(&other.epoch, epoch);
    // Events carry the same position the caller got.
    let events = recorder.publications.lock();
    let (_, last) = events.iter().rfind(|(c, _)| c == "chat").unwrap();
    assert_eq!(last.position.as_ref(), Some(&positions[4]));
    assert_eq!(last.publication.data, Bytes::from_static(b"m4"));
}

#[test]
fn without_history_no_offset_no_position_no_state() {
    let (broker, recorder) = broker();
    let now = Instant::now();
    let mut hello = publication("hello");
    hello.offset = 42; // whatever the caller set is overwritten
    let published = broker
        .publish("live", hello, &PublishOptions::default(), now)
        .unwrap();
    assert_eq!(published, Published::default());
    assert_eq!(broker.stored_channels(), 0);
    let events = recorder.publications.lock();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "live");
    assert_eq!(events[0].1.publication.offset, 0);
    assert!(events[0].1.position.is_none());
    drop(events);

    // A zero size or ttl disables history, as in Centrifugo.
    let mut opts = with_history(0);
    let published = broker
        .publish("live", publication("a"), &opts, now)
        .unwrap();
    assert!(published.position.is_none());
    opts = with_history(10);
    if let Some(history) = &mut opts.history {
        history.ttl = Duration::ZERO;
    }
    let published = broker
        .publish("live", publication("b"), &opts, now)
        .unwrap();
    assert!(published.position.is_none());
    assert_eq!(broker.stored_channels(), 0);
}

#[test]
fn ring_buffer_keeps_only_the_newest_size_publications() {
    let (broker, _) = broker();
    let now = Instant::now();
    for i in 0..10 {
        publish(&broker, "chat", &format!("m{i}"), 3, now);
    }
    let page = broker
        .history("chat", &query(None, None, false), now)
        .unwrap();
    assert_eq!(offsets(&page), vec![8, 9, 10]);
    assert_eq!(page.top.offset, 10);
    assert_eq!(page.publications[0].data, Bytes::from_static(b"m7"));
}

#[test]
fn history_forward_reverse_since_and_limit() {
    let (broker, _) = broker();
    let now = Instant::now();
    let mut epoch = String::new();
    for i in 0..6 {
        epoch = publish(&broker, "chat", &format!("m{i}"), 10, now).epoch;
    }
    let all = |since, limit, reverse| {
        let page = broker
            .history("chat", &query(since, limit, reverse), now)
            .unwrap();
        assert_eq!(page.top, position(6, &epoch));
        offsets(&page)
    };
    assert_eq!(all(None, None, false), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(all(None, Some(2), false), vec![1, 2]);
    assert_eq!(all(Some(position(3, &epoch)), None, false), vec![4, 5, 6]);
    assert_eq!(all(Some(position(3, &epoch)), Some(2), false), vec![4, 5]);
    assert_eq!(
        all(Some(position(6, &epoch)), None, false),
        Vec::<u64>::new()
    );
    assert_eq!(
        all(Some(position(0, "")), None, false),
        vec![1, 2, 3, 4, 5, 6]
    );
    assert_eq!(all(None, None, true), vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(all(None, Some(2), true), vec![6, 5]);
    assert_eq!(all(Some(position(4, &epoch)), None, true), vec![3, 2, 1]);
    assert_eq!(all(Some(position(4, &epoch)), Some(1), true), vec![3]);
    // Limit 0: only the top.
    assert_eq!(all(None, Some(0), false), Vec::<u64>::new());
    assert_eq!(
        all(Some(position(2, &epoch)), Some(0), true),
        Vec::<u64>::new()
    );
}

#[test]
fn history_of_a_new_channel_creates_its_epoch_at_top_zero() {
    let (broker, _) = broker();
    let now = Instant::now();
    let page = broker
        .history("fresh", &query(None, None, false), now)
        .unwrap();
    assert_eq!(page.top.offset, 0);
    assert_eq!(page.top.epoch.len(), 8);
    assert!(page.publications.is_empty());
    // The epoch is stable: the first publication continues it.
    let first = publish(&broker, "fresh", "a", 10, now);
    assert_eq!(first, position(1, &page.top.epoch));
}

#[test]
fn a_position_from_another_epoch_is_unrecoverable() {
    let (broker, _) = broker();
    let now = Instant::now();
    let current = publish(&broker, "chat", "a", 10, now);
    let other = if current.epoch == "xxxxxxxx" {
        "yyyyyyyy"
    } else {
        "xxxxxxxx"
    };
    for reverse in [false, true] {
        let err = broker
            .history("chat", &query(Some(position(1, other)), None, reverse), now)
            .unwrap_err();
        assert_eq!(err, BrokerError::UnrecoverablePosition);
    }
    // The same epoch, or none given, is fine.
    assert!(
        broker
            .history("chat", &query(Some(current), None, false), now)
            .is_ok()
    );
    assert!(
        broker
            .history("chat", &query(Some(position(0, "")), None, false), now)
            .is_ok()
    );
}

#[test]
fn publications_expire_ttl_after_last_publish_but_position_stays() {
    let (broker, _) = broker();
    let t0 = Instant::now();
    let first = publish(&broker, "chat", "a", 10, t0);
    // A later publish pushes the TTL of the whole stream forward.
    publish(&broker, "chat", "b", 10, t0 + TTL - Duration::from_secs(1));
    let page = broker
        .history(
            "chat",
            &query(None, None, false),
            t0 + TTL + Duration::from_secs(1),
        )
        .unwrap();
    assert_eq!(offsets(&page), vec![1, 2]);

    let later = t0 + 2 * TTL;
    let page = broker
        .history("chat", &query(None, None, false), later)
        .unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.top, position(2, &first.epoch));
    // Offsets continue in the same epoch.
    assert_eq!(
        publish(&broker, "chat", "c", 10, later),
        position(3, &first.epoch)
    );
    let page = broker
        .history("chat", &query(None, None, false), later)
        .unwrap();
    assert_eq!(offsets(&page), vec![3]);
}

#[test]
fn expired_meta_starts_a_new_epoch() {
    let (broker, _) = broker();
    let t0 = Instant::now();
    let first = publish(&broker, "chat", "a", 10, t0);
    publish(&broker, "chat", "b", 10, t0);
    // A history read keeps the meta alive.
    let read_at = t0 + META_TTL - Duration::from_secs(1);
    let page = broker
        .history("chat", &query(None, Some(0), false), read_at)
        .unwrap();
    assert_eq!(page.top, position(2, &first.epoch));
    let still = read_at + META_TTL - Duration::from_secs(1);
    let page = broker
        .history("chat", &query(None, Some(0), false), still)
        .unwrap();
    assert_eq!(page.top, position(2, &first.epoch));

    let expired = still + META_TTL;
    let page = broker
        .history("chat", &query(None, None, false), expired)
        .unwrap();
    assert_eq!(page.top.offset, 0);
    assert_ne!(page.top.epoch, first.epoch);
    // The client's old position is now unrecoverable.
    assert_eq!(
        broker.history(
            "chat",
            &query(Some(position(2, &first.epoch)), None, false),
            expired
        ),
        Err(BrokerError::UnrecoverablePosition)
    );
    let next = publish(&broker, "chat", "c", 10, expired);
    assert_eq!(next, position(1, &page.top.epoch));
}

#[test]
fn expired_meta_on_publish_starts_a_new_epoch_at_one() {
    let (broker, _) = broker();
    let t0 = Instant::now();
    let first = publish(&broker, "chat", "a", 10, t0);
    let next = publish(&broker, "chat", "b", 10, t0 + META_TTL);
    assert_eq!(next.offset, 1);
    assert_ne!(next.epoch, first.epoch);
}

#[test]
fn sweep_reclaims_dead_channels_and_keeps_live_ones() {
    let (broker, _) = broker();
    let t0 = Instant::now();
    let dead = publish(&broker, "dead", "a", 10, t0);
    let live = publish(&broker, "live", "a", 10, t0 + META_TTL / 2);
    assert_eq!(broker.stored_channels(), 2);
    broker.sweep(t0 + TTL);
    assert_eq!(broker.stored_channels(), 2);
    broker.sweep(t0 + META_TTL);
    assert_eq!(broker.stored_channels(), 1);
    // The live channel kept its position.
    let page = broker
        .history("live", &query(None, None, false), t0 + META_TTL)
        .unwrap();
    assert_eq!(page.top, live);
    // The dead one comes back as a new epoch.
    let page = broker
        .history("dead", &query(None, None, false), t0 + META_TTL)
        .unwrap();
    assert_eq!(page.top.offset, 0);
    assert_ne!(page.top.epoch, dead.epoch);
}

#[test]
fn zero_meta_ttl_keeps_the_position_forever() {
    let (broker, _) = broker();
    let t0 = Instant::now();
    let opts = PublishOptions {
        history: Some(HistoryOptions {
            size: 10,
            ttl: TTL,
            meta_ttl: Duration::ZERO,
        }),
        idempotency_key: None,
    };
    let first = broker.publish("chat", publication("a"), &opts, t0).unwrap();
    let far = t0 + Duration::from_secs(100 * 24 * 3600);
    broker.sweep(far);
    let next = broker
        .publish("chat", publication("b"), &opts, far)
        .unwrap();
    let first = first.position.unwrap();
    assert_eq!(next.position, Some(position(2, &first.epoch)));
}

#[test]
fn remove_history_keeps_the_position() {
    let (broker, _) = broker();
    let now = Instant::now();
    publish(&broker, "chat", "a", 10, now);
    let top = publish(&broker, "chat", "b", 10, now);
    broker.remove_history("chat");
    let page = broker
        .history("chat", &query(None, None, false), now)
        .unwrap();
    assert!(page.publications.is_empty());
    assert_eq!(page.top, top);
    assert_eq!(
        publish(&broker, "chat", "c", 10, now),
        position(3, &top.epoch)
    );
    // Removing history of an unknown channel creates nothing.
    broker.remove_history("nobody");
    assert_eq!(broker.stored_channels(), 1);
}

#[test]
fn idempotent_publish_within_five_minutes_returns_the_first_result() {
    let (broker, recorder) = broker();
    let t0 = Instant::now();
    let mut opts = with_history(10);
    opts.idempotency_key = Some("k1".to_owned());
    let first = broker.publish("chat", publication("a"), &opts, t0).unwrap();
    assert!(!first.from_cache);
    let repeat = broker
        .publish(
            "chat",
            publication("a"),
            &opts,
            t0 + Duration::from_secs(299),
        )
        .unwrap();
    assert!(repeat.from_cache);
    assert_eq!(repeat.position, first.position);
    assert_eq!(recorder.offsets("chat"), vec![1]);

    // The same key in another channel is a different publish.
    let other = broker.publish("news", publication("a"), &opts, t0).unwrap();
    assert!(!other.from_cache);

    // After five minutes the key is forgotten and the publish happens again.
    let after = broker
        .publish(
            "chat",
            publication("a"),
            &opts,
            t0 + Duration::from_secs(300),
        )
        .unwrap();
    assert!(!after.from_cache);
    assert_eq!(after.position.as_ref().map(|p| p.offset), Some(2));
    assert_eq!(recorder.offsets("chat"), vec![1, 2]);
}

#[test]
fn idempotent_publish_without_history() {
    let (broker, recorder) = broker();
    let t0 = Instant::now();
    let opts = PublishOptions {
        history: None,
        idempotency_key: Some("k".to_owned()),
    };
    let first = broker.publish("live", publication("a"), &opts, t0).unwrap();
    let repeat = broker.publish("live", publication("a"), &opts, t0).unwrap();
    assert_eq!(
        first,
        Published {
            position: None,
            from_cache: false
        }
    );
    assert_eq!(
        repeat,
        Published {
            position: None,
            from_cache: true
        }
    );
    assert_eq!(recorder.publications.lock().len(), 1);
    // The record is swept after its five minutes, leaving no state.
    assert_eq!(broker.stored_channels(), 1);
    broker.sweep(t0 + Duration::from_secs(300));
    assert_eq!(broker.stored_channels(), 0);
}

#[test]
fn delta_publications_carry_the_previous_one() {
    let (broker, recorder) = broker();
    let now = Instant::now();
    let mut first = publication("one");
    first.delta = true;
    broker
        .publish("chat", first, &with_history(10), now)
        .unwrap();
    let mut second = publication("two");
    second.delta = true;
    broker
        .publish("chat", second, &with_history(10), now)
        .unwrap();
    broker
        .publish("chat", publication("three"), &with_history(10), now)
        .unwrap();
    let events = recorder.publications.lock();
    assert!(events[0].1.previous.is_none(), "nothing before the first");
    let previous = events[1].1.previous.as_ref().unwrap();
    assert_eq!(previous.offset, 1);
    assert_eq!(previous.data, Bytes::from_static(b"one"));
    assert!(events[2].1.previous.is_none(), "not asked for delta");
}

#[test]
fn event_order_equals_offset_order_under_concurrent_publishers() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 500;
    let (broker, recorder) = broker();
    let now = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let broker = broker.clone();
            thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..PER_THREAD {
                    // Two channels, so publishers also cross shards and channels.
                    let channel = if i % 2 == 0 { "even" } else { "odd" };
                    let position = publish(&broker, channel, &format!("{t}-{i}"), 100, now);
                    mine.push((channel, position.offset));
                }
                mine
            })
        })
        .collect();
    let mut returned: Vec<(&str, u64)> = Vec::new();
    for handle in handles {
        returned.extend(handle.join().unwrap());
    }
    let per_channel = (THREADS * PER_THREAD / 2) as u64;
    for channel in ["even", "odd"] {
        let expected: Vec<u64> = (1..=per_channel).collect();
        assert_eq!(
            recorder.offsets(channel),
            expected,
            "{channel}: events out of order"
        );
        let mut got: Vec<u64> = returned
            .iter()
            .filter(|(c, _)| *c == channel)
            .map(|(_, offset)| *offset)
            .collect();
        got.sort_unstable();
        assert_eq!(
            got, expected,
            "{channel}: offsets not unique and contiguous"
        );
        // Event positions agree with publication offsets.
        for (name, event) in recorder.publications.lock().iter() {
            if name == channel {
                assert_eq!(
                    event.position.as_ref().unwrap().offset,
                    event.publication.offset
                );
            }
        }
    }
}

#[test]
fn concurrent_publishers_and_sweeper_never_fork_a_stream() {
    // Publishers race a sweeper that runs with a clock far in the future, so the channel is
    // removable whenever it is unlocked. Whatever happens, one epoch's offsets must be
    // contiguous from 1 in delivery order.
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 5000;
    let (broker, recorder) = broker();
    let now = Instant::now();
    let future = now + META_TTL * 2;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeper = {
        let (broker, done) = (broker.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                broker.sweep(future);
            }
        })
    };
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let broker = broker.clone();
            thread::spawn(move || {
                for _ in 0..PER_PUBLISHER {
                    publish(&broker, "chat", "x", 10, now);
                }
            })
        })
        .collect();
    for handle in publishers {
        handle.join().unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sweeper.join().unwrap();
    let events = recorder.publications.lock();
    let mut expected_next: std::collections::HashMap<String, u64> = Default::default();
    let mut last_epoch = String::new();
    for (_, event) in events.iter() {
        let position = event.position.as_ref().unwrap();
        if position.epoch != last_epoch {
            // A new epoch must start at 1 and never be one seen before.
            assert!(
                !expected_next.contains_key(&position.epoch),
                "epoch came back"
            );
            assert_eq!(position.offset, 1);
            last_epoch = position.epoch.clone();
        }
        let next = expected_next.entry(position.epoch.clone()).or_insert(1);
        assert_eq!(position.offset, *next);
        *next += 1;
    }
    assert_eq!(events.len(), PUBLISHERS * PER_PUBLISHER);
}

#[test]
fn presence_tracks_clients_and_distinct_users() {
    let (broker, _) = broker();
    let info = |user: &str, client: &str| ClientInfo {
        user: user.to_owned(),
        client: client.to_owned(),
        ..ClientInfo::default()
    };
    broker.add_presence("room", "c1", info("alice", "c1"));
    broker.add_presence("room", "c2", info("alice", "c2")); // alice's phone
    broker.add_presence("room", "c3", info("bob", "c3"));
    broker.add_presence("other", "c4", info("carol", "c4"));
    assert_eq!(
        broker.presence_stats("room"),
        PresenceStats {
            num_clients: 3,
            num_users: 2
        }
    );
    let present = broker.presence("room");
    assert_eq!(present.len(), 3);
    assert_eq!(present["c2"], info("alice", "c2"));

    // Re-adding replaces, it does not double count.
    broker.add_presence("room", "c1", info("alice", "c1"));
    assert_eq!(
        broker.presence_stats("room"),
        PresenceStats {
            num_clients: 3,
            num_users: 2
        }
    );

    broker.remove_presence("room", "c1");
    assert_eq!(
        broker.presence_stats("room"),
        PresenceStats {
            num_clients: 2,
            num_users: 2
        }
    );
    broker.remove_presence("room", "c2");
    assert_eq!(
        broker.presence_stats("room"),
        PresenceStats {
            num_clients: 1,
            num_users: 1
        }
    );
    broker.remove_presence("room", "unknown");
    broker.remove_presence("room", "c3");
    assert_eq!(broker.presence_stats("room"), PresenceStats::default());
    assert!(broker.presence("room").is_empty());
    // Only "other" still holds a presence map.
    assert_eq!(broker.presence_channels(), 1);
    broker.remove_presence("other", "c4");
    assert_eq!(broker.presence_channels(), 0);
}

#[test]
fn join_and_leave_are_emitted() {
    let (broker, recorder) = broker();
    let info = ClientInfo {
        user: "u".to_owned(),
        client: "c".to_owned(),
        conn_info: Some(Bytes::from_static(b"{}")),
        chan_info: None,
    };
    broker.publish_join("room", &info);
    broker.publish_leave("room", &info);
    assert_eq!(
        *recorder.joins.lock(),
        vec![("room".to_owned(), info.clone())]
    );
    assert_eq!(*recorder.leaves.lock(), vec![("room".to_owned(), info)]);
    assert_eq!(broker.stored_channels(), 0);
}

#[tokio::test]
async fn subscribe_confirmed_gives_the_managers_answer_or_says_why_there_is_none() {
    let deadline = Duration::from_secs(5);
    let (reply, confirmed) = tokio::sync::oneshot::channel();
    reply.send(Ok(())).unwrap();
    assert!(
        subscribe_confirmed(true, confirmed, deadline, "x")
            .await
            .is_ok()
    );

    let (reply, confirmed) = tokio::sync::oneshot::channel();
    reply
        .send(Err(BrokerError::Unavailable("refused".to_owned())))
        .unwrap();
    let refused = subscribe_confirmed(true, confirmed, deadline, "x").await;
    assert!(matches!(refused, Err(BrokerError::Unavailable(why)) if why == "refused"));

    let (_, confirmed) = tokio::sync::oneshot::channel();
    let gone = subscribe_confirmed(true, confirmed, deadline, "nats broker").await;
    assert!(matches!(gone, Err(BrokerError::Unavailable(why)) if why == "nats broker stopped"));

    let (_reply, confirmed) = tokio::sync::oneshot::channel();
    let not_sent = subscribe_confirmed(false, confirmed, deadline, "redis engine").await;
    assert!(
        matches!(not_sent, Err(BrokerError::Unavailable(why)) if why == "redis engine stopped")
    );

    let (_reply, confirmed) = tokio::sync::oneshot::channel();
    let slow = subscribe_confirmed(true, confirmed, Duration::from_millis(10), "x").await;
    assert!(matches!(slow, Err(BrokerError::Unavailable(why)) if why == "x subscribe timed out"));
}
