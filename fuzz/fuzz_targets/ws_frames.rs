//! The RFC 6455 frame reader: `WsReader::feed` with arbitrary chunk splits and a small size
//! limit emits the same events and the same error as one feed of the whole input, keeps its
//! buffer within the limit, and ignores input after a close or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_fuzz::{chunks, split_plan};
use tether_server::wire::ws::{WsEvent, WsLimits, WsReader};

/// Small, so `MessageTooBig` is reachable by the fuzzer.
const LIMIT: usize = 256;
/// A header is at most 14 bytes, a control payload at most 125.
const MAX_BUFFERED: usize = LIMIT + 125 + 14;

fuzz_target!(|data: &[u8]| {
    let limits = WsLimits {
        max_message_size: LIMIT,
    };
    let (plan, payload) = split_plan(data);

    let mut whole = WsReader::default();
    let mut expected = Vec::new();
    let expected_result = whole.feed(payload, &limits, &mut expected);

    let mut reader = WsReader::default();
    let mut got: Vec<WsEvent> = Vec::new();
    let mut result = Ok(());
    for chunk in chunks(plan, payload) {
        result = reader.feed(chunk, &limits, &mut got);
        assert!(
            reader.buffered() <= MAX_BUFFERED,
            "buffered {} bytes",
            reader.buffered()
        );
        if result.is_err() {
            assert!(reader.is_closed());
            assert_eq!(reader.buffered(), 0, "a failed reader keeps no buffer");
            break;
        }
    }
    assert_eq!(result, expected_result);
    assert_eq!(got, expected);
    assert_eq!(reader.is_closed(), whole.is_closed());
    for event in &got {
        match event {
            WsEvent::Message { binary, payload } => {
                assert!(payload.len() <= LIMIT);
                if !binary {
                    assert!(
                        std::str::from_utf8(payload).is_ok(),
                        "text message not utf-8"
                    );
                }
            }
            WsEvent::Ping(p) | WsEvent::Pong(p) => assert!(p.len() <= 125),
            WsEvent::Close { reason, .. } => assert!(reason.len() <= 123),
        }
    }
    if reader.is_closed() {
        let mut after = Vec::new();
        assert_eq!(reader.feed(payload, &limits, &mut after), Ok(()));
        assert!(after.is_empty(), "a closed reader emitted events");
    }
});
