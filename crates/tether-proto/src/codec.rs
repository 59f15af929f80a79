//! Frame codecs: turning one transport message into commands (or replies) and back, in the
//! JSON and Protobuf formats, plus the varint-delimited streaming helpers for raw TCP.
//!
//! A transport message ("frame") holds one or more protocol messages: JSON objects joined by
//! `\n`, or Protobuf messages each prefixed by its unsigned-varint length. Messages never span
//! frames. Everything here is sans-IO and never panics on network input.

use std::iter::FusedIterator;
use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;
use serde::de::DeserializeOwned;

pub use crate::error::{DecodeError, EncodeError};
use crate::json::{self, ToJson};
use crate::protocol::{Command, Reply};

/// Wire format of a connection, fixed at the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// JSON objects joined by `\n`, sent as WebSocket text frames.
    Json,
    /// Varint-length-prefixed Protobuf messages, sent as WebSocket binary frames.
    Protobuf,
}

// === impl Encoding ===

impl Encoding {
    /// Decodes every command in one transport message (a WebSocket message): JSON objects
    /// joined by `\n` (empty lines and surrounding whitespace ignored, trailing newline ok), or
    /// Protobuf `uvarint(len) || Command` repeated. An empty frame is an error.
    ///
    /// A `Command` is ~840 bytes in memory while a pong is 1 byte (Protobuf) or 3 (JSON) on the
    /// wire, so a frame of pongs inflates a lot; the server should prefer
    /// [`Encoding::iter_commands`], which holds one decoded command at a time.
    pub fn decode_commands(self, frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
        self.iter_commands(frame).collect()
    }

    /// Decodes every reply in one transport message (client side); same rules as
    /// [`Encoding::decode_commands`].
    pub fn decode_replies(self, frame: &[u8]) -> Result<Vec<Reply>, DecodeError> {
        self.iter_replies(frame).collect()
    }

    /// Decodes the commands of one transport message lazily, in order; same rules as
    /// [`Encoding::decode_commands`]. The iterator yields the first error and then ends;
    /// commands before it were valid and may be processed (Centrifugo does the same).
    pub fn iter_commands(self, frame: &[u8]) -> Messages<'_, Command> {
        Messages::new(self, frame)
    }

    /// Decodes the replies of one transport message lazily (client side); see
    /// [`Encoding::iter_commands`].
    pub fn iter_replies(self, frame: &[u8]) -> Messages<'_, Reply> {
        Messages::new(self, frame)
    }

    /// Appends one encoded reply: a JSON object (no newline) or a uvarint-length-prefixed
    /// Protobuf message. On error `out` is left as it was.
    pub fn encode_reply(self, reply: &Reply, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_one(self, reply, out)
    }

    /// Appends several replies as one transport message (JSON joined by `\n`). On error `out`
    /// is left as it was.
    pub fn encode_replies(self, replies: &[Reply], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_many(self, replies, out)
    }

    /// Appends one encoded command (client side); see [`Encoding::encode_reply`].
    pub fn encode_command(self, command: &Command, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode_one(self, command, out)
    }

    /// Appends several commands as one transport message (client side); see
    /// [`Encoding::encode_replies`].
    pub fn encode_commands(
        self,
        commands: &[Command],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        encode_many(self, commands, out)
    }

    /// What goes between two encoded messages batched into one frame: `b"\n"` for JSON,
    /// nothing for Protobuf (the length prefixes delimit).
    #[must_use]
    pub fn batch_separator(self) -> &'static [u8] {
        match self {
            Self::Json => b"\n",
            Self::Protobuf => b"",
        }
    }

    /// Whether frames of this format go out as WebSocket binary (not text) frames.
    #[must_use]
    pub fn is_binary(self) -> bool {
        matches!(self, Self::Protobuf)
    }
}

// === Varint-delimited streams (raw TCP) ===

/// Takes one `uvarint(len) || Command` off the front of a stream buffer.
///
/// `Ok(None)` means more bytes are needed (nothing is consumed). A length above `max_len` is
/// an error as soon as the prefix is complete, before the body arrives.
pub fn decode_delimited_command(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<Command>, DecodeError> {
    decode_delimited(buf, max_len)
}

/// Appends `uvarint(len) || Command` for a delimited stream.
pub fn encode_delimited_command(
    command: &Command,
    out: &mut impl BufMut,
) -> Result<(), EncodeError> {
    Ok(command.encode_length_delimited(out)?)
}

/// Takes one `uvarint(len) || Reply` off the front of a stream buffer (client side); see
/// [`decode_delimited_command`].
pub fn decode_delimited_reply(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<Reply>, DecodeError> {
    decode_delimited(buf, max_len)
}

/// Appends `uvarint(len) || Reply` for a delimited stream.
pub fn encode_delimited_reply(reply: &Reply, out: &mut impl BufMut) -> Result<(), EncodeError> {
    Ok(reply.encode_length_delimited(out)?)
}

// === Lazy frame decoding ===

/// Lazily decoded messages of one frame; see [`Encoding::iter_commands`].
#[derive(Debug)]
pub struct Messages<'a, T> {
    state: FrameState<'a>,
    /// At least one message was yielded, so running out is not an empty frame.
    yielded: bool,
    /// An error was yielded (or the end reached); the iterator only returns `None` now.
    done: bool,
    _message: PhantomData<fn() -> T>,
}

/// The undecoded rest of a frame.
#[derive(Debug)]
enum FrameState<'a> {
    Json(&'a [u8]),
    /// One copy of the frame; `bytes` fields of the decoded messages share it.
    Protobuf(Bytes),
}

impl<'a, T> Messages<'a, T> {
    fn new(encoding: Encoding, frame: &'a [u8]) -> Self {
        let state = match encoding {
            Encoding::Json => FrameState::Json(frame),
            Encoding::Protobuf => FrameState::Protobuf(Bytes::copy_from_slice(frame)),
        };
        Self {
            state,
            yielded: false,
            done: false,
            _message: PhantomData,
        }
    }
}

impl<T> Iterator for Messages<'_, T>
where
    T: prost::Message + Default + DeserializeOwned,
{
    type Item = Result<T, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = match &mut self.state {
            FrameState::Json(rest) => next_json_line(rest).map(json::decode_line),
            FrameState::Protobuf(rest) => next_protobuf(rest),
        };
        match next {
            Some(Ok(message)) => {
                self.yielded = true;
                Some(Ok(message))
            }
            Some(Err(e)) => {
                self.done = true;
                Some(Err(e))
            }
            None => {
                self.done = true;
                (!self.yielded).then_some(Err(DecodeError::EmptyFrame))
            }
        }
    }
}

impl<T> FusedIterator for Messages<'_, T> where T: prost::Message + Default + DeserializeOwned {}

/// Takes the next non-blank line (trimmed) off `rest`.
fn next_json_line<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    while !rest.is_empty() {
        let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (*rest, &rest[rest.len()..]),
        };
        *rest = tail;
        let line = line.trim_ascii();
        if !line.is_empty() {
            return Some(line);
        }
    }
    None
}

/// Takes the next `uvarint(len) || message` off `rest`.
fn next_protobuf<T: prost::Message + Default>(rest: &mut Bytes) -> Option<Result<T, DecodeError>> {
    if rest.is_empty() {
        return None;
    }
    let decoded = (|| {
        let (len, prefix) = read_varint(rest)?.ok_or(DecodeError::Truncated)?;
        rest.advance(prefix);
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        if len > rest.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(T::decode(rest.split_to(len))?)
    })();
    Some(decoded)
}

// === Helpers ===

fn decode_delimited<T: prost::Message + Default>(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<T>, DecodeError> {
    let Some((len, prefix)) = read_varint(buf)? else {
        return Ok(None);
    };
    let body = match usize::try_from(len) {
        Ok(body) if body <= max_len => body,
        _ => return Err(DecodeError::TooLarge { len, max: max_len }),
    };
    let Some(total) = prefix.checked_add(body) else {
        return Err(DecodeError::TooLarge { len, max: max_len });
    };
    if buf.len() < total {
        // Nothing is reserved for the announced body: the buffer grows with the bytes that
        // arrive, so a peer cannot make a connection hold `max_len` with a few bytes.
        return Ok(None);
    }
    buf.advance(prefix);
    let message = buf.split_to(body).freeze();
    Ok(Some(T::decode(message)?))
}

/// Reads an unsigned LEB128 varint from the front of `buf`: `Ok(Some((value, bytes_used)))`,
/// `Ok(None)` when `buf` ends inside it, an error when it is over ten bytes or overflows u64.
fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_VARINT_LEN).enumerate() {
        // The tenth byte may only contribute the top bit of a u64.
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Err(DecodeError::InvalidVarint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(DecodeError::InvalidVarint)
    } else {
        Ok(None)
    }
}

fn encode_one<T>(encoding: Encoding, message: &T, out: &mut Vec<u8>) -> Result<(), EncodeError>
where
    T: prost::Message + ToJson,
{
    let start = out.len();
    let result = match encoding {
        Encoding::Json => message.write_json(out),
        Encoding::Protobuf => message.encode_length_delimited(out).map_err(Into::into),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_many<T>(encoding: Encoding, messages: &[T], out: &mut Vec<u8>) -> Result<(), EncodeError>
where
    T: prost::Message + ToJson,
{
    let start = out.len();
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(encoding.batch_separator());
        }
        if let Err(e) = encode_one(encoding, message, out) {
            out.truncate(start);
            return Err(e);
        }
    }
    Ok(())
}

/// A u64 varint takes at most ten bytes.
const MAX_VARINT_LEN: usize = 10;

#[cfg(test)]
mod tests;
