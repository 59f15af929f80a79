//! The log's records: what one entry of a segment holds, and its framing.
//!
//! Frame: `[len u32 LE][crc32 u32 LE][kind u8][body]`, where `len` counts kind and body and
//! the CRC covers them. A zero `len` is the unwritten (zero-filled or sparse) rest of a
//! segment. Integers in bodies are LEB128 varints, strings and byte strings are
//! length-prefixed. Decoding never panics: a frame that is cut short, fails its CRC or does
//! not parse is [`FrameError`], which the scan treats as the end of the segment's valid data.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{decode_varint, encode_varint};

use crate::broker::{ClientInfo, Publication};

/// Bytes before a record's kind: length and CRC.
pub(super) const HEADER: usize = 8;

/// Largest record accepted when reading (a guard against a corrupt length).
pub(super) const MAX_RECORD: usize = 64 << 20;

/// One entry of the log.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Record {
    /// First record of every segment: who wrote it, and where the previous segment's
    /// acknowledged data ends (records after that point there belong to a failed write).
    SegmentStart {
        /// `/proc/sys/kernel/random/boot_id` of the writing process's machine (empty if
        /// unknown): a crash under the same boot lost nothing that was written.
        boot_id: String,
        /// End of the previous segment's valid data; `u64::MAX` when there is none.
        prev_end: u64,
    },
    /// A new incarnation of a channel's stream.
    StreamStart {
        stream: u64,
        channel: String,
        epoch: String,
        /// Offset of the stream's top when it starts (0, or the kept top of a re-epoched
        /// stream).
        top: u64,
    },
    /// A publication appended to a stream.
    Publish(Box<Publish>),
    /// A retained publication copied forward out of an old segment (compaction): if the
    /// stream still retains that offset, this is where it now is.
    Moved(Box<Publish>),
    /// History of a stream removed up to and including `up_to`; the position is kept.
    RemoveHistory { stream: u64, up_to: u64 },
    /// In `interval` mode: these streams may from now on have acknowledged records that are
    /// not yet on disk. Synced before any such acknowledgement.
    Arm { streams: Vec<u64> },
    /// Every acknowledged record of these streams is on disk.
    Disarm { streams: Vec<u64> },
    /// A clean shutdown: everything before is on disk and nothing follows.
    Close,
}

/// A publication record.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Publish {
    pub(super) stream: u64,
    pub(super) offset: u64,
    /// Wall clock of the write, Unix ms: history TTLs run from it after a restart.
    pub(super) written_ms: u64,
    /// The history options of the publish, in ms and count.
    pub(super) size: u64,
    pub(super) ttl_ms: u64,
    pub(super) meta_ttl_ms: u64,
    /// Idempotency key of the publish, if any.
    pub(super) idempotency_key: Option<String>,
    pub(super) publication: Publication,
}

/// Why bytes did not hold a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum FrameError {
    /// Zero length: the unwritten rest of a segment.
    #[error("end of data")]
    End,
    /// Fewer bytes than the header or the length says.
    #[error("record cut short")]
    Short,
    /// A length beyond [`MAX_RECORD`].
    #[error("implausible record length {0}")]
    Length(usize),
    /// The CRC does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The CRC matches but the body does not parse (an unknown kind or a bad field).
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

const KIND_SEGMENT_START: u8 = 1;
const KIND_STREAM_START: u8 = 2;
const KIND_PUBLISH: u8 = 3;
const KIND_REMOVE_HISTORY: u8 = 4;
const KIND_ARM: u8 = 5;
const KIND_DISARM: u8 = 6;
const KIND_CLOSE: u8 = 7;
const KIND_MOVED: u8 = 8;

const FLAG_DELTA: u8 = 1;
const FLAG_INFO: u8 = 2;
const FLAG_CONN_INFO: u8 = 4;
const FLAG_CHAN_INFO: u8 = 8;
const FLAG_IDEMPOTENCY: u8 = 16;

impl Record {
    /// Appends the framed record to `out`; returns its length including the header.
    pub(super) fn encode(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER]);
        match self {
            Self::SegmentStart { boot_id, prev_end } => {
                out.push(KIND_SEGMENT_START);
                put_str(out, boot_id);
                encode_varint(*prev_end, out);
            }
            Self::StreamStart {
                stream,
                channel,
                epoch,
                top,
            } => {
                out.push(KIND_STREAM_START);
                encode_varint(*stream, out);
                put_str(out, channel);
                put_str(out, epoch);
                encode_varint(*top, out);
            }
            Self::Publish(publish) => {
                out.push(KIND_PUBLISH);
                publish.encode(out);
            }
            Self::Moved(publish) => {
                out.push(KIND_MOVED);
                publish.encode(out);
            }
            Self::RemoveHistory { stream, up_to } => {
                out.push(KIND_REMOVE_HISTORY);
                encode_varint(*stream, out);
                encode_varint(*up_to, out);
            }
            Self::Arm { streams } | Self::Disarm { streams } => {
                out.push(if matches!(self, Self::Arm { .. }) {
                    KIND_ARM
                } else {
                    KIND_DISARM
                });
                encode_varint(streams.len() as u64, out);
                for stream in streams {
                    encode_varint(*stream, out);
                }
            }
            Self::Close => out.push(KIND_CLOSE),
        }
        let body = &out[start + HEADER..];
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let crc = crc32fast::hash(body);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
        out.len() - start
    }

    /// Reads the record at the start of `bytes`; returns it and its framed length.
    pub(super) fn decode(bytes: &[u8]) -> Result<(Self, usize), FrameError> {
        let body = frame(bytes)?;
        let total = HEADER + body.len();
        let mut buf = body;
        let kind = buf.get_u8();
        let record = match kind {
            KIND_SEGMENT_START => Self::SegmentStart {
                boot_id: get_str(&mut buf)?,
                prev_end: get_varint(&mut buf)?,
            },
            KIND_STREAM_START => Self::StreamStart {
                stream: get_varint(&mut buf)?,
                channel: get_str(&mut buf)?,
                epoch: get_str(&mut buf)?,
                top: get_varint(&mut buf)?,
            },
            KIND_PUBLISH => Self::Publish(Box::new(Publish::decode(&mut buf)?)),
            KIND_MOVED => Self::Moved(Box::new(Publish::decode(&mut buf)?)),
            KIND_REMOVE_HISTORY => Self::RemoveHistory {
                stream: get_varint(&mut buf)?,
                up_to: get_varint(&mut buf)?,
            },
            KIND_ARM | KIND_DISARM => {
                let count = get_varint(&mut buf)?;
                if count > buf.len() as u64 {
                    return Err(FrameError::Malformed("stream count"));
                }
                let streams = (0..count)
                    .map(|_| get_varint(&mut buf))
                    .collect::<Result<_, _>>()?;
                if kind == KIND_ARM {
                    Self::Arm { streams }
                } else {
                    Self::Disarm { streams }
                }
            }
            KIND_CLOSE => Self::Close,
            _ => return Err(FrameError::Malformed("unknown kind")),
        };
        if buf.has_remaining() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok((record, total))
    }
}

/// The framed `Publish` (or already `Moved`) record `bytes` as a `Moved` one (same fields,
/// new kind and checksum); `None` if `bytes` is not an intact frame of either.
pub(super) fn moved(bytes: &[u8]) -> Option<Vec<u8>> {
    let body = frame(bytes).ok()?;
    if body.len() + HEADER != bytes.len() || !matches!(body[0], KIND_PUBLISH | KIND_MOVED) {
        return None;
    }
    let mut out = bytes.to_vec();
    out[HEADER] = KIND_MOVED;
    let crc = crc32fast::hash(&out[HEADER..]);
    out[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    Some(out)
}

/// The checked body (kind + fields) of the frame at the start of `bytes`.
pub(super) fn frame(bytes: &[u8]) -> Result<&[u8], FrameError> {
    if bytes.len() < 4 {
        return Err(if bytes.iter().all(|b| *b == 0) {
            FrameError::End
        } else {
            FrameError::Short
        });
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if len == 0 {
        return Err(FrameError::End);
    }
    if len > MAX_RECORD {
        return Err(FrameError::Length(len));
    }
    if bytes.len() < HEADER + len {
        return Err(FrameError::Short);
    }
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Checksum);
    }
    Ok(body)
}

impl Publish {
    fn encode(&self, out: &mut Vec<u8>) {
        let publication = &self.publication;
        encode_varint(self.stream, out);
        encode_varint(self.offset, out);
        // The write time as its distance from the publication's own time (the node sets
        // both, so this is a byte or two).
        encode_varint(
            zigzag((self.written_ms as i64).wrapping_sub(publication.time_ms)),
            out,
        );
        encode_varint(self.size, out);
        encode_varint(self.ttl_ms, out);
        encode_varint(self.meta_ttl_ms, out);
        let mut flags = 0;
        if publication.delta {
            flags |= FLAG_DELTA;
        }
        if let Some(info) = &publication.info {
            flags |= FLAG_INFO;
            if info.conn_info.is_some() {
                flags |= FLAG_CONN_INFO;
            }
            if info.chan_info.is_some() {
                flags |= FLAG_CHAN_INFO;
            }
        }
        if self.idempotency_key.is_some() {
            flags |= FLAG_IDEMPOTENCY;
        }
        out.push(flags);
        // Zigzag: a caller-set time may be anything.
        encode_varint(zigzag(publication.time_ms), out);
        put_bytes(out, &publication.data);
        if let Some(info) = &publication.info {
            put_str(out, &info.user);
            put_str(out, &info.client);
            if let Some(conn_info) = &info.conn_info {
                put_bytes(out, conn_info);
            }
            if let Some(chan_info) = &info.chan_info {
                put_bytes(out, chan_info);
            }
        }
        encode_varint(publication.tags.len() as u64, out);
        for (key, value) in &publication.tags {
            put_str(out, key);
            put_str(out, value);
        }
        if let Some(key) = &self.idempotency_key {
            put_str(out, key);
        }
    }

    fn decode(buf: &mut &[u8]) -> Result<Self, FrameError> {
        let stream = get_varint(buf)?;
        let offset = get_varint(buf)?;
        let written_delta = unzigzag(get_varint(buf)?);
        let size = get_varint(buf)?;
        let ttl_ms = get_varint(buf)?;
        let meta_ttl_ms = get_varint(buf)?;
        if !buf.has_remaining() {
            return Err(FrameError::Malformed("flags"));
        }
        let flags = buf.get_u8();
        let time_ms = unzigzag(get_varint(buf)?);
        let written_ms = time_ms.wrapping_add(written_delta) as u64;
        let data = Bytes::from(get_bytes(buf)?);
        let info = if flags & FLAG_INFO != 0 {
            let user = get_str(buf)?;
            let client = get_str(buf)?;
            let conn_info = (flags & FLAG_CONN_INFO != 0)
                .then(|| get_bytes(buf).map(Bytes::from))
                .transpose()?;
            let chan_info = (flags & FLAG_CHAN_INFO != 0)
                .then(|| get_bytes(buf).map(Bytes::from))
                .transpose()?;
            Some(ClientInfo {
                user,
                client,
                conn_info,
                chan_info,
            })
        } else {
            None
        };
        let count = get_varint(buf)?;
        if count > buf.len() as u64 {
            return Err(FrameError::Malformed("tag count"));
        }
        let mut tags = BTreeMap::new();
        for _ in 0..count {
            let key = get_str(buf)?;
            tags.insert(key, get_str(buf)?);
        }
        let idempotency_key = (flags & FLAG_IDEMPOTENCY != 0)
            .then(|| get_str(buf))
            .transpose()?;
        Ok(Self {
            stream,
            offset,
            written_ms,
            size,
            ttl_ms,
            meta_ttl_ms,
            idempotency_key,
            publication: Publication {
                offset,
                data,
                info,
                tags,
                delta: flags & FLAG_DELTA != 0,
                time_ms,
            },
        })
    }
}

/// Signed to unsigned, small magnitudes small.
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn get_varint(buf: &mut &[u8]) -> Result<u64, FrameError> {
    decode_varint(buf).map_err(|_| FrameError::Malformed("varint"))
}

fn get_bytes(buf: &mut &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = get_varint(buf)?;
    let len = usize::try_from(len).map_err(|_| FrameError::Malformed("length"))?;
    if buf.len() < len {
        return Err(FrameError::Malformed("length"));
    }
    let bytes = buf[..len].to_vec();
    buf.advance(len);
    Ok(bytes)
}

fn get_str(buf: &mut &[u8]) -> Result<String, FrameError> {
    String::from_utf8(get_bytes(buf)?).map_err(|_| FrameError::Malformed("utf-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Record {
        Record::Publish(Box::new(Publish {
            stream: 7,
            offset: 300,
            written_ms: 1_765_000_000_000,
            size: 100,
            ttl_ms: 3_600_000,
            meta_ttl_ms: 0,
            idempotency_key: Some("k1".into()),
            publication: Publication {
                offset: 300,
                data: Bytes::from_static(br#"{"text":"hi"}"#),
                info: Some(ClientInfo {
                    user: "u".into(),
                    client: "c".into(),
                    conn_info: Some(Bytes::from_static(b"{}")),
                    chan_info: None,
                }),
                tags: BTreeMap::from([("a".into(), "b".into())]),
                delta: true,
                time_ms: -5,
            },
        }))
    }

    #[test]
    fn every_kind_round_trips() {
        let records = [
            Record::SegmentStart {
                boot_id: "b".into(),
                prev_end: u64::MAX,
            },
            Record::StreamStart {
                stream: 1,
                channel: "chat:1".into(),
                epoch: "abcdEFGH".into(),
                top: 9,
            },
            publish(),
            Record::RemoveHistory {
                stream: 3,
                up_to: 4,
            },
            Record::Arm {
                streams: vec![1, 2, 300],
            },
            Record::Disarm { streams: vec![] },
            Record::Close,
            Record::Moved(Box::new(Publish {
                stream: 2,
                offset: 1,
                written_ms: 0,
                size: 1,
                ttl_ms: 1,
                meta_ttl_ms: 0,
                idempotency_key: None,
                publication: Publication {
                    offset: 1,
                    ..Publication::default()
                },
            })),
        ];
        let mut out = Vec::new();
        let lens: Vec<usize> = records.iter().map(|r| r.encode(&mut out)).collect();
        let mut at = 0;
        for (record, len) in records.iter().zip(lens) {
            let (decoded, used) = Record::decode(&out[at..]).unwrap();
            assert_eq!(&decoded, record);
            assert_eq!(used, len);
            at += used;
        }
        assert_eq!(Record::decode(&[0; 16]), Err(FrameError::End));
    }

    #[test]
    fn a_publication_without_info_costs_few_bytes_over_its_data() {
        let record = Record::Publish(Box::new(Publish {
            stream: 10_000,
            offset: 100_000,
            written_ms: 1_765_000_000_120,
            size: 100,
            ttl_ms: 3_600_000,
            meta_ttl_ms: 86_400_000,
            idempotency_key: None,
            publication: Publication {
                offset: 100_000,
                data: Bytes::from(vec![7; 100]),
                time_ms: 1_765_000_000_000,
                ..Publication::default()
            },
        }));
        let mut out = Vec::new();
        let len = record.encode(&mut out);
        assert!(len - 100 <= 34, "overhead {}", len - 100);
    }

    #[test]
    fn a_moved_copy_is_the_same_publication_under_another_kind() {
        let mut out = Vec::new();
        publish().encode(&mut out);
        let copy = moved(&out).unwrap();
        let Ok((Record::Moved(moved), len)) = Record::decode(&copy) else {
            panic!("not a moved record");
        };
        let Record::Publish(original) = publish() else {
            unreachable!()
        };
        assert_eq!((moved, len), (original, out.len()));
        assert_eq!(super::moved(&copy), Some(copy.clone()), "moved again");
        let mut close = Vec::new();
        Record::Close.encode(&mut close);
        assert_eq!(
            super::moved(&close),
            None,
            "only a publication can be moved"
        );
    }

    #[test]
    fn damage_is_an_error_never_a_panic() {
        let mut out = Vec::new();
        let len = publish().encode(&mut out);
        for cut in 1..len {
            assert!(Record::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        for at in 0..len {
            let mut damaged = out.clone();
            damaged[at] ^= 0x5a;
            assert!(Record::decode(&damaged).is_err(), "flip at {at}");
        }
        // A valid CRC over garbage must not panic either.
        for kind in 0..=9u8 {
            let body = [
                kind, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1,
            ];
            let mut framed = (body.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            framed.extend_from_slice(&body);
            assert!(Record::decode(&framed).is_err());
        }
    }
}
