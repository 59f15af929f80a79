//! Fossil deltas: the patch format Centrifugo uses for delta-compressed publications.
//!
//! The format is fossil-scm's (`www/delta_format.wiki`), the one the npm `fossil-delta`
//! package applies inside centrifuge-js: a header `<target length>\n`, then commands
//! `N@M,` (copy `N` bytes from source offset `M`) and `N:<N literal bytes>`, then
//! `<checksum>;`. Every number is base-64 with the digits `0-9A-Z_a-z~`, and the checksum is
//! the 32-bit big-endian word sum of the target.
//!
//! Encoding and applying are done by the `fossil-delta` crate. Its `apply` indexes the delta
//! without bounds checks and trusts the header's length, so [`apply_fossil_delta`] first walks
//! the delta with the same number reader and rejects anything that would make it panic or
//! allocate without bound. Deltas arrive from the network on the client side.

use fossil_delta::b64int_read;

/// Why a delta could not be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The length header is missing or not terminated by a newline.
    #[error("delta size header not terminated by newline")]
    MissingHeader,
    /// The header announces more than [`MAX_OUTPUT_LEN`] bytes.
    #[error("delta output too large")]
    OutputTooLarge,
    /// A copy command is not terminated by a comma.
    #[error("copy command not terminated by comma")]
    UnterminatedCopy,
    /// A copy reads past the end of the source.
    #[error("copy extends past end of source")]
    CopyOutOfBounds,
    /// A literal is longer than what is left of the delta.
    #[error("literal extends past end of delta")]
    LiteralOutOfBounds,
    /// The commands produce more bytes than the header announced.
    #[error("delta output larger than announced")]
    OutputExceedsSize,
    /// A byte that is not a command where a command was expected.
    #[error("unknown delta command")]
    UnknownCommand,
    /// The delta ends without a checksum.
    #[error("delta not terminated")]
    Unterminated,
    /// The commands produce fewer bytes than the header announced.
    #[error("delta output shorter than announced")]
    SizeMismatch,
    /// The output's checksum differs from the one in the delta.
    #[error("delta checksum mismatch")]
    BadChecksum,
}

/// Encodes `target` as a fossil delta against `source`.
///
/// The result is not always smaller than `target`; callers compare lengths and send full data
/// when the delta does not pay off.
pub fn fossil_delta(source: &[u8], target: &[u8]) -> Vec<u8> {
    // The crate takes (target, source), in that order.
    fossil_delta::delta(target, source)
}

/// Applies a fossil `delta` to `source`, returning the target.
///
/// Never panics, whatever the delta holds; the output is at most [`MAX_OUTPUT_LEN`] bytes.
pub fn apply_fossil_delta(source: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let expected_len = validate(source, delta)?;
    let output = fossil_delta::apply(source, delta).map_err(|error| match error {
        fossil_delta::Error::BadChecksum => DeltaError::BadChecksum,
        fossil_delta::Error::CopyExceedsSize => DeltaError::OutputExceedsSize,
        fossil_delta::Error::CopyExtendsPasteEndOfInput => DeltaError::CopyOutOfBounds,
        fossil_delta::Error::UnexpectedCharacter(_) => DeltaError::UnknownCommand,
    })?;
    // `validate` proved the commands add up to the header; this only guards that proof.
    if output.len() != expected_len {
        return Err(DeltaError::SizeMismatch);
    }
    Ok(output)
}

/// Walks `delta` the way `fossil_delta::apply` will, checking every bound it skips, as the
/// npm `fossil-delta` applier does. Returns the announced output length.
fn validate(source: &[u8], delta: &[u8]) -> Result<usize, DeltaError> {
    let (limit, rest) = b64int_read(delta);
    let Some((b'\n', mut rest)) = rest.split_first() else {
        return Err(DeltaError::MissingHeader);
    };
    if limit > MAX_OUTPUT_LEN {
        return Err(DeltaError::OutputTooLarge);
    }
    let mut total = 0usize;
    while !rest.is_empty() {
        let (count, after_count) = b64int_read(rest);
        let Some((&command, after_command)) = after_count.split_first() else {
            return Err(DeltaError::Unterminated);
        };
        match command {
            b'@' => {
                let (offset, after_offset) = b64int_read(after_command);
                let Some((b',', after_copy)) = after_offset.split_first() else {
                    return Err(DeltaError::UnterminatedCopy);
                };
                total = grow(total, count, limit)?;
                if offset
                    .checked_add(count)
                    .is_none_or(|end| end > source.len())
                {
                    return Err(DeltaError::CopyOutOfBounds);
                }
                rest = after_copy;
            }
            b':' => {
                total = grow(total, count, limit)?;
                rest = after_command
                    .get(count..)
                    .ok_or(DeltaError::LiteralOutOfBounds)?;
            }
            b';' => {
                // The checksum itself is verified by the crate on the real output.
                return if total == limit {
                    Ok(limit)
                } else {
                    Err(DeltaError::SizeMismatch)
                };
            }
            _ => return Err(DeltaError::UnknownCommand),
        }
    }
    Err(DeltaError::Unterminated)
}

/// `total + count`, as long as it stays within the announced `limit`.
fn grow(total: usize, count: usize, limit: usize) -> Result<usize, DeltaError> {
    total
        .checked_add(count)
        .filter(|&total| total <= limit)
        .ok_or(DeltaError::OutputExceedsSize)
}

/// Largest output [`apply_fossil_delta`] produces: far above any publication a gateway
/// carries (client frames are limited to about 64 KiB by default), low enough that a hostile
/// header cannot make the client allocate gigabytes.
pub const MAX_OUTPUT_LEN: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Hand-derived vectors. Fox: the source is longer than one 16-byte hash window and the
    /// first 40 bytes match, so the encoder copies 40 (`d`) bytes from offset 0 and then adds
    /// the 4-byte literal. Header 44 = `h`. Checksum: the big-endian u32 word sum of the target
    /// in base 64. "hi": 0x68690000 = 01|101000|011010|010000|000000|000000 = `1dQG00`; a source
    /// of at most 16 bytes always yields one literal.
    #[test]
    fn matches_hand_checked_vectors() {
        let source = b"The quick brown fox jumps over the lazy dog.";
        let target = b"The quick brown fox jumps over the lazy cat.";
        let delta = fossil_delta(source, target);
        assert_eq!(delta, b"h\nd@0,4:cat.1sBY99;");
        assert_eq!(apply_fossil_delta(source, &delta).unwrap(), target);

        assert_eq!(fossil_delta(b"", b"hi"), b"2\n2:hi1dQG00;");
        assert_eq!(apply_fossil_delta(b"", b"2\n2:hi1dQG00;").unwrap(), b"hi");

        // The empty target: size 0, an empty literal, checksum 0.
        assert_eq!(fossil_delta(b"anything", b""), b"0\n0:0;");
        assert_eq!(apply_fossil_delta(b"anything", b"0\n0:0;").unwrap(), b"");
    }

    #[test]
    fn checksum_word_sum_matches_reference() {
        // Independent reference: sum of big-endian u32 words, last one zero-padded.
        let target = b"The quick brown fox jumps over the lazy cat.";
        let sum = target.chunks(4).fold(0u32, |sum, chunk| {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            sum.wrapping_add(u32::from_be_bytes(word))
        });
        assert_eq!(fossil_delta::b64str(sum), "1sBY99");
    }

    #[test]
    fn rejects_malformed_deltas_without_panicking() {
        let source = b"0123456789abcdef0123456789abcdef";
        let cases: &[(&[u8], DeltaError)] = &[
            (b"", DeltaError::MissingHeader),
            (b"2", DeltaError::MissingHeader),
            (b"2;", DeltaError::MissingHeader),
            (b"2\n", DeltaError::Unterminated),
            (b"2\n2", DeltaError::Unterminated),
            (b"2\n2@0", DeltaError::UnterminatedCopy),
            (b"2\n2@0;", DeltaError::UnterminatedCopy),
            (b"2\n2@~~,", DeltaError::CopyOutOfBounds),
            (b"~~~~~~~~~~~\n", DeltaError::OutputTooLarge),
            (b"2\n3@0,", DeltaError::OutputExceedsSize),
            (b"2\n9:ab", DeltaError::OutputExceedsSize),
            (b"9\n9:ab", DeltaError::LiteralOutOfBounds),
            (b"2\n2!ab", DeltaError::UnknownCommand),
            (b"2\n1:a0;", DeltaError::SizeMismatch),
            (b"2\n2:hi1dQG01;", DeltaError::BadChecksum),
        ];
        for (delta, expected) in cases {
            assert_eq!(
                apply_fossil_delta(source, delta),
                Err(*expected),
                "delta {:?}",
                String::from_utf8_lossy(delta)
            );
        }
    }

    proptest! {
        #[test]
        fn round_trips_arbitrary_bytes(source in proptest::collection::vec(any::<u8>(), 0..300),
                                       target in proptest::collection::vec(any::<u8>(), 0..300)) {
            let delta = fossil_delta(&source, &target);
            prop_assert_eq!(apply_fossil_delta(&source, &delta).unwrap(), target);
        }

        #[test]
        fn round_trips_edited_copies(source in proptest::collection::vec(any::<u8>(), 0..2000),
                                     cut in any::<prop::sample::Index>(),
                                     len in 0usize..64,
                                     insert in proptest::collection::vec(any::<u8>(), 0..64)) {
            // A target that mostly repeats the source, so the copy path is exercised.
            let at = if source.is_empty() { 0 } else { cut.index(source.len()) };
            let end = (at + len).min(source.len());
            let mut target = source[..at].to_vec();
            target.extend_from_slice(&insert);
            target.extend_from_slice(&source[end..]);
            let delta = fossil_delta(&source, &target);
            prop_assert_eq!(apply_fossil_delta(&source, &delta).unwrap(), target);
        }

        #[test]
        fn never_panics_on_arbitrary_deltas(source in proptest::collection::vec(any::<u8>(), 0..64),
                                            delta in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = apply_fossil_delta(&source, &delta);
        }

        #[test]
        fn never_panics_on_corrupted_deltas(source in proptest::collection::vec(any::<u8>(), 17..200),
                                            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let mut target = source.clone();
            target.rotate_left(source.len() / 3);
            let mut delta = fossil_delta(&source, &target);
            for (at, byte) in flips {
                let at = at.index(delta.len());
                delta[at] = byte;
            }
            if let Ok(output) = apply_fossil_delta(&source, &delta) {
                // Anything accepted carries a consistent length (checksum collisions aside).
                prop_assert!(output.len() <= MAX_OUTPUT_LEN);
            }
        }
    }
}
