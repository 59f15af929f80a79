//! A minimal RFC 6455 client codec: the upgrade request, masked outbound frames and a parser
//! for the (unmasked) frames a server sends.
//!
//! Only what a load generator needs: text/binary messages, continuation, ping/pong and close.
//! No extensions (permessage-deflate is never offered). The client owns no buffer of its own;
//! callers pass byte slices in and get borrowed frames out, so an idle connection costs only
//! its socket.

use std::fmt::Write as _;

/// Largest frame payload the parser accepts (a benchmark never needs more).
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Continuation of a fragmented message.
    Continuation,
    /// UTF-8 text.
    Text,
    /// Binary.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0,
            Self::Text => 1,
            Self::Binary => 2,
            Self::Close => 8,
            Self::Ping => 9,
            Self::Pong => 10,
        }
    }
}

/// One parsed server frame, borrowing its payload from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// FIN bit: last frame of a message.
    pub fin: bool,
    /// Opcode.
    pub opcode: Opcode,
    /// Payload (unmasked).
    pub payload: &'a [u8],
}

/// Why a server frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Reserved opcode.
    #[error("unknown opcode {0}")]
    Opcode(u8),
    /// A server frame had the mask bit set.
    #[error("masked server frame")]
    Masked,
    /// Payload above [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes is too large")]
    TooLarge(u64),
}

/// Parses one frame from the start of `buf`: `Ok(None)` when more bytes are needed, otherwise
/// the frame and the number of bytes it used.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(FrameError::Opcode(b0 & 0x0f))?;
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (len, head) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                (u64::from_be_bytes(a), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_PAYLOAD)
        .ok_or(FrameError::TooLarge(len))?;
    let Some(payload) = buf.get(head..head + len) else {
        return Ok(None);
    };
    let frame = Frame {
        fin: b0 & 0x80 != 0,
        opcode,
        payload,
    };
    Ok(Some((frame, head + len)))
}

/// Appends one complete, masked client frame to `out`. `mask` is the 4-byte masking key.
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode.bits());
    let len = payload.len();
    if len < 126 {
        // Fits in 7 bits by the branch condition.
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A cheap per-process mask generator (xorshift). Masking protects intermediaries from
/// cache poisoning, which is not a concern on loopback; servers only require that it is there.
#[derive(Debug, Clone)]
pub struct Masker(u32);

impl Masker {
    /// Seeds the generator (0 is replaced by a fixed odd value).
    pub fn new(seed: u32) -> Self {
        Self(if seed == 0 { 0x9e37_79b9 } else { seed })
    }

    /// Next masking key.
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_le_bytes()
    }
}

/// The HTTP/1.1 upgrade request for `path` on `host`, with an optional subprotocol.
pub fn upgrade_request(host: &str, path: &str, key_seed: u64) -> String {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(key_seed.to_le_bytes().repeat(2));
    let mut req = String::with_capacity(256 + path.len());
    // Writing to a String cannot fail.
    let _ = write!(
        req,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    req
}

/// Result of looking at the bytes received after sending the upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// The response head is not complete yet.
    Partial,
    /// `101 Switching Protocols`; the head used this many bytes (frames may follow).
    Switched(usize),
    /// Any other status.
    Refused(u16),
}

/// Parses the server's upgrade response.
pub fn parse_upgrade_response(buf: &[u8]) -> Result<Upgrade, httparse::Error> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf)? {
        httparse::Status::Partial => Ok(Upgrade::Partial),
        httparse::Status::Complete(n) => match resp.code {
            Some(101) => Ok(Upgrade::Switched(n)),
            code => Ok(Upgrade::Refused(code.unwrap_or(0))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        let (len, head) = match frame[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => (
                usize::try_from(u64::from_be_bytes(frame[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            n => (usize::from(n), 2),
        };
        let mask = &frame[head..head + 4];
        let data = frame[head + 4..head + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        (frame[0], data)
    }

    #[test]
    fn encodes_masked_frames_of_every_length_class() {
        let mut m = Masker::new(7);
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_frame(&mut out, Opcode::Binary, &payload, m.next_key());
            assert_eq!(out[1] & 0x80, 0x80, "mask bit set");
            let (b0, data) = unmask(&out);
            assert_eq!(b0, 0x82);
            assert_eq!(data, payload, "len {len}");
        }
    }

    #[test]
    fn parses_server_frames_and_asks_for_more() {
        let mut buf = vec![0x81, 5];
        buf.extend_from_slice(b"hello");
        buf.extend_from_slice(&[0x89, 0]);
        let (f, n) = parse_frame(&buf).unwrap().unwrap();
        assert_eq!(
            (f.fin, f.opcode, f.payload, n),
            (true, Opcode::Text, &b"hello"[..], 7)
        );
        let (f, n) = parse_frame(&buf[7..]).unwrap().unwrap();
        assert_eq!((f.opcode, n), (Opcode::Ping, 2));
        assert_eq!(parse_frame(&buf[..4]).unwrap(), None);
        assert_eq!(parse_frame(&buf[..1]).unwrap(), None);

        let mut long = vec![0x02, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(9u8, 256));
        let (f, n) = parse_frame(&long).unwrap().unwrap();
        assert_eq!(
            (f.fin, f.opcode, f.payload.len(), n),
            (false, Opcode::Binary, 256, 260)
        );
        assert_eq!(parse_frame(&long[..100]).unwrap(), None);
    }

    #[test]
    fn refuses_bad_server_frames() {
        assert_eq!(parse_frame(&[0x83, 0]), Err(FrameError::Opcode(3)));
        assert_eq!(
            parse_frame(&[0x81, 0x81, 0, 0, 0, 0, 0]),
            Err(FrameError::Masked)
        );
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse_frame(&huge), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn reads_upgrade_responses() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        assert_eq!(
            parse_upgrade_response(ok).unwrap(),
            Upgrade::Switched(ok.len() - 2)
        );
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 101 Switch").unwrap(),
            Upgrade::Partial
        );
        assert_eq!(
            parse_upgrade_response(b"HTTP/1.1 503 Busy\r\n\r\n").unwrap(),
            Upgrade::Refused(503)
        );
        let req = upgrade_request("127.0.0.1:1", "/x?y=1", 3);
        assert!(req.starts_with("GET /x?y=1 HTTP/1.1\r\n"));
        assert!(req.ends_with("\r\n\r\n"));
    }
}
