//! Codec tests: the JSON wire examples of compat-protocol §1.7, Protobuf framing, the delimited
//! stream helpers, and property tests (round-trips in both formats, no panic on any input).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::codes::{ClientError, UnsubscribeCode};
use crate::protocol::*;

fn encode_json(reply: &Reply) -> String {
    let mut out = Vec::new();
    Encoding::Json.encode_reply(reply, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn raw(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn push(channel: &str, f: impl FnOnce(&mut Push)) -> Reply {
    let mut p = Push {
        channel: channel.to_owned(),
        ..Push::default()
    };
    f(&mut p);
    Reply::from_push(p)
}

// === §1.7 wire examples ===

#[test]
fn decodes_the_js_connect_and_subscribe_batch() {
    let frame = concat!(
        r#"{"id":1,"connect":{"token":"<jwt>","name":"js"}}"#,
        "\n",
        r#"{"id":2,"subscribe":{"channel":"chat:1","recover":true,"offset":5,"epoch":"AbCdEfGh","flag":1}}"#,
    );
    let cmds = Encoding::Json.decode_commands(frame.as_bytes()).unwrap();
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0].id, 1);
    assert_eq!(cmds[0].method(), Method::Connect);
    let connect = cmds[0].connect.as_ref().unwrap();
    assert_eq!(
        (connect.token.as_str(), connect.name.as_str()),
        ("<jwt>", "js")
    );
    assert_eq!(cmds[1].method(), Method::Subscribe);
    assert_eq!(
        cmds[1].subscribe,
        Some(SubscribeRequest {
            channel: "chat:1".into(),
            recover: true,
            offset: 5,
            epoch: "AbCdEfGh".into(),
            flag: 1,
            ..SubscribeRequest::default()
        })
    );
}

#[test]
fn decodes_pong_publish_and_presence_stats_commands() {
    let cmds = Encoding::Json.decode_commands(b"{}").unwrap();
    assert_eq!(cmds, vec![Command::default()]);
    assert_eq!(cmds[0].method(), Method::Pong);

    let cmds = Encoding::Json
        .decode_commands(br#"{"id":3,"publish":{"channel":"chat:1","data":{"text":"hi"}}}"#)
        .unwrap();
    let publish = cmds[0].publish.as_ref().unwrap();
    assert_eq!(publish.channel, "chat:1");
    assert_eq!(&publish.data[..], br#"{"text":"hi"}"#);

    let cmds = Encoding::Json
        .decode_commands(b"  {\"id\":4,\"presence_stats\":{\"channel\":\"chat:1\"}}  \r\n\n")
        .unwrap();
    assert_eq!(cmds[0].method(), Method::PresenceStats);
    assert_eq!(cmds[0].presence_stats.as_ref().unwrap().channel, "chat:1");
}

#[test]
fn encodes_connect_and_subscribe_results_byte_exact() {
    let connect = Reply {
        id: 1,
        connect: Some(ConnectResult {
            client: "2b6f…-uuid".into(),
            version: "6.9.1".into(),
            ping: 25,
            pong: true,
            ..ConnectResult::default()
        }),
        ..Reply::default()
    };
    assert_eq!(
        encode_json(&connect),
        r#"{"id":1,"connect":{"client":"2b6f…-uuid","version":"6.9.1","ping":25,"pong":true}}"#
    );

    let subscribe = Reply {
        id: 2,
        subscribe: Some(SubscribeResult {
            recoverable: true,
            epoch: "AbCdEfGh".into(),
            publications: vec![Publication {
                data: raw(r#"{"x":1}"#),
                offset: 6,
                ..Publication::default()
            }],
            recovered: true,
            offset: 5,
            positioned: true,
            was_recovering: true,
            ..SubscribeResult::default()
        }),
        ..Reply::default()
    };
    assert_eq!(
        encode_json(&subscribe),
        r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"AbCdEfGh","publications":[{"data":{"x":1},"offset":6}],"recovered":true,"offset":5,"positioned":true,"was_recovering":true}}"#
    );
}

#[test]
fn encodes_simple_results_and_errors_byte_exact() {
    assert_eq!(encode_json(&Reply::ping()), "{}");
    let publish = Reply {
        id: 3,
        publish: Some(PublishResult {}),
        ..Reply::default()
    };
    assert_eq!(encode_json(&publish), r#"{"id":3,"publish":{}}"#);
    let stats = Reply {
        id: 4,
        presence_stats: Some(PresenceStatsResult {
            num_clients: 1,
            num_users: 1,
        }),
        ..Reply::default()
    };
    assert_eq!(
        encode_json(&stats),
        r#"{"id":4,"presence_stats":{"num_clients":1,"num_users":1}}"#
    );
    let error = Reply::from_error(5, ClientError::PERMISSION_DENIED);
    assert_eq!(
        encode_json(&error),
        r#"{"id":5,"error":{"code":103,"message":"permission denied"}}"#
    );
    let temporary = Reply::from_error(6, ClientError::INTERNAL);
    assert_eq!(
        encode_json(&temporary),
        r#"{"id":6,"error":{"code":100,"message":"internal server error","temporary":true}}"#
    );
}

#[test]
fn encodes_pushes_byte_exact() {
    let publication = push("chat:1", |p| {
        p.r#pub = Some(Publication {
            data: raw(r#"{"x":2}"#),
            offset: 7,
            ..Publication::default()
        });
    });
    assert_eq!(
        encode_json(&publication),
        r#"{"push":{"channel":"chat:1","pub":{"data":{"x":2},"offset":7}}}"#
    );

    let join = push("chat:1", |p| {
        p.join = Some(Join {
            info: Some(ClientInfo {
                user: "42".into(),
                client: "…".into(),
                conn_info: raw(r#"{"name":"A"}"#),
                chan_info: Bytes::new(),
            }),
        });
    });
    assert_eq!(
        encode_json(&join),
        r#"{"push":{"channel":"chat:1","join":{"info":{"user":"42","client":"…","conn_info":{"name":"A"}}}}}"#
    );

    let unsubscribe = push("chat:1", |p| {
        p.unsubscribe = Some(UnsubscribeCode::SERVER.into())
    });
    assert_eq!(
        encode_json(&unsubscribe),
        r#"{"push":{"channel":"chat:1","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}"#
    );

    let subscribe = push("#42", |p| {
        p.subscribe = Some(Subscribe {
            recoverable: true,
            epoch: "…".into(),
            offset: 3,
            positioned: true,
            data: Bytes::new(),
        });
    });
    assert_eq!(
        encode_json(&subscribe),
        r##"{"push":{"channel":"#42","subscribe":{"recoverable":true,"epoch":"…","offset":3,"positioned":true}}}"##
    );

    let message = push("", |p| {
        p.message = Some(Message {
            data: raw(r#"{"any":"json"}"#),
        });
    });
    assert_eq!(
        encode_json(&message),
        r#"{"push":{"message":{"data":{"any":"json"}}}}"#
    );
}

#[test]
fn encode_replies_joins_with_newlines_and_decodes_back() {
    let replies = vec![
        Reply::ping(),
        Reply::from_error(5, ClientError::BAD_REQUEST),
        push("c", |p| {
            p.r#pub = Some(Publication {
                data: raw("{\"a\":\n1}"),
                ..Publication::default()
            });
        }),
    ];
    let mut out = Vec::new();
    Encoding::Json.encode_replies(&replies, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        concat!(
            "{}\n",
            r#"{"id":5,"error":{"code":107,"message":"bad request"}}"#,
            "\n",
            r#"{"push":{"channel":"c","pub":{"data":{"a":1}}}}"#
        )
    );
    let back = Encoding::Json.decode_replies(&out).unwrap();
    assert_eq!(back.len(), 3);
    assert!(back[0].is_ping());
    assert_eq!(back[1], replies[1]);
    let data = &back[2].push.as_ref().unwrap().r#pub.as_ref().unwrap().data;
    assert_eq!(&data[..], br#"{"a":1}"#);
}

#[test]
fn non_json_data_is_an_encode_error_and_leaves_output_untouched() {
    let bad = push("c", |p| {
        p.r#pub = Some(Publication {
            data: Bytes::from_static(b"\x00\x01binary"),
            ..Publication::default()
        });
    });
    let mut out = b"prefix".to_vec();
    assert!(matches!(
        Encoding::Json.encode_reply(&bad, &mut out),
        Err(EncodeError::NonJsonData)
    ));
    assert!(matches!(
        Encoding::Json.encode_replies(&[Reply::ping(), bad.clone()], &mut out),
        Err(EncodeError::NonJsonData)
    ));
    assert_eq!(out, b"prefix");
    // Protobuf carries any bytes.
    Encoding::Protobuf.encode_reply(&bad, &mut out).unwrap();
    assert!(out.len() > b"prefix".len());
}

#[test]
fn json_ignores_unknown_keys_and_extension_fields() {
    let frame = br#"{"id":2,"future":[1,{"x":null}],"subscribe":{"channel":"c","tf":{"op":"and","nodes":[{"key":"k","cmp":"eq","val":"v"}]},"type":0,"phase":1,"cursor":"x","limit":10,"asc":true,"unknown":{}}}"#;
    let cmds = Encoding::Json.decode_commands(frame).unwrap();
    let sub = cmds[0].subscribe.as_ref().unwrap();
    assert_eq!(sub.channel, "c");
    assert_eq!(
        (sub.phase, sub.cursor.as_str(), sub.limit, sub.asc),
        (1, "x", 10, true)
    );
}

#[test]
fn json_rejects_wrong_types_and_accepts_null_for_absent() {
    for bad in [
        &br#"{"id":-1}"#[..],
        br#"{"id":1.5}"#,
        br#"{"id":1,"subscribe":{"channel":5}}"#,
        br#"{"id":1,"subscribe":{"offset":"5"}}"#,
        br#"{"id":1,"connect":[]}"#,
        br#"{"id":1,"connect":{"subs":{"c":1}}}"#,
        br#"{"id":1,"connect":{"subs":{"c":["chan"]}}}"#,
        br#"{"id":1,"subscribe":["chan"]}"#,
        br#"{"id":1,"history":{"since":[1,"e"]}}"#,
        br#"{"id":1}{"id":2}"#,
        b"{\"id\":1,\"publish\":{\"data\":\xff}}",
        b"{",
        b"nope",
    ] {
        assert!(
            Encoding::Json.decode_commands(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let cmds = Encoding::Json
        .decode_commands(br#"{"id":1,"connect":null,"publish":{"channel":"c","data":null}}"#)
        .unwrap();
    assert_eq!(cmds[0].method(), Method::Publish);
    assert!(cmds[0].publish.as_ref().unwrap().data.is_empty());
    let replies = Encoding::Json
        .decode_replies(br#"{"id":9,"history":{"publications":null,"epoch":"e","offset":0}}"#)
        .unwrap();
    assert!(
        Encoding::Json
            .decode_replies(br#"{"id":9,"history":{"publications":[["d"]]}}"#)
            .is_err()
    );
    assert!(replies[0].history.as_ref().unwrap().publications.is_empty());
}

#[test]
fn keyword_fields_use_proto_names_in_json() {
    let cmds = Encoding::Json
        .decode_commands(br#"{"id":1,"publish":{"channel":"m","type":1,"key":"k"}}"#)
        .unwrap();
    assert_eq!(cmds[0].publish.as_ref().unwrap().r#type, 1);
    let replies = Encoding::Json
        .decode_replies(br#"{"push":{"channel":"c","pub":{"offset":2}}}"#)
        .unwrap();
    assert_eq!(
        replies[0]
            .push
            .as_ref()
            .unwrap()
            .r#pub
            .as_ref()
            .unwrap()
            .offset,
        2
    );
}

#[test]
fn empty_frames_are_errors() {
    for encoding in [Encoding::Json, Encoding::Protobuf] {
        assert!(matches!(
            encoding.decode_commands(b""),
            Err(DecodeError::EmptyFrame)
        ));
    }
    assert!(matches!(
        Encoding::Json.decode_commands(b"\n\n"),
        Err(DecodeError::EmptyFrame)
    ));
}

#[test]
fn iterators_yield_valid_messages_before_the_first_error_then_stop() {
    let mut it = Encoding::Json.iter_commands(b"{\"id\":1}\n\n  {}  \nnot json\n{\"id\":2}");
    assert_eq!(it.next().unwrap().unwrap().id, 1);
    assert_eq!(it.next().unwrap().unwrap().method(), Method::Pong);
    assert!(matches!(it.next(), Some(Err(DecodeError::NotAnObject))));
    assert!(it.next().is_none());
    assert!(it.next().is_none());

    let mut it = Encoding::Protobuf.iter_replies(&[0x00, 0x00, 0x05, 0x08]);
    assert!(it.next().unwrap().unwrap().is_ping());
    assert!(it.next().unwrap().unwrap().is_ping());
    assert!(matches!(it.next(), Some(Err(DecodeError::Truncated))));
    assert!(it.next().is_none());

    let mut it = Encoding::Json.iter_commands(b" \n ");
    assert!(matches!(it.next(), Some(Err(DecodeError::EmptyFrame))));
    assert!(it.next().is_none());
    let mut it = Encoding::Protobuf.iter_commands(b"");
    assert!(matches!(it.next(), Some(Err(DecodeError::EmptyFrame))));
    assert!(it.next().is_none());
}

// === Protobuf ===

#[test]
fn protobuf_ping_is_a_single_zero_byte() {
    let mut out = Vec::new();
    Encoding::Protobuf
        .encode_reply(&Reply::ping(), &mut out)
        .unwrap();
    assert_eq!(out, [0x00]);
    let cmds = Encoding::Protobuf.decode_commands(&[0x00]).unwrap();
    assert_eq!(cmds, vec![Command::default()]);
    assert_eq!(cmds[0].method(), Method::Pong);
}

#[test]
fn protobuf_field_numbers_match_the_proto() {
    // Command{id: 1, subscribe: {channel: "a"}} = 08 01 | 2a 03 | 0a 01 61, prefixed by 7.
    let cmd = Command {
        id: 1,
        subscribe: Some(SubscribeRequest {
            channel: "a".into(),
            ..SubscribeRequest::default()
        }),
        ..Command::default()
    };
    let mut out = Vec::new();
    Encoding::Protobuf.encode_command(&cmd, &mut out).unwrap();
    assert_eq!(out, [7, 0x08, 0x01, 0x2a, 0x03, 0x0a, 0x01, b'a']);

    // Publication score is sint64 (zigzag) with tag 13, offset uint64 with tag 6.
    let p = Publication {
        offset: 300,
        score: -1,
        ..Publication::default()
    };
    assert_eq!(p.encode_to_vec(), [0x30, 0xac, 0x02, 0x68, 0x01]);

    // Reply{push: {pub: {}}}: push is tag 4, pub tag 4.
    let r = Reply::from_push(Push {
        r#pub: Some(Publication::default()),
        ..Push::default()
    });
    assert_eq!(r.encode_to_vec(), [0x22, 0x02, 0x22, 0x00]);
}

#[test]
fn protobuf_decodes_several_commands_and_skips_unknown_fields() {
    let mut frame = Vec::new();
    let first = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: "t".into(),
            ..ConnectRequest::default()
        }),
        ..Command::default()
    };
    Encoding::Protobuf
        .encode_command(&first, &mut frame)
        .unwrap();
    // Command{id: 2, subscribe: {channel: "c", tf (13): {op (1): "and"}}} by hand.
    let sub_body = [0x0a, 0x01, b'c', 0x6a, 0x05, 0x0a, 0x03, b'a', b'n', b'd'];
    let mut cmd_body = vec![0x08, 0x02, 0x2a, sub_body.len() as u8];
    cmd_body.extend_from_slice(&sub_body);
    frame.push(cmd_body.len() as u8);
    frame.extend_from_slice(&cmd_body);
    frame.push(0x00);

    let cmds = Encoding::Protobuf.decode_commands(&frame).unwrap();
    assert_eq!(cmds.len(), 3);
    assert_eq!(cmds[0], first);
    assert_eq!(cmds[1].id, 2);
    assert_eq!(cmds[1].subscribe.as_ref().unwrap().channel, "c");
    assert_eq!(cmds[2].method(), Method::Pong);
}

#[test]
fn protobuf_rejects_truncated_frames_and_bad_varints() {
    let mut frame = Vec::new();
    let cmd = Command {
        id: 9,
        ..Command::default()
    };
    Encoding::Protobuf.encode_command(&cmd, &mut frame).unwrap();
    for cut in 1..frame.len() {
        assert!(
            matches!(
                Encoding::Protobuf.decode_commands(&frame[..cut]),
                Err(DecodeError::Truncated)
            ),
            "cut {cut}"
        );
    }
    assert!(matches!(
        Encoding::Protobuf.decode_commands(&[0x80]),
        Err(DecodeError::Truncated)
    ));
    assert!(matches!(
        Encoding::Protobuf.decode_commands(&[0xff; 11]),
        Err(DecodeError::InvalidVarint)
    ));
    // Length 2 body `08 80` ends inside the id varint.
    assert!(matches!(
        Encoding::Protobuf.decode_commands(&[0x02, 0x08, 0x80]),
        Err(DecodeError::Protobuf(_))
    ));
}

#[test]
fn varint_reader_handles_boundaries() {
    assert_eq!(read_varint(&[]).unwrap(), None);
    assert_eq!(read_varint(&[0x00]).unwrap(), Some((0, 1)));
    assert_eq!(read_varint(&[0xac, 0x02, 0xff]).unwrap(), Some((300, 2)));
    let max = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    assert_eq!(read_varint(&max).unwrap(), Some((u64::MAX, 10)));
    assert_eq!(read_varint(&max[..9]).unwrap(), None);
    let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
    assert!(read_varint(&overflow).is_err());
}

// === Delimited streams ===

#[test]
fn delimited_decoder_waits_for_complete_messages() {
    let cmd = Command {
        id: 5,
        publish: Some(PublishRequest {
            channel: "chan".into(),
            data: Bytes::from_static(b"\x00\x01\x02"),
            ..PublishRequest::default()
        }),
        ..Command::default()
    };
    let mut wire = BytesMut::new();
    encode_delimited_command(&cmd, &mut wire).unwrap();
    encode_delimited_command(&Command::default(), &mut wire).unwrap();
    let wire = wire.freeze();

    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in wire.iter() {
        buf.extend_from_slice(&[*byte]);
        while let Some(c) = decode_delimited_command(&mut buf, 1024).unwrap() {
            decoded.push(c);
        }
    }
    assert_eq!(decoded, vec![cmd, Command::default()]);
    assert!(buf.is_empty());
}

#[test]
fn delimited_decoder_enforces_the_limit_before_the_body_arrives() {
    let mut buf = BytesMut::from(&[0xac, 0x02][..]); // announces 300 bytes
    assert!(matches!(
        decode_delimited_command(&mut buf, 299),
        Err(DecodeError::TooLarge { len: 300, max: 299 })
    ));
    assert_eq!(decode_delimited_command(&mut buf, 300).unwrap(), None);
    assert_eq!(buf.len(), 2, "nothing consumed while incomplete");
    let mut huge =
        BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
    assert!(decode_delimited_reply(&mut huge, usize::MAX).is_err());
}

#[test]
fn an_announced_length_reserves_nothing_before_the_body_arrives() {
    let mut buf = BytesMut::from(&[0x80, 0x80, 0x04][..]); // announces 65,536 bytes
    assert_eq!(decode_delimited_command(&mut buf, 65_536).unwrap(), None);
    assert!(
        buf.capacity() < 1024,
        "three bytes made the buffer hold {}",
        buf.capacity()
    );
}

#[test]
fn delimited_replies_roundtrip() {
    let reply = Reply::from_error(3, ClientError::LIMIT_EXCEEDED);
    let mut buf = BytesMut::new();
    encode_delimited_reply(&reply, &mut buf).unwrap();
    encode_delimited_reply(&Reply::ping(), &mut buf).unwrap();
    assert_eq!(decode_delimited_reply(&mut buf, 64).unwrap(), Some(reply));
    assert_eq!(
        decode_delimited_reply(&mut buf, 64).unwrap(),
        Some(Reply::ping())
    );
    assert_eq!(decode_delimited_reply(&mut buf, 64).unwrap(), None);
}

// === Property tests ===

fn text() -> impl Strategy<Value = String> {
    "(?s).{0,6}"
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z0-9:#$_-]{0,10}"
}

/// Empty (absent) or a small compact JSON object, as clients and backends send.
fn json_data() -> impl Strategy<Value = Bytes> {
    let value = prop_oneof![
        any::<i32>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
    ];
    prop_oneof![
        1 => Just(Bytes::new()),
        3 => prop::collection::btree_map("[a-z]{1,4}", value, 0..4).prop_map(|m| {
            let object: serde_json::Map<_, _> = m.into_iter().collect();
            Bytes::from(serde_json::to_vec(&object).unwrap())
        }),
    ]
}

fn string_map() -> impl Strategy<Value = HashMap<String, String>> {
    prop::collection::hash_map(text(), text(), 0..3)
}

fn client_info() -> impl Strategy<Value = ClientInfo> {
    (text(), ident(), json_data(), json_data()).prop_map(|(user, client, conn_info, chan_info)| {
        ClientInfo {
            user,
            client,
            conn_info,
            chan_info,
        }
    })
}

fn publication() -> impl Strategy<Value = Publication> {
    (
        (json_data(), prop::option::of(client_info()), any::<u64>()),
        (string_map(), any::<bool>(), any::<i64>(), ident(), text()),
        (
            any::<bool>(),
            any::<i64>(),
            ident(),
            json_data(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (data, info, offset),
                (tags, delta, time, channel, key),
                (removed, score, epoch, prev_data, version),
            )| Publication {
                data,
                info,
                offset,
                tags,
                delta,
                time,
                channel,
                key,
                removed,
                score,
                epoch,
                prev_data,
                version,
            },
        )
}

fn subscribe_request() -> impl Strategy<Value = SubscribeRequest> {
    (
        (
            ident(),
            text(),
            any::<bool>(),
            ident(),
            any::<u64>(),
            json_data(),
        ),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            ident(),
            any::<i64>(),
        ),
        (
            any::<i32>(),
            any::<i32>(),
            text(),
            any::<i32>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (channel, token, recover, epoch, offset, data),
                (positioned, recoverable, join_leave, delta, flag),
                (r#type, phase, cursor, limit, asc),
            )| SubscribeRequest {
                channel,
                token,
                recover,
                epoch,
                offset,
                data,
                positioned,
                recoverable,
                join_leave,
                delta,
                flag,
                r#type,
                phase,
                cursor,
                limit,
                asc,
            },
        )
}

fn subscribe_result() -> impl Strategy<Value = SubscribeResult> {
    (
        (any::<bool>(), any::<u32>(), any::<bool>(), ident()),
        prop::collection::vec(publication(), 0..3),
        (
            any::<bool>(),
            any::<u64>(),
            any::<bool>(),
            json_data(),
            any::<bool>(),
        ),
        (
            any::<bool>(),
            any::<i64>(),
            any::<i32>(),
            any::<i32>(),
            text(),
            any::<u32>(),
        ),
    )
        .prop_map(
            |(
                (expires, ttl, recoverable, epoch),
                publications,
                (recovered, offset, positioned, data, was_recovering),
                (delta, id, r#type, phase, cursor, publish_debounce),
            )| SubscribeResult {
                expires,
                ttl,
                recoverable,
                epoch,
                publications,
                recovered,
                offset,
                positioned,
                data,
                was_recovering,
                delta,
                id,
                r#type,
                phase,
                cursor,
                publish_debounce,
            },
        )
}

fn connect_request() -> impl Strategy<Value = ConnectRequest> {
    (
        (text(), json_data()),
        prop::collection::hash_map(ident(), subscribe_request(), 0..2),
        (text(), text(), string_map(), any::<i64>(), text(), text()),
    )
        .prop_map(
            |((token, data), subs, (name, version, headers, flag, dict, profile))| ConnectRequest {
                token,
                data,
                subs,
                name,
                version,
                headers,
                flag,
                dict,
                profile,
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    use prop::option::of;
    (
        (any::<u32>(), of(connect_request()), of(subscribe_request())),
        (
            of(ident().prop_map(|channel| UnsubscribeRequest { channel })),
            of(
                (ident(), json_data(), any::<i32>(), text(), any::<bool>()).prop_map(
                    |(channel, data, r#type, key, removed)| PublishRequest {
                        channel,
                        data,
                        r#type,
                        key,
                        removed,
                    },
                ),
            ),
            of(ident().prop_map(|channel| PresenceRequest { channel })),
            of(ident().prop_map(|channel| PresenceStatsRequest { channel })),
        ),
        (
            of((
                ident(),
                any::<i32>(),
                of((any::<u64>(), ident())
                    .prop_map(|(offset, epoch)| StreamPosition { offset, epoch })),
                any::<bool>(),
            )
                .prop_map(|(channel, limit, since, reverse)| HistoryRequest {
                    channel,
                    limit,
                    since,
                    reverse,
                })),
            of(Just(PingRequest {})),
            of(json_data().prop_map(|data| SendRequest { data })),
            of((json_data(), text()).prop_map(|(data, method)| RpcRequest { data, method })),
            of(text().prop_map(|token| RefreshRequest { token })),
            of((ident(), text()).prop_map(|(channel, token)| SubRefreshRequest { channel, token })),
        ),
    )
        .prop_map(
            |(
                (id, connect, subscribe),
                (unsubscribe, publish, presence, presence_stats),
                (history, ping, send, rpc, refresh, sub_refresh),
            )| Command {
                id,
                connect,
                subscribe,
                unsubscribe,
                publish,
                presence,
                presence_stats,
                history,
                ping,
                send,
                rpc,
                refresh,
                sub_refresh,
            },
        )
}

fn push_message() -> impl Strategy<Value = Push> {
    use prop::option::of;
    (
        (any::<i64>(), ident(), of(publication())),
        (
            of(of(client_info()).prop_map(|info| Join { info })),
            of(of(client_info()).prop_map(|info| Leave { info })),
            of((any::<u32>(), text()).prop_map(|(code, reason)| Unsubscribe { code, reason })),
            of(json_data().prop_map(|data| Message { data })),
        ),
        (
            of((
                any::<bool>(),
                ident(),
                any::<u64>(),
                any::<bool>(),
                json_data(),
            )
                .prop_map(|(recoverable, epoch, offset, positioned, data)| Subscribe {
                    recoverable,
                    epoch,
                    offset,
                    positioned,
                    data,
                })),
            of((
                (ident(), text(), json_data()),
                prop::collection::hash_map(ident(), subscribe_result(), 0..2),
                (any::<bool>(), any::<u32>(), any::<u32>(), any::<bool>()),
                (text(), text(), any::<i64>()),
            )
                .prop_map(
                    |(
                        (client, version, data),
                        subs,
                        (expires, ttl, ping, pong),
                        (session, node, time),
                    )| Connect {
                        client,
                        version,
                        data,
                        subs,
                        expires,
                        ttl,
                        ping,
                        pong,
                        session,
                        node,
                        time,
                    },
                )),
            of(
                (any::<u32>(), text(), any::<bool>()).prop_map(|(code, reason, reconnect)| {
                    Disconnect {
                        code,
                        reason,
                        reconnect,
                    }
                }),
            ),
            of((any::<bool>(), any::<u32>()).prop_map(|(expires, ttl)| Refresh { expires, ttl })),
        ),
    )
        .prop_map(
            |(
                (id, channel, r#pub),
                (join, leave, unsubscribe, message),
                (subscribe, connect, disconnect, refresh),
            )| Push {
                id,
                channel,
                r#pub,
                join,
                leave,
                unsubscribe,
                message,
                subscribe,
                connect,
                disconnect,
                refresh,
            },
        )
}

fn connect_result() -> impl Strategy<Value = ConnectResult> {
    (
        (ident(), text(), any::<bool>(), any::<u32>(), json_data()),
        prop::collection::hash_map(ident(), subscribe_result(), 0..2),
        (
            any::<u32>(),
            any::<bool>(),
            text(),
            text(),
            any::<i64>(),
            any::<i64>(),
        ),
    )
        .prop_map(
            |(
                (client, version, expires, ttl, data),
                subs,
                (ping, pong, session, node, time, flag),
            )| {
                ConnectResult {
                    client,
                    version,
                    expires,
                    ttl,
                    data,
                    subs,
                    ping,
                    pong,
                    session,
                    node,
                    time,
                    flag,
                }
            },
        )
}

fn reply() -> impl Strategy<Value = Reply> {
    use prop::option::of;
    (
        (
            any::<u32>(),
            of(
                (any::<u32>(), text(), any::<bool>()).prop_map(|(code, message, temporary)| {
                    Error {
                        code,
                        message,
                        temporary,
                    }
                }),
            ),
            of(push_message()),
            of(connect_result()),
            of(subscribe_result()),
        ),
        (
            of(Just(UnsubscribeResult {})),
            of(Just(PublishResult {})),
            of(prop::collection::hash_map(ident(), client_info(), 0..3)
                .prop_map(|presence| PresenceResult { presence })),
            of(
                (any::<u32>(), any::<u32>()).prop_map(|(num_clients, num_users)| {
                    PresenceStatsResult {
                        num_clients,
                        num_users,
                    }
                }),
            ),
            of((
                prop::collection::vec(publication(), 0..3),
                ident(),
                any::<u64>(),
            )
                .prop_map(|(publications, epoch, offset)| HistoryResult {
                    publications,
                    epoch,
                    offset,
                })),
        ),
        (
            of(Just(PingResult {})),
            of(json_data().prop_map(|data| RpcResult { data })),
            of((ident(), text(), any::<bool>(), any::<u32>()).prop_map(
                |(client, version, expires, ttl)| RefreshResult {
                    client,
                    version,
                    expires,
                    ttl,
                },
            )),
            of((any::<bool>(), any::<u32>())
                .prop_map(|(expires, ttl)| SubRefreshResult { expires, ttl })),
        ),
    )
        .prop_map(
            |(
                (id, error, push, connect, subscribe),
                (unsubscribe, publish, presence, presence_stats, history),
                (ping, rpc, refresh, sub_refresh),
            )| Reply {
                id,
                error,
                push,
                connect,
                subscribe,
                unsubscribe,
                publish,
                presence,
                presence_stats,
                history,
                ping,
                rpc,
                refresh,
                sub_refresh,
            },
        )
}

/// A valid frame with a few random byte edits, to reach deeper into the decoders than
/// uniformly random bytes do.
fn mutated(encoding: Encoding) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(reply(), 1..3),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    )
        .prop_map(move |(replies, edits)| {
            let mut out = Vec::new();
            encoding.encode_replies(&replies, &mut out).unwrap();
            for (at, byte) in edits {
                let i = at.index(out.len());
                out[i] = byte;
            }
            out
        })
}

fn drain_delimited(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = decode_delimited_command(&mut buf, 1 << 16) {}
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(_)) = decode_delimited_reply(&mut buf, 1 << 16) {}
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn commands_roundtrip_in_both_encodings(cmds in prop::collection::vec(command(), 1..4)) {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let mut frame = Vec::new();
            encoding.encode_commands(&cmds, &mut frame).unwrap();
            prop_assert_eq!(&encoding.decode_commands(&frame).unwrap(), &cmds);
        }
    }

    #[test]
    fn replies_roundtrip_in_both_encodings(replies in prop::collection::vec(reply(), 1..4)) {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let mut frame = Vec::new();
            encoding.encode_replies(&replies, &mut frame).unwrap();
            prop_assert_eq!(&encoding.decode_replies(&frame).unwrap(), &replies);
        }
        let mut frame = Vec::new();
        Encoding::Json.encode_replies(&replies, &mut frame).unwrap();
        prop_assert!(std::str::from_utf8(&frame).is_ok());
        prop_assert_eq!(frame.iter().filter(|&&b| b == b'\n').count(), replies.len() - 1);
    }

    #[test]
    fn delimited_stream_roundtrips(replies in prop::collection::vec(reply(), 1..4), split in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for r in &replies {
            encode_delimited_reply(r, &mut wire).unwrap();
        }
        let at = split.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut decoded = Vec::new();
        while let Some(r) = decode_delimited_reply(&mut buf, usize::MAX).unwrap() {
            decoded.push(r);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(r) = decode_delimited_reply(&mut buf, usize::MAX).unwrap() {
            decoded.push(r);
        }
        prop_assert_eq!(decoded, replies);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn protobuf_carries_arbitrary_binary_data(data in prop::collection::vec(any::<u8>(), 0..32)) {
        let reply = Reply::from_push(Push {
            channel: "c".into(),
            r#pub: Some(Publication { data: data.into(), ..Publication::default() }),
            ..Push::default()
        });
        let mut frame = Vec::new();
        Encoding::Protobuf.encode_reply(&reply, &mut frame).unwrap();
        prop_assert_eq!(Encoding::Protobuf.decode_replies(&frame).unwrap(), vec![reply]);
    }

    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let _ = encoding.decode_commands(&bytes);
            let _ = encoding.decode_replies(&bytes);
        }
        drain_delimited(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_json(frame in mutated(Encoding::Json)) {
        let _ = Encoding::Json.decode_commands(&frame);
        let _ = Encoding::Json.decode_replies(&frame);
    }

    #[test]
    fn decoders_never_panic_on_mutated_protobuf(frame in mutated(Encoding::Protobuf)) {
        let _ = Encoding::Protobuf.decode_commands(&frame);
        let _ = Encoding::Protobuf.decode_replies(&frame);
        drain_delimited(&frame);
    }
}
