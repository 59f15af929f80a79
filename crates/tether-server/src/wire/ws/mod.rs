//! Our RFC 6455 server codec: a sans-IO frame reader and unmasked frame encoders.
//!
//! The codec does no I/O and knows nothing of tokio. The connection driver waits for
//! readiness, reads into a per-worker scratch buffer and hands the bytes to
//! [`WsReader::feed`], which decodes every complete frame into [`WsEvent`]s. Only bytes of an
//! incomplete frame or of an unfinished fragmented message are copied into the reader, and
//! they are released as soon as the frame or message completes, so an idle connection holds
//! no buffer: an idle [`WsReader`] is a handful of words with two empty `Vec`s.
//!
//! Server frames are never masked (RFC 6455 §5.1), so a publication is encoded once with
//! [`encode_frame`] or [`encode_message_frame`] and the same `Bytes` is written to every
//! subscriber.
//!
//! What the reader enforces (each violation is a [`WsError`] carrying its close code):
//!
//! - client frames are masked; reserved bits are clear (we negotiate no extension); opcodes
//!   are known (1002);
//! - control frames carry at most 125 bytes and are never fragmented, and may arrive between
//!   the fragments of a data message (1002);
//! - continuation frames continue a message, and a new message does not start inside another
//!   (1002); 64-bit lengths have the most significant bit clear (1002);
//! - close payloads are empty or hold a valid code (§7.4) and a UTF-8 reason (1002 / 1007);
//! - text messages are valid UTF-8, checked incrementally so a bad byte fails the connection
//!   as soon as it arrives, even in the middle of a frame (1007);
//! - an assembled message never exceeds [`WsLimits::max_message_size`], checked from the frame
//!   header before any of the payload is buffered (1009).
//!
//! After a close frame or an error the reader ignores further input: the driver answers
//! with a close frame of its own and shuts the connection down.

use bytes::{BufMut, Bytes, BytesMut};

#[cfg(test)]
mod tests;

/// Limits applied while decoding client frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsLimits {
    /// Largest assembled message (all fragments together) accepted from a client, in bytes.
    /// A larger message fails the connection with close code 1009 before it is buffered.
    pub max_message_size: usize,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            // Centrifugo's `websocket.message_size_limit` default; both SDKs treat the 1009
            // close it causes as terminal.
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// Default for [`WsLimits::max_message_size`]: 64 KiB, as Centrifugo.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65536;

/// The smallest fragment a client is expected to cut a message into, for
/// [`WsLimits::max_fragments`].
const MIN_FRAGMENT: usize = 64;

impl WsLimits {
    /// Most frames one data message may arrive in: as many as a message of the largest size
    /// cut into 64-byte fragments (1,024 at the default 64 KiB), and never fewer than that.
    /// Without a bound, a client could keep one message open forever with empty
    /// continuation frames, each costing the server a header's work and no progress.
    #[must_use]
    pub fn max_fragments(&self) -> u32 {
        let by_size = self.max_message_size / MIN_FRAGMENT;
        let floor = DEFAULT_MAX_MESSAGE_SIZE / MIN_FRAGMENT;
        u32::try_from(by_size.max(floor)).unwrap_or(u32::MAX)
    }
}

/// A WebSocket frame opcode (RFC 6455 §5.2). Reserved opcodes are rejected, not represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x0: a further fragment of a data message.
    Continuation,
    /// 0x1: the first frame of a UTF-8 text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: the close handshake.
    Close,
    /// 0x9: a ping, answered with a pong carrying the same payload.
    Ping,
    /// 0xA: a pong.
    Pong,
}

/// Something a client said, decoded from one or more complete frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A complete data message, reassembled from its fragments and unmasked. A text
    /// message's payload is valid UTF-8.
    Message {
        /// Whether the message was sent as binary (`true`) or text (`false`).
        binary: bool,
        /// The message bytes.
        payload: Bytes,
    },
    /// A ping; the driver answers with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (solicited or not).
    Pong(Bytes),
    /// The client started or answered the close handshake. Input after it is ignored.
    Close {
        /// The close code, absent when the close frame had an empty payload.
        code: Option<u16>,
        /// The close reason (UTF-8, at most 123 bytes).
        reason: String,
    },
}

/// Why the reader failed the connection. Each variant maps to a close code with
/// [`WsError::close_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A client frame carried no masking key (RFC 6455 §5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// RSV1, RSV2 or RSV3 was set, but no extension was negotiated.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// The opcode is one of the reserved values 0x3–0x7 or 0xB–0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A control frame had FIN clear.
    #[error("control frame is fragmented")]
    FragmentedControlFrame,
    /// A control frame declared a payload longer than 125 bytes.
    #[error("control frame payload longer than 125 bytes")]
    OversizedControlFrame,
    /// A continuation frame arrived while no fragmented message was in progress.
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A text or binary frame arrived while a fragmented message was still in progress.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A 64-bit payload length had its most significant bit set.
    #[error("payload length has the most significant bit set")]
    InvalidPayloadLength,
    /// A close frame had a payload of exactly one byte.
    #[error("close frame payload of one byte")]
    TruncatedCloseCode,
    /// A close frame carried a code that may not be sent on the wire (RFC 6455 §7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A text message was not valid UTF-8.
    #[error("text message is not valid utf-8")]
    InvalidUtf8,
    /// A close reason was not valid UTF-8.
    #[error("close reason is not valid utf-8")]
    InvalidCloseReason,
    /// A data message arrived in more frames than [`WsLimits::max_fragments`].
    #[error("message in more than {limit} fragments")]
    TooManyFragments {
        /// The limit in force.
        limit: u32,
    },
    /// The assembled message would exceed [`WsLimits::max_message_size`].
    #[error("message of at least {size} bytes exceeds the limit of {limit}")]
    MessageTooBig {
        /// Bytes the message would hold with the frame just announced.
        size: u64,
        /// The limit in force.
        limit: usize,
    },
}

/// Decodes client frames, sans-IO.
///
/// Feed it whatever the socket returned; it emits complete events and keeps only the bytes
/// of an unfinished frame or fragmented message. Buffers are moved out (into the emitted
/// `Bytes`) when a frame completes, so an idle reader owns no heap memory.
#[derive(Debug, Default)]
pub struct WsReader {
    /// The frame whose payload is being read; `None` while a header is (being) read.
    frame: Option<FrameInProgress>,
    /// Unmasked bytes of the data message being assembled. Empty without capacity while no
    /// data frame is in progress; it grows only with payload that arrived, and only after
    /// the frame header passed the size limit.
    message: Vec<u8>,
    /// Unmasked payload of the control frame being read (at most 125 bytes). Kept apart from
    /// `message` because control frames may arrive between fragments.
    control: Vec<u8>,
    /// Bytes of a frame header split across reads; `header_len` of them are valid.
    header: [u8; MAX_HEADER_LEN],
    /// Valid bytes in `header`.
    header_len: u8,
    /// Frames of the data message in progress so far.
    fragments: u32,
    /// The kind of the data message in `message`, `None` when no message is in progress.
    message_kind: Option<MessageKind>,
    /// Length of the trailing incomplete UTF-8 sequence of a text `message` (0..=3): every
    /// byte before it has been validated, so each byte is checked about once.
    utf8_pending: u8,
    /// Set after a close frame or an error; later input is ignored.
    closed: bool,
}

/// The header of the frame whose payload is being read.
#[derive(Clone, Copy, Debug)]
struct FrameInProgress {
    /// Payload bytes still to come.
    remaining: u64,
    /// The client's masking key.
    mask: [u8; 4],
    /// Payload bytes already unmasked, modulo 4: where in `mask` the next byte starts.
    mask_offset: u8,
    opcode: Opcode,
    fin: bool,
}

/// Kind of a data message, fixed by its first frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageKind {
    Text,
    Binary,
}

// === impl WsReader ===

impl WsReader {
    /// Feeds bytes just read from the socket; pushes complete events into `out`.
    ///
    /// Partial frames and fragmented messages are kept inside (copied out of `input`); an
    /// idle reader holds none. On error the reader drops its buffers and ignores further
    /// input: the caller sends a close frame with [`WsError::close_code`] and closes. Input
    /// after a close frame is ignored as well.
    pub fn feed(
        &mut self,
        input: &[u8],
        limits: &WsLimits,
        out: &mut Vec<WsEvent>,
    ) -> Result<(), WsError> {
        if self.closed {
            return Ok(());
        }
        let result = self.decode(input, limits, out);
        if result.is_err() {
            *self = Self {
                closed: true,
                ..Self::default()
            };
        }
        result
    }

    /// Bytes currently buffered for an incomplete frame or message (for accounting/limits).
    #[must_use]
    pub fn buffered(&self) -> usize {
        usize::from(self.header_len) + self.message.len() + self.control.len()
    }

    /// Heap bytes reserved by the reader (capacity, not length); zero when idle.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.message.capacity() + self.control.capacity()
    }

    /// Whether the reader has seen a close frame or failed, and now ignores input.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn decode(
        &mut self,
        mut input: &[u8],
        limits: &WsLimits,
        out: &mut Vec<WsEvent>,
    ) -> Result<(), WsError> {
        while !self.closed {
            if self.frame.is_none() {
                let consumed = self.read_header(input, limits)?;
                input = &input[consumed..];
                if self.frame.is_none() {
                    // The header is still incomplete, so all input went into it.
                    return Ok(());
                }
            }
            let Some(frame) = self.frame.as_mut() else {
                return Ok(());
            };
            if frame.remaining > 0 {
                if input.is_empty() {
                    return Ok(());
                }
                let take = usize::try_from(frame.remaining)
                    .map_or(input.len(), |remaining| remaining.min(input.len()));
                let (chunk, rest) = input.split_at(take);
                input = rest;
                let buf = if is_control(frame.opcode) {
                    &mut self.control
                } else {
                    &mut self.message
                };
                let start = buf.len();
                buf.extend_from_slice(chunk);
                unmask(&mut buf[start..], frame.mask, frame.mask_offset);
                // `take` is at most `remaining`, so this cannot underflow.
                frame.remaining -= take as u64;
                frame.mask_offset = ((usize::from(frame.mask_offset) + take) & 3) as u8;
                let more = frame.remaining > 0;
                if !is_control(frame.opcode) && self.message_kind == Some(MessageKind::Text) {
                    self.check_utf8(start)?;
                }
                if more {
                    return Ok(());
                }
            }
            self.finish_frame(out)?;
        }
        Ok(())
    }

    /// Copies header bytes out of `input` until the header is complete (then sets
    /// `self.frame`) or `input` runs out. Validates as early as the bytes allow.
    fn read_header(&mut self, input: &[u8], limits: &WsLimits) -> Result<usize, WsError> {
        let mut consumed = 0;
        loop {
            let have = usize::from(self.header_len);
            let need = if have < 2 {
                2
            } else {
                header_len(self.header[1])
            };
            if have == need {
                break;
            }
            let n = (need - have).min(input.len() - consumed);
            if n == 0 {
                return Ok(consumed);
            }
            self.header[have..have + n].copy_from_slice(&input[consumed..consumed + n]);
            consumed += n;
            // `need` is at most MAX_HEADER_LEN (14), so it fits in a u8.
            self.header_len = (have + n) as u8;
            if have < 2 && have + n == 2 {
                self.check_header_start()?;
            }
        }
        self.start_frame(limits)?;
        Ok(consumed)
    }

    /// Checks the first two header bytes: everything but the extended length and mask.
    fn check_header_start(&self) -> Result<(), WsError> {
        let [b0, b1] = [self.header[0], self.header[1]];
        if b0 & RSV_BITS != 0 {
            return Err(WsError::ReservedBits);
        }
        let opcode = Opcode::from_code(b0 & 0x0F).ok_or(WsError::ReservedOpcode(b0 & 0x0F))?;
        if b1 & MASK_BIT == 0 {
            return Err(WsError::UnmaskedFrame);
        }
        let fin = b0 & FIN_BIT != 0;
        if is_control(opcode) {
            if !fin {
                return Err(WsError::FragmentedControlFrame);
            }
            if usize::from(b1 & 0x7F) > MAX_CONTROL_PAYLOAD {
                return Err(WsError::OversizedControlFrame);
            }
        } else if opcode == Opcode::Continuation {
            if self.message_kind.is_none() {
                return Err(WsError::UnexpectedContinuation);
            }
        } else if self.message_kind.is_some() {
            return Err(WsError::ExpectedContinuation);
        }
        Ok(())
    }

    /// Turns the complete header into `self.frame`, checking the length and the size limit
    /// before reserving room for the payload.
    fn start_frame(&mut self, limits: &WsLimits) -> Result<(), WsError> {
        let h = &self.header;
        let (length, mask_at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let length = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if length & (1 << 63) != 0 {
                    return Err(WsError::InvalidPayloadLength);
                }
                (length, 10)
            }
            short => (u64::from(short), 2),
        };
        let mask = [h[mask_at], h[mask_at + 1], h[mask_at + 2], h[mask_at + 3]];
        let fin = h[0] & FIN_BIT != 0;
        // The opcode was validated by `check_header_start`.
        let opcode = Opcode::from_code(h[0] & 0x0F).ok_or(WsError::ReservedOpcode(h[0] & 0x0F))?;
        self.header_len = 0;

        if !is_control(opcode) {
            let size = self.message.len() as u64 + length;
            let limit = limits.max_message_size;
            if size > limit as u64 {
                return Err(WsError::MessageTooBig { size, limit });
            }
            self.fragments = if opcode == Opcode::Continuation {
                self.fragments.saturating_add(1)
            } else {
                1
            };
            let limit = limits.max_fragments();
            if self.fragments > limit {
                return Err(WsError::TooManyFragments { limit });
            }
            match opcode {
                Opcode::Text => self.message_kind = Some(MessageKind::Text),
                Opcode::Binary => self.message_kind = Some(MessageKind::Binary),
                _ => {}
            }
        }
        // No room is reserved here: buffers grow with the bytes that actually arrive, so a
        // header announcing a large frame costs nothing until its payload comes. A frame
        // read whole in one chunk still takes exactly one allocation of its exact size (the
        // first `extend_from_slice` on an empty `Vec`).
        self.frame = Some(FrameInProgress {
            remaining: length,
            mask,
            mask_offset: 0,
            opcode,
            fin,
        });
        Ok(())
    }

    /// Validates the text bytes appended at `start` (plus any incomplete sequence before it).
    fn check_utf8(&mut self, start: usize) -> Result<(), WsError> {
        let from = start - usize::from(self.utf8_pending);
        match std::str::from_utf8(&self.message[from..]) {
            Ok(_) => self.utf8_pending = 0,
            Err(e) if e.error_len().is_some() => return Err(WsError::InvalidUtf8),
            // A valid but incomplete sequence at the end: at most 3 bytes.
            Err(e) => self.utf8_pending = (self.message.len() - from - e.valid_up_to()) as u8,
        }
        Ok(())
    }

    /// Emits what the just-completed frame means.
    fn finish_frame(&mut self, out: &mut Vec<WsEvent>) -> Result<(), WsError> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        match frame.opcode {
            Opcode::Ping => out.push(WsEvent::Ping(take_bytes(&mut self.control))),
            Opcode::Pong => out.push(WsEvent::Pong(take_bytes(&mut self.control))),
            Opcode::Close => {
                let payload = std::mem::take(&mut self.control);
                out.push(parse_close(&payload)?);
                self.closed = true;
                self.message = Vec::new();
                self.message_kind = None;
            }
            Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                if !frame.fin {
                    return Ok(());
                }
                if self.utf8_pending != 0 {
                    return Err(WsError::InvalidUtf8);
                }
                let binary = self.message_kind == Some(MessageKind::Binary);
                self.message_kind = None;
                out.push(WsEvent::Message {
                    binary,
                    payload: take_bytes(&mut self.message),
                });
            }
        }
        Ok(())
    }
}

// === impl Opcode ===

impl Opcode {
    /// The 4-bit wire value.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// The opcode for a 4-bit wire value, `None` for reserved values.
    #[must_use]
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// Whether this is a control opcode (close, ping, pong).
    #[must_use]
    pub fn is_control(self) -> bool {
        is_control(self)
    }
}

// === impl WsError ===

impl WsError {
    /// The close code to send when failing the connection for this error: 1002 for protocol
    /// errors, 1007 for invalid UTF-8, 1008 for a message in too many fragments, 1009 for a
    /// message over the size limit.
    #[must_use]
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 | Self::InvalidCloseReason => CLOSE_INVALID_PAYLOAD,
            Self::MessageTooBig { .. } => CLOSE_MESSAGE_TOO_BIG,
            Self::TooManyFragments { .. } => CLOSE_POLICY_VIOLATION,
            Self::UnmaskedFrame
            | Self::ReservedBits
            | Self::ReservedOpcode(_)
            | Self::FragmentedControlFrame
            | Self::OversizedControlFrame
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::InvalidPayloadLength
            | Self::TruncatedCloseCode
            | Self::InvalidCloseCode(_) => CLOSE_PROTOCOL_ERROR,
        }
    }
}

// === encoding ===

/// Appends one final (FIN), unmasked server frame to `out`.
///
/// Control frames (close, ping, pong) must carry at most 125 bytes; the caller ensures it
/// ([`encode_close`] does).
pub fn encode_frame(opcode: Opcode, payload: &[u8], out: &mut BytesMut) {
    let len = payload.len();
    out.reserve(MAX_SERVER_HEADER_LEN + len);
    out.put_u8(FIN_BIT | opcode.code());
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
}

/// Encodes a whole message as one unmasked frame: binary or text (the caller guarantees a
/// text payload is UTF-8). Encode once, share the `Bytes` with every subscriber.
#[must_use]
pub fn encode_message_frame(binary: bool, payload: &[u8]) -> Bytes {
    let opcode = if binary { Opcode::Binary } else { Opcode::Text };
    let mut out = BytesMut::with_capacity(MAX_SERVER_HEADER_LEN + payload.len());
    encode_frame(opcode, payload, &mut out);
    out.freeze()
}

/// Encodes a close frame with `code` and `reason`, the reason cut to at most 123 bytes on a
/// char boundary so the payload fits a control frame.
#[must_use]
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    let mut out = BytesMut::with_capacity(2 + 2 + end);
    encode_frame(Opcode::Close, &payload[..2 + end], &mut out);
    out.freeze()
}

/// Whether `code` may appear in a close frame on the wire (RFC 6455 §7.4): 1000–1003,
/// 1007–1011 and 3000–4999.
#[must_use]
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

// === helpers ===

fn is_control(opcode: Opcode) -> bool {
    matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong)
}

/// Full header length (with mask) implied by the second header byte.
fn header_len(second: u8) -> usize {
    let extended = match second & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + 4
}

fn parse_close(payload: &[u8]) -> Result<WsEvent, WsError> {
    match payload {
        [] => Ok(WsEvent::Close {
            code: None,
            reason: String::new(),
        }),
        [_] => Err(WsError::TruncatedCloseCode),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidCloseReason)?;
            Ok(WsEvent::Close {
                code: Some(code),
                reason: reason.to_owned(),
            })
        }
    }
}

/// Moves the buffer out as `Bytes` (no copy), leaving no capacity behind.
fn take_bytes(buf: &mut Vec<u8>) -> Bytes {
    Bytes::from(std::mem::take(buf))
}

/// XORs `buf` with `mask`, where `buf[0]` is payload byte number `offset` (mod 4).
fn unmask(buf: &mut [u8], mask: [u8; 4], offset: u8) {
    let mut mask = mask;
    mask.rotate_left(usize::from(offset & 3));
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the mask phase is unchanged.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Close code for a protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for data inconsistent with the message type (invalid UTF-8).
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Close code for a message too big to process.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Close code: the endpoint received a message that violates its policy.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code for a normal closure.
pub const CLOSE_NORMAL: u16 = 1000;

/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Largest close reason: a control payload less the 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;
/// Largest client frame header: 2 + 8 (64-bit length) + 4 (mask).
const MAX_HEADER_LEN: usize = 14;
/// Largest server frame header: 2 + 8, no mask.
const MAX_SERVER_HEADER_LEN: usize = 10;
const FIN_BIT: u8 = 0x80;
const RSV_BITS: u8 = 0x70;
const MASK_BIT: u8 = 0x80;
