//! The HTTP upgrade: `parse_request_head` on every prefix the driver might see, then
//! `check_upgrade` and the helpers the driver calls on what it returns.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_server::transport::handshake::{
    HandshakeLimits, check_upgrade, error_response, parse_request_head, upgrade_response,
};

fuzz_target!(|data: &[u8]| {
    let limits = HandshakeLimits {
        max_head_bytes: 1024,
        max_headers: 16,
    };
    // The driver re-parses a growing buffer; a prefix that is complete stays complete.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    if let Ok(Some((_, consumed))) = parse_request_head(&data[..cut], &limits) {
        assert!(consumed <= cut);
        assert!(matches!(parse_request_head(data, &limits), Ok(Some((_, c))) if c == consumed));
    }
    match parse_request_head(data, &limits) {
        Ok(Some((head, consumed))) => {
            assert!(consumed <= data.len() && consumed <= limits.max_head_bytes);
            assert!(head.headers.len() <= limits.max_headers);
            let _ = head.query_param("cf_protocol");
            let _ = head.query_param("format");
            match check_upgrade(&head) {
                Ok(upgrade) => {
                    let protocol = upgrade.offered_protocols.first().map(String::as_str);
                    let response = upgrade_response(&upgrade.accept, protocol);
                    assert!(response.starts_with(b"HTTP/1.1 101"));
                    // No header injection: the head ends exactly once, at the end.
                    let ends = response.windows(4).filter(|w| w == b"\r\n\r\n").count();
                    assert_eq!(ends, 1);
                    assert!(response.ends_with(b"\r\n\r\n"));
                }
                Err(err) => {
                    let response = error_response(err.status(), &err.to_string());
                    assert!(response.starts_with(b"HTTP/1.1 4"));
                }
            }
        }
        Ok(None) => assert!(data.len() < limits.max_head_bytes),
        Err(err) => {
            let _ = error_response(err.status(), &err.to_string());
        }
    }
});
