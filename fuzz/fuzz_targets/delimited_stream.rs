//! The raw TCP framing: `decode_delimited_command` fed a stream in arbitrary chunkings yields
//! exactly what it yields for the whole stream at once, never consumes bytes on `Ok(None)`,
//! and refuses a length over the limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether_fuzz::{chunks, split_plan};
use tether_proto::{Command, decode_delimited_command};

/// Small, so the limit is hit often.
const MAX_LEN: usize = 512;

#[derive(Debug, PartialEq)]
enum End {
    NeedMore,
    Failed,
}

fn drain(buf: &mut BytesMut, out: &mut Vec<Command>) -> End {
    loop {
        let before = buf.len();
        match decode_delimited_command(buf, MAX_LEN) {
            Ok(Some(command)) => {
                assert!(buf.len() < before, "a decoded command consumed nothing");
                out.push(command);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return End::NeedMore;
            }
            Err(_) => return End::Failed,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (plan, payload) = split_plan(data);

    let mut whole = BytesMut::from(payload);
    let mut expected = Vec::new();
    let expected_end = drain(&mut whole, &mut expected);

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut end = End::NeedMore;
    for chunk in chunks(plan, payload) {
        buf.extend_from_slice(chunk);
        end = drain(&mut buf, &mut got);
        if end == End::Failed {
            break;
        }
    }
    assert_eq!(end, expected_end);
    assert_eq!(got, expected);
    if end == End::NeedMore {
        // What is left is one incomplete message, under the limit plus its prefix.
        assert!(buf.len() <= MAX_LEN + 10, "buffered {} bytes", buf.len());
    }
});
