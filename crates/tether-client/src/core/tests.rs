//! Deterministic tests of the client state machine: requests, replies and time in by hand,
//! actions and events checked; no sockets, no sleeping.

use std::time::Duration;

use tether_proto::{ConnectResult, Push, SubscribeResult};

use super::*;

struct Harness {
    core: Core,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    now: Instant,
}

impl Harness {
    fn new(config: ClientConfig) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let now = Instant::now();
        let config = ClientConfig {
            rng_seed: Some(3),
            ..config
        };
        Self {
            core: Core::new(config, Arc::new(Shared::new()), tx, now),
            events,
            now,
        }
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn sent(&mut self) -> Vec<Command> {
        self.actions()
            .into_iter()
            .filter_map(|a| match a {
                Action::Send(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    fn events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }

    /// connect() -> Open -> link up -> connect reply with this ping interval.
    fn connected(&mut self, ping: u32) {
        self.core.handle_request(Request::Connect, self.now);
        assert!(matches!(self.actions()[..], [Action::Open]));
        self.core.handle_link_open(self.now);
        let sent = self.sent();
        assert!(sent[0].connect.is_some());
        self.core.handle_reply(
            Reply {
                id: sent[0].id,
                connect: Some(ConnectResult {
                    client: "c1".to_owned(),
                    ping,
                    pong: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
            self.now,
        );
        assert_eq!(self.core.state, State::Connected);
    }

    fn subscription(&mut self, channel: &str) -> mpsc::UnboundedReceiver<SubscriptionEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.core.handle_request(
            Request::AddSubscription {
                channel: channel.to_owned(),
                config: SubscriptionConfig::default(),
                events: tx,
                state: Arc::new(Mutex::new(SubscriptionState::Unsubscribed)),
            },
            self.now,
        );
        self.core
            .handle_request(Request::Subscribe(channel.to_owned()), self.now);
        rx
    }

    fn subscribe_reply(&mut self, id: u32, result: SubscribeResult) {
        self.core.handle_reply(
            Reply {
                id,
                subscribe: Some(result),
                ..Default::default()
            },
            self.now,
        );
    }

    fn publication(&mut self, channel: &str, offset: u64) {
        self.core.handle_reply(
            Reply {
                push: Some(Push {
                    channel: channel.to_owned(),
                    r#pub: Some(tether_proto::Publication {
                        data: Bytes::from(offset.to_string()),
                        offset,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            self.now,
        );
    }
}

fn call(op: Op, deadline: Instant) -> (Call, oneshot::Receiver<Result<Outcome, Error>>) {
    let (tx, rx) = oneshot::channel();
    (
        Call {
            op,
            deadline,
            reply: tx,
        },
        rx,
    )
}

fn publish_op() -> Op {
    Op::Publish {
        channel: "c".to_owned(),
        data: Bytes::from_static(b"1"),
    }
}

fn offsets(rx: &mut mpsc::UnboundedReceiver<SubscriptionEvent>) -> Vec<u64> {
    std::iter::from_fn(|| rx.try_recv().ok())
        .filter_map(|e| match e {
            SubscriptionEvent::Publication(p) => Some(p.offset),
            _ => None,
        })
        .collect()
}

#[test]
fn pings_are_answered_and_silence_means_a_dead_link() {
    let mut h = Harness::new(ClientConfig {
        max_server_ping_delay: Duration::from_secs(1),
        ..ClientConfig::default()
    });
    h.connected(2);
    h.core.handle_reply(Reply::default(), h.now);
    let sent = h.sent();
    assert_eq!(sent, [Command::default()], "a ping gets an empty command");

    // 2.9 s of silence is fine; at ping + slack the link is dead.
    h.advance(Duration::from_millis(2900));
    assert!(h.actions().is_empty());
    assert_eq!(
        h.core.poll_timeout(),
        Some(h.now + Duration::from_millis(100))
    );
    h.advance(Duration::from_millis(100));
    assert!(matches!(h.actions()[..], [Action::Close]));
    let events = h.events();
    assert!(events.iter().any(|e| matches!(
        e,
        ClientEvent::Connecting {
            code: codes::NO_PING,
            ..
        }
    )));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ClientEvent::ReconnectScheduled { attempt: 0, .. }))
    );
    assert_eq!(h.core.state, State::Connecting);
}

#[test]
fn reconnect_codes_reconnect_and_terminal_codes_stop() {
    let mut h = Harness::new(ClientConfig::default());
    h.connected(0);
    h.core.handle_link_closed(Some(3001), "shutdown", h.now);
    assert_eq!(h.core.state, State::Connecting);
    assert!(h.core.reconnect_at.is_some());

    let mut h = Harness::new(ClientConfig::default());
    h.connected(0);
    h.core.handle_reply(
        Reply {
            push: Some(Push {
                disconnect: Some(tether_proto::Disconnect {
                    code: 3500,
                    reason: "invalid token".to_owned(),
                    reconnect: false,
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        h.now,
    );
    assert!(matches!(h.actions()[..], [Action::Close]));
    assert_eq!(h.core.state, State::Disconnected);
    assert_eq!(
        h.core.poll_timeout(),
        None,
        "nothing scheduled after a terminal code"
    );
    // A late close of the link we already dropped changes nothing.
    h.core.handle_link_closed(None, "eof", h.now);
    assert_eq!(h.core.state, State::Disconnected);
}

#[test]
fn calls_buffer_while_connecting_then_flush_in_order() {
    let mut h = Harness::new(ClientConfig {
        max_pending_calls: 2,
        ..ClientConfig::default()
    });
    let deadline = h.now + Duration::from_secs(5);
    let (c0, mut r0) = call(publish_op(), deadline);
    h.core.handle_request(Request::Call(c0), h.now);
    assert!(r0.try_recv().unwrap().unwrap_err().is_closed());

    h.core.handle_request(Request::Connect, h.now);
    let _ = h.actions();
    let (c1, _r1) = call(publish_op(), deadline);
    let (c2, _r2) = call(publish_op(), deadline);
    let (c3, mut r3) = call(publish_op(), deadline);
    for c in [c1, c2, c3] {
        h.core.handle_request(Request::Call(c), h.now);
    }
    assert!(r3.try_recv().unwrap().unwrap_err().is_buffer_full());

    h.core.handle_link_open(h.now);
    let connect_id = h.sent()[0].id;
    h.core.handle_reply(
        Reply {
            id: connect_id,
            connect: Some(ConnectResult::default()),
            ..Default::default()
        },
        h.now,
    );
    let sent = h.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|c| c.publish.is_some()));
    assert!(sent[0].id < sent[1].id);
}

#[test]
fn calls_time_out_where_they_wait() {
    let mut h = Harness::new(ClientConfig::default());
    h.core.handle_request(Request::Connect, h.now);
    let (buffered, mut rb) = call(publish_op(), h.now + Duration::from_secs(1));
    h.core.handle_request(Request::Call(buffered), h.now);
    assert_eq!(h.core.poll_timeout(), Some(h.now + Duration::from_secs(1)));
    h.advance(Duration::from_secs(1));
    assert!(rb.try_recv().unwrap().unwrap_err().is_timeout());
}

#[test]
fn resubscribe_recovers_from_the_last_offset_and_drops_duplicates() {
    let mut h = Harness::new(ClientConfig::default());
    let mut sub = h.subscription("chat:1");
    h.connected(0);
    let subscribe = h.sent().remove(0);
    assert!(!subscribe.subscribe.as_ref().unwrap().recover);
    h.subscribe_reply(
        subscribe.id,
        SubscribeResult {
            recoverable: true,
            epoch: "e".to_owned(),
            offset: 3,
            ..Default::default()
        },
    );
    h.publication("chat:1", 4);
    h.publication("chat:1", 4);
    h.publication("chat:1", 5);
    assert_eq!(
        offsets(&mut sub),
        [4, 5],
        "a repeated offset is delivered once"
    );

    // The link drops; after reconnect the subscribe asks to recover from offset 5.
    h.core.handle_link_closed(None, "reset", h.now);
    h.advance(Duration::from_secs(30));
    assert!(matches!(h.actions()[..], [Action::Open]));
    h.core.handle_link_open(h.now);
    let id = h.sent()[0].id;
    h.core.handle_reply(
        Reply {
            id,
            connect: Some(ConnectResult::default()),
            ..Default::default()
        },
        h.now,
    );
    let subscribe = h.sent().remove(0);
    let request = subscribe.subscribe.unwrap();
    assert!(request.recover);
    assert_eq!((request.offset, request.epoch.as_str()), (5, "e"));
    let recovered = |offset: u64| tether_proto::Publication {
        offset,
        ..Default::default()
    };
    h.subscribe_reply(
        subscribe.id,
        SubscribeResult {
            recoverable: true,
            recovered: true,
            was_recovering: true,
            epoch: "e".to_owned(),
            // As the server sends it (§2.3): the offset the client asked to recover from.
            offset: 5,
            // 5 overlaps what was delivered; 6 and 7 were missed.
            publications: vec![recovered(5), recovered(6), recovered(7)],
            ..Default::default()
        },
    );
    h.publication("chat:1", 7);
    h.publication("chat:1", 8);
    let events: Vec<SubscriptionEvent> = std::iter::from_fn(|| sub.try_recv().ok()).collect();
    assert!(events.iter().any(|e| matches!(
        e,
        SubscriptionEvent::Subscribed {
            recovered: true,
            was_recovering: true,
            ..
        }
    )));
    let delivered: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            SubscriptionEvent::Publication(p) => Some(p.offset),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [6, 7, 8]);

    // Another drop: the next recovery starts after the last delivered publication (8), not
    // from the offset the previous recovery asked from (which would replay 6 and 7).
    h.core.handle_link_closed(None, "reset", h.now);
    h.advance(Duration::from_secs(30));
    assert!(matches!(h.actions()[..], [Action::Open]));
    h.core.handle_link_open(h.now);
    let id = h.sent()[0].id;
    h.core.handle_reply(
        Reply {
            id,
            connect: Some(ConnectResult::default()),
            ..Default::default()
        },
        h.now,
    );
    let request = h.sent().remove(0).subscribe.unwrap();
    assert_eq!((request.offset, request.epoch.as_str()), (8, "e"));
}

#[test]
fn unsubscribe_push_codes_decide_resubscribe() {
    let mut h = Harness::new(ClientConfig::default());
    let mut sub = h.subscription("news");
    h.connected(0);
    let id = h.sent()[0].id;
    h.subscribe_reply(id, SubscribeResult::default());
    let unsubscribe = |code: u32| Reply {
        push: Some(Push {
            channel: "news".to_owned(),
            unsubscribe: Some(tether_proto::Unsubscribe {
                code,
                reason: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    h.core.handle_reply(unsubscribe(2500), h.now);
    let resubscribe = h.sent();
    assert!(resubscribe[0].subscribe.is_some(), "2500 resubscribes");
    h.subscribe_reply(resubscribe[0].id, SubscribeResult::default());
    h.core.handle_reply(unsubscribe(2000), h.now);
    assert!(h.sent().is_empty(), "2000 does not");
    let last = std::iter::from_fn(|| sub.try_recv().ok()).last();
    assert!(matches!(
        last,
        Some(SubscriptionEvent::Unsubscribed { code: 2000, .. })
    ));
}

#[test]
fn token_expired_on_connect_fetches_a_new_token_then_opens() {
    let source = TokenSource::new(|| async { Ok("fresh".to_owned()) });
    let mut h = Harness::new(ClientConfig {
        token: Some("old".to_owned()),
        token_source: Some(source),
        ..ClientConfig::default()
    });
    h.core.handle_request(Request::Connect, h.now);
    let _ = h.actions();
    h.core.handle_link_open(h.now);
    let id = h.sent()[0].id;
    h.core.handle_reply(
        Reply {
            id,
            error: Some(tether_proto::Error {
                code: 109,
                message: "token expired".to_owned(),
                temporary: false,
            }),
            ..Default::default()
        },
        h.now,
    );
    assert!(matches!(h.actions()[..], [Action::Close]));
    h.advance(Duration::from_secs(30));
    let actions = h.actions();
    assert!(
        matches!(&actions[..], [Action::FetchToken(TokenTarget::Connect, _)]),
        "{actions:?}"
    );
    h.core
        .handle_token(TokenTarget::Connect, Ok("fresh".to_owned()), h.now);
    assert!(matches!(h.actions()[..], [Action::Open]));
    h.core.handle_link_open(h.now);
    let connect = h.sent().remove(0);
    assert_eq!(connect.connect.unwrap().token, "fresh");
}

#[test]
fn subscribe_token_expired_again_and_again_backs_off() {
    // A token backend whose tokens the server always finds expired (clock skew): each 109
    // must be followed by a backoff delay, not an immediate fetch-and-resubscribe loop.
    let mut h = Harness::new(ClientConfig::default());
    let (tx, _rx) = mpsc::unbounded_channel();
    h.core.handle_request(
        Request::AddSubscription {
            channel: "private".to_owned(),
            config: SubscriptionConfig {
                token: Some("stale".to_owned()),
                token_source: Some(TokenSource::new(|| async { Ok("stale".to_owned()) })),
                ..SubscriptionConfig::default()
            },
            events: tx,
            state: Arc::new(Mutex::new(SubscriptionState::Unsubscribed)),
        },
        h.now,
    );
    h.core
        .handle_request(Request::Subscribe("private".to_owned()), h.now);
    h.connected(0);
    let mut subscribes_at_once = 0;
    for _ in 0..10 {
        let Some(subscribe) = h.sent().into_iter().find(|c| c.subscribe.is_some()) else {
            break;
        };
        subscribes_at_once += 1;
        h.core.handle_reply(
            Reply {
                id: subscribe.id,
                error: Some(tether_proto::Error {
                    code: 109,
                    message: "token expired".to_owned(),
                    temporary: false,
                }),
                ..Default::default()
            },
            h.now,
        );
        // The token callback answers at once (the driver would run it now).
        for action in h.actions() {
            if let Action::FetchToken(target, _) = action {
                h.core.handle_token(target, Ok("stale".to_owned()), h.now);
            }
        }
    }
    assert_eq!(
        subscribes_at_once, 1,
        "resubscribed {subscribes_at_once} times without any time passing"
    );
    // When the backoff delay is over, a new token is fetched for the resubscribe.
    let due = h.core.poll_timeout().expect("a resubscribe is scheduled");
    h.advance(due - h.now);
    let actions = h.actions();
    assert!(
        matches!(&actions[..], [Action::FetchToken(TokenTarget::Subscribe(c), _)] if c == "private"),
        "{actions:?}"
    );
}

#[test]
fn unauthorized_sub_refresh_unsubscribes_with_the_unauthorized_code() {
    let mut h = Harness::new(ClientConfig::default());
    let (tx, mut sub) = mpsc::unbounded_channel();
    h.core.handle_request(
        Request::AddSubscription {
            channel: "private".to_owned(),
            config: SubscriptionConfig {
                token: Some("t1".to_owned()),
                token_source: Some(TokenSource::new(|| async { Err(Error::unauthorized()) })),
                ..SubscriptionConfig::default()
            },
            events: tx,
            state: Arc::new(Mutex::new(SubscriptionState::Unsubscribed)),
        },
        h.now,
    );
    h.core
        .handle_request(Request::Subscribe("private".to_owned()), h.now);
    h.connected(0);
    let id = h.sent()[0].id;
    h.subscribe_reply(
        id,
        SubscribeResult {
            expires: true,
            ttl: 60,
            ..Default::default()
        },
    );
    h.advance(Duration::from_secs(60));
    let actions = h.actions();
    assert!(
        matches!(&actions[..], [Action::FetchToken(TokenTarget::SubRefresh(c), _)] if c == "private"),
        "{actions:?}"
    );
    // The app's token callback says the user may no longer read this channel.
    h.core.handle_token(
        TokenTarget::SubRefresh("private".to_owned()),
        Err(Error::unauthorized()),
        h.now,
    );
    let sent = h.sent();
    assert!(
        sent.iter().any(|c| c.unsubscribe.is_some()),
        "the server is told: {sent:?}"
    );
    let last = std::iter::from_fn(|| sub.try_recv().ok()).last();
    assert!(
        matches!(
            last,
            Some(SubscriptionEvent::Unsubscribed {
                code: codes::UNAUTHORIZED,
                ..
            })
        ),
        "{last:?}"
    );
}

#[test]
fn no_join_or_leave_events_after_unsubscribe() {
    let mut h = Harness::new(ClientConfig::default());
    let mut sub = h.subscription("room");
    h.connected(0);
    let id = h.sent()[0].id;
    h.subscribe_reply(id, SubscribeResult::default());
    h.core
        .handle_request(Request::Unsubscribe("room".to_owned()), h.now);
    // Pushes the server sent before it handled the unsubscribe command.
    let info = || tether_proto::ClientInfo {
        user: "u".to_owned(),
        client: "c2".to_owned(),
        ..Default::default()
    };
    for push in [
        Push {
            channel: "room".to_owned(),
            join: Some(tether_proto::Join { info: Some(info()) }),
            ..Default::default()
        },
        Push {
            channel: "room".to_owned(),
            leave: Some(tether_proto::Leave { info: Some(info()) }),
            ..Default::default()
        },
    ] {
        h.core.handle_reply(
            Reply {
                push: Some(push),
                ..Default::default()
            },
            h.now,
        );
    }
    let last = std::iter::from_fn(|| sub.try_recv().ok()).last();
    assert!(
        matches!(last, Some(SubscriptionEvent::Unsubscribed { .. })),
        "nothing follows Unsubscribed: {last:?}"
    );
}
