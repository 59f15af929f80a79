//! The crate's error types: [`DecodeError`] (a frame or delimited message that cannot be
//! decoded) and [`EncodeError`] (a message that cannot be encoded).
//!
//! They live apart from the codecs so that both `codec` (framing, Protobuf) and `json` (the
//! JSON encoder and line decoder) can use them without importing each other. Both are
//! re-exported at the crate root and from `codec`, where they used to live.

/// Why a frame could not be decoded. The server answers any of these with disconnect 3501.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The frame holds no message at all (JSON: only whitespace).
    #[error("empty frame")]
    EmptyFrame,
    /// A JSON line is valid JSON but not an object.
    #[error("json message is not an object")]
    NotAnObject,
    /// A JSON line is not valid JSON, or a known key has a value of the wrong type.
    #[error("invalid json message")]
    Json(#[from] serde_json::Error),
    /// A Protobuf length prefix is longer than ten bytes or overflows u64.
    #[error("invalid varint length prefix")]
    InvalidVarint,
    /// A Protobuf frame ends inside a length prefix or a message.
    #[error("truncated message")]
    Truncated,
    /// A delimited message announces more bytes than the caller's limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The caller's limit.
        max: usize,
    },
    /// A Protobuf message body is malformed.
    #[error("invalid protobuf message")]
    Protobuf(#[from] prost::DecodeError),
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A `bytes` field holds something that is not valid JSON, so it cannot be embedded in the
    /// JSON format (the server closes such a connection with 3506).
    #[error("bytes field is not valid json")]
    NonJsonData,
    /// The output buffer could not take the message; never happens with `Vec<u8>` or
    /// `BytesMut`, which grow.
    #[error("protobuf output buffer too small")]
    Protobuf(#[from] prost::EncodeError),
}
