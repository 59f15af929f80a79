//! Unit and property tests of the frame reader and encoders.

use proptest::prelude::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Builds a client frame: raw first byte bits, masked with `MASK`.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    client_frame(if fin { 0x80 } else { 0 } | opcode.code(), payload)
}

/// The client-side masking helper: turns one of our (unmasked) server frames into the
/// masked frame a client would send with the same header.
fn mask_server_frame(server: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert_eq!(server[1] & 0x80, 0, "server frames are unmasked");
    let header_len = match server[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let mut out = server[..header_len].to_vec();
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    out.extend(
        server[header_len..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    out
}

fn limits() -> WsLimits {
    WsLimits {
        max_message_size: 1 << 20,
    }
}

fn decode_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    limits: &WsLimits,
) -> Result<Vec<WsEvent>, WsError> {
    let mut reader = WsReader::default();
    let mut out = Vec::new();
    for chunk in chunks {
        reader.feed(chunk, limits, &mut out)?;
    }
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Vec<WsEvent>, WsError> {
    decode_chunks([bytes], &limits())
}

fn text(s: &str) -> WsEvent {
    WsEvent::Message {
        binary: false,
        payload: Bytes::copy_from_slice(s.as_bytes()),
    }
}

fn binary(b: &[u8]) -> WsEvent {
    WsEvent::Message {
        binary: true,
        payload: Bytes::copy_from_slice(b),
    }
}

/// A stream exercising every event kind: fragmentation with a multi-byte char split across
/// fragments, a ping between fragments, 16- and 64-bit lengths, and a close.
fn mixed_stream(big_len: usize) -> (Vec<u8>, Vec<WsEvent>) {
    let euro = "€".as_bytes();
    let big = vec![0xABu8; big_len];
    let mid = vec![0x5Au8; 300];
    let mut s = Vec::new();
    s.extend(frame(true, Opcode::Text, b"hello"));
    s.extend(frame(false, Opcode::Text, &[b'a', euro[0]]));
    s.extend(frame(true, Opcode::Ping, b"p1"));
    s.extend(frame(false, Opcode::Continuation, &euro[1..]));
    s.extend(frame(true, Opcode::Continuation, b"z"));
    s.extend(frame(true, Opcode::Binary, &mid));
    s.extend(frame(true, Opcode::Binary, &big));
    s.extend(frame(true, Opcode::Text, b""));
    s.extend(frame(true, Opcode::Pong, b""));
    s.extend(frame(true, Opcode::Close, b"\x03\xe8bye"));
    let events = vec![
        text("hello"),
        WsEvent::Ping(Bytes::from_static(b"p1")),
        text("a€z"),
        binary(&mid),
        binary(&big),
        text(""),
        WsEvent::Pong(Bytes::new()),
        WsEvent::Close {
            code: Some(1000),
            reason: "bye".to_owned(),
        },
    ];
    (s, events)
}

#[test]
fn decodes_mixed_stream_in_one_read() {
    let (stream, events) = mixed_stream(70_000);
    assert_eq!(decode(&stream).unwrap(), events);
}

#[test]
fn decodes_identically_when_split_at_every_byte_boundary() {
    // Every two-way split of a stream with 7- and 16-bit lengths; the 64-bit length form is
    // covered by the byte-by-byte and 7-byte passes over the big stream below.
    let (small, small_events) = mixed_stream(700);
    for split in 0..=small.len() {
        let (a, b) = small.split_at(split);
        assert_eq!(
            decode_chunks([a, b], &limits()).unwrap(),
            small_events,
            "split at {split}"
        );
    }
    // Three-way splits around every header.
    for first in 0..40 {
        for second in first..small.len().min(first + 40) {
            let chunks = [&small[..first], &small[first..second], &small[second..]];
            assert_eq!(decode_chunks(chunks, &limits()).unwrap(), small_events);
        }
    }
    let (stream, events) = mixed_stream(70_000);
    assert_eq!(decode_chunks(stream.chunks(1), &limits()).unwrap(), events);
    assert_eq!(decode_chunks(stream.chunks(7), &limits()).unwrap(), events);
}

#[test]
fn round_trips_our_encoding_at_every_length_class() {
    for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let server = encode_message_frame(true, &payload);
        let client = mask_server_frame(&server, MASK);
        assert_eq!(
            decode(&client).unwrap(),
            vec![binary(&payload)],
            "len {len}"
        );
        // tungstenite agrees with our header.
        let mut cursor = std::io::Cursor::new(&server[..]);
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(length as usize, len);
        assert!(header.is_final);
        assert_eq!(header.opcode, OpCode::Data(Data::Binary));
        assert_eq!(header.mask, None);
        assert_eq!(&server[cursor.position() as usize..], &payload[..]);
    }
}

#[test]
fn encode_close_cuts_reason_on_a_char_boundary() {
    let reason = "é".repeat(100); // 200 bytes, two per char
    let frame = encode_close(3001, &reason);
    assert_eq!(frame[0], 0x88);
    let len = usize::from(frame[1]);
    assert!(len <= 125);
    assert_eq!(len, 2 + 122);
    let events = decode(&mask_server_frame(&frame, MASK)).unwrap();
    assert_eq!(
        events,
        vec![WsEvent::Close {
            code: Some(3001),
            reason: "é".repeat(61),
        }]
    );
    let short = encode_close(1000, "ok");
    assert_eq!(&short[..], b"\x88\x04\x03\xe8ok");
}

#[test]
fn protocol_errors_carry_their_close_codes() {
    let cases: Vec<(Vec<u8>, WsError)> = vec![
        (
            {
                let mut f = frame(true, Opcode::Text, b"hi");
                f[1] &= 0x7F;
                f
            },
            WsError::UnmaskedFrame,
        ),
        (client_frame(0x80 | 0x40 | 0x1, b"x"), WsError::ReservedBits),
        (client_frame(0x80 | 0x20 | 0x2, b""), WsError::ReservedBits),
        (client_frame(0x80 | 0x10 | 0x9, b""), WsError::ReservedBits),
        (client_frame(0x83, b""), WsError::ReservedOpcode(3)),
        (client_frame(0x87, b""), WsError::ReservedOpcode(7)),
        (client_frame(0x8B, b""), WsError::ReservedOpcode(0xB)),
        (client_frame(0x8F, b""), WsError::ReservedOpcode(0xF)),
        (
            frame(false, Opcode::Ping, b""),
            WsError::FragmentedControlFrame,
        ),
        (
            frame(true, Opcode::Ping, &[0; 126]),
            WsError::OversizedControlFrame,
        ),
        (
            frame(true, Opcode::Continuation, b"x"),
            WsError::UnexpectedContinuation,
        ),
        (
            [
                frame(false, Opcode::Text, b"a"),
                frame(true, Opcode::Text, b"b"),
            ]
            .concat(),
            WsError::ExpectedContinuation,
        ),
        (
            {
                let mut f = vec![0x82, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 63).to_be_bytes());
                f.extend_from_slice(&MASK);
                f
            },
            WsError::InvalidPayloadLength,
        ),
        (
            frame(true, Opcode::Close, b"\x03"),
            WsError::TruncatedCloseCode,
        ),
    ];
    for (bytes, err) in cases {
        assert_eq!(decode(&bytes), Err(err), "{bytes:02x?}");
        assert_eq!(err.close_code(), 1002);
    }
}

#[test]
fn close_codes_are_validated_per_rfc() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1012, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        let f = frame(true, Opcode::Close, &code.to_be_bytes());
        assert_eq!(decode(&f), Err(WsError::InvalidCloseCode(code)), "{code}");
    }
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let f = frame(true, Opcode::Close, &code.to_be_bytes());
        assert_eq!(
            decode(&f).unwrap(),
            vec![WsEvent::Close {
                code: Some(code),
                reason: String::new()
            }],
            "{code}"
        );
    }
    assert_eq!(
        decode(&frame(true, Opcode::Close, b"")).unwrap(),
        vec![WsEvent::Close {
            code: None,
            reason: String::new()
        }]
    );
    let bad_reason = frame(true, Opcode::Close, b"\x03\xe8\xff");
    assert_eq!(decode(&bad_reason), Err(WsError::InvalidCloseReason));
    assert_eq!(WsError::InvalidCloseReason.close_code(), 1007);
}

#[test]
fn invalid_utf8_fails_with_1007() {
    let f = frame(true, Opcode::Text, b"ok\xc0\xafno");
    assert_eq!(decode(&f), Err(WsError::InvalidUtf8));
    assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
    // A message ending in the middle of a sequence.
    let f = frame(true, Opcode::Text, &"€".as_bytes()[..2]);
    assert_eq!(decode(&f), Err(WsError::InvalidUtf8));
    // Binary is not checked.
    assert_eq!(
        decode(&frame(true, Opcode::Binary, b"\xff")).unwrap(),
        vec![binary(b"\xff")]
    );
}

#[test]
fn invalid_utf8_fails_fast_before_the_message_ends() {
    let mut reader = WsReader::default();
    let mut out = Vec::new();
    // First fragment already invalid: rejected before the final fragment arrives.
    let first = frame(false, Opcode::Text, b"abc\xed\xa0\x80");
    assert_eq!(
        reader.feed(&first, &limits(), &mut out),
        Err(WsError::InvalidUtf8)
    );
    // Inside one frame: rejected as soon as the bad byte arrives, before the frame ends.
    let mut reader = WsReader::default();
    let whole = frame(true, Opcode::Text, b"abcd\xff and much more text after it");
    assert_eq!(
        reader.feed(&whole[..6 + 5], &limits(), &mut out),
        Err(WsError::InvalidUtf8)
    );
    assert!(out.is_empty());
    // A valid sequence split across fragments and reads is accepted.
    let euro = "€".as_bytes();
    let stream = [
        frame(false, Opcode::Text, &euro[..1]),
        frame(false, Opcode::Continuation, &euro[1..2]),
        frame(true, Opcode::Continuation, &euro[2..]),
    ]
    .concat();
    assert_eq!(
        decode_chunks(stream.chunks(1), &limits()).unwrap(),
        vec![text("€")]
    );
}

#[test]
fn size_limit_is_checked_from_the_header_before_buffering() {
    let limits = WsLimits {
        max_message_size: 1000,
    };
    let f = frame(true, Opcode::Binary, &[0; 1001]);
    let mut reader = WsReader::default();
    let mut out = Vec::new();
    // Only the header (2 + 2 + 4 bytes) is fed: the error comes before any payload.
    let err = reader.feed(&f[..8], &limits, &mut out).unwrap_err();
    assert_eq!(
        err,
        WsError::MessageTooBig {
            size: 1001,
            limit: 1000
        }
    );
    assert_eq!(err.close_code(), 1009);
    assert_eq!(reader.capacity(), 0);

    // The limit applies to the assembled message, across fragments.
    let stream = [
        frame(false, Opcode::Text, &[b'a'; 600]),
        frame(true, Opcode::Continuation, &[b'b'; 401]),
    ]
    .concat();
    assert_eq!(
        decode_chunks([&stream[..]], &limits),
        Err(WsError::MessageTooBig {
            size: 1001,
            limit: 1000
        })
    );
    // Exactly at the limit is fine.
    let stream = [
        frame(false, Opcode::Text, &[b'a'; 600]),
        frame(true, Opcode::Continuation, &[b'b'; 400]),
    ]
    .concat();
    assert_eq!(decode_chunks([&stream[..]], &limits).unwrap().len(), 1);
    // A huge 64-bit length is refused without allocating.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    huge.extend_from_slice(&MASK);
    assert!(matches!(decode(&huge), Err(WsError::MessageTooBig { .. })));
}

#[test]
fn idle_reader_is_small_and_holds_no_buffer() {
    assert!(
        std::mem::size_of::<WsReader>() <= 96,
        "WsReader grew to {} bytes",
        std::mem::size_of::<WsReader>()
    );
    let (stream, _) = mixed_stream(70_000);
    let mut reader = WsReader::default();
    let mut out = Vec::new();
    // Feed all but the close frame in awkward pieces; between messages nothing is held.
    let end = stream.len() - 11;
    for chunk in stream[..end].chunks(333) {
        reader.feed(chunk, &limits(), &mut out).unwrap();
    }
    assert_eq!(reader.buffered(), 0);
    assert_eq!(reader.capacity(), 0);
    // Mid-frame, the partial payload is buffered and counted.
    let f = frame(true, Opcode::Binary, &[1; 200]);
    reader.feed(&f[..100], &limits(), &mut out).unwrap();
    assert_eq!(reader.buffered(), 100 - 8);
    reader.feed(&f[100..], &limits(), &mut out).unwrap();
    assert_eq!(reader.buffered(), 0);
    assert_eq!(reader.capacity(), 0);
    // A split header is counted too.
    reader.feed(&f[..3], &limits(), &mut out).unwrap();
    assert_eq!(reader.buffered(), 3);
    // A header announcing a large frame reserves nothing until the payload arrives.
    let mut reader = WsReader::default();
    let big = frame(true, Opcode::Binary, &[0; 60_000]);
    reader.feed(&big[..8], &limits(), &mut out).unwrap();
    assert_eq!(reader.capacity(), 0);
    reader.feed(&big[8..108], &limits(), &mut out).unwrap();
    assert!(reader.capacity() < 1000, "{}", reader.capacity());
}

#[test]
fn input_after_close_or_error_is_ignored() {
    let stream = [
        frame(true, Opcode::Close, b"\x03\xe8"),
        frame(true, Opcode::Text, b"late"),
    ]
    .concat();
    let events = decode(&stream).unwrap();
    assert_eq!(events.len(), 1);
    let mut reader = WsReader::default();
    let mut out = Vec::new();
    assert!(
        reader
            .feed(&client_frame(0x83, b""), &limits(), &mut out)
            .is_err()
    );
    assert!(reader.is_closed());
    reader
        .feed(&frame(true, Opcode::Text, b"x"), &limits(), &mut out)
        .unwrap();
    assert!(out.is_empty());
}

/// A masked client frame made by tungstenite, the reference implementation.
fn tungstenite_frame(opcode: OpCode, payload: &[u8], fin: bool, mask: [u8; 4]) -> Vec<u8> {
    let header = FrameHeader {
        is_final: fin,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    };
    let frame = Frame::from_payload(header, Bytes::copy_from_slice(payload));
    let mut out = Vec::new();
    frame.format(&mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
        max in 0usize..4096,
    ) {
        let limits = WsLimits { max_message_size: max };
        let mut reader = WsReader::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            if reader.feed(piece, &limits, &mut out).is_err() {
                prop_assert_eq!(reader.capacity(), 0);
                break;
            }
        }
        prop_assert!(reader.buffered() <= 14 + max + 125);
    }

    #[test]
    fn arbitrary_masked_frames_never_panic(
        first in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        chunk in 1usize..17,
    ) {
        let bytes = client_frame(first, &payload);
        let mut reader = WsReader::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            if reader.feed(piece, &limits(), &mut out).is_err() {
                break;
            }
        }
    }

    #[test]
    fn round_trips_through_tungstenite_frames_with_any_chunking(
        fragments in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..400), 1..5),
        is_binary in any::<bool>(),
        mask in any::<[u8; 4]>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ping in proptest::collection::vec(any::<u8>(), 0..125),
    ) {
        // Text payloads must be UTF-8 as a whole; use a lossy conversion of the bytes.
        let fragments: Vec<Vec<u8>> = if is_binary {
            fragments
        } else {
            fragments.iter().map(|f| String::from_utf8_lossy(f).into_owned().into_bytes()).collect()
        };
        let whole: Vec<u8> = fragments.concat();
        let mut stream = Vec::new();
        let last = fragments.len() - 1;
        for (i, f) in fragments.iter().enumerate() {
            let opcode = match (i, is_binary) {
                (0, true) => OpCode::Data(Data::Binary),
                (0, false) => OpCode::Data(Data::Text),
                _ => OpCode::Data(Data::Continue),
            };
            if i == last {
                // Between fragments when there are several.
                stream.extend(tungstenite_frame(OpCode::Control(Control::Ping), &ping, true, mask));
            }
            stream.extend(tungstenite_frame(opcode, f, i == last, mask));
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut at = 0;
        for p in points {
            chunks.push(&stream[at..p]);
            at = p;
        }
        chunks.push(&stream[at..]);
        let events = decode_chunks(chunks, &limits()).unwrap();
        let message = WsEvent::Message { binary: is_binary, payload: Bytes::from(whole) };
        prop_assert_eq!(events, vec![WsEvent::Ping(Bytes::from(ping)), message]);
    }

    #[test]
    fn our_frames_round_trip_through_the_masking_helper(
        payload in proptest::collection::vec(any::<u8>(), 0..70_000),
        mask in any::<[u8; 4]>(),
        split in any::<usize>(),
    ) {
        let server = encode_message_frame(true, &payload);
        let client = mask_server_frame(&server, mask);
        let split = split % (client.len() + 1);
        let (a, b) = client.split_at(split);
        let events = decode_chunks([a, b], &limits()).unwrap();
        prop_assert_eq!(events, vec![WsEvent::Message { binary: true, payload: Bytes::from(payload) }]);
    }
}

#[test]
fn a_message_in_more_fragments_than_the_limit_fails_with_1008() {
    let limits = WsLimits::default();
    let cap = limits.max_fragments();
    assert_eq!(cap, 1024, "64 KiB in 64-byte fragments");
    assert_eq!(
        WsLimits {
            max_message_size: 16 << 20
        }
        .max_fragments(),
        (16 << 20) / 64
    );
    // Exactly the limit, empty fragments included: one message.
    let mut ok = frame(false, Opcode::Text, b"a");
    for _ in 1..cap - 1 {
        ok.extend(frame(false, Opcode::Continuation, b""));
    }
    ok.extend(frame(true, Opcode::Continuation, b"z"));
    assert_eq!(decode_chunks([&ok[..]], &limits), Ok(vec![text("az")]));
    // One more: the connection fails, long before the stream ends.
    let mut flood = frame(false, Opcode::Binary, b"");
    for _ in 0..100_000 {
        flood.extend(frame(false, Opcode::Continuation, b""));
    }
    let error = decode_chunks([&flood[..]], &limits).expect_err("too many fragments");
    assert_eq!(error, WsError::TooManyFragments { limit: cap });
    assert_eq!(error.close_code(), 1008);
    // The count starts again with each message.
    let mut two = ok.clone();
    two.extend(ok);
    assert_eq!(decode_chunks([&two[..]], &limits).map(|e| e.len()), Ok(2));
}
