//! Helpers shared by the fuzz targets: turning one fuzzer input into a chunking of a byte
//! stream, so stream decoders are exercised with every way the socket could split a read.

/// Splits `data` into a chunk plan and a payload.
///
/// Layout: the first byte `n` says how many of the next bytes are chunk lengths (`n % 8`,
/// zero means "feed everything at once"); those bytes are the lengths (a length byte `b` is a
/// chunk of `b + 1` bytes), cycled until the payload runs out; the rest is the payload.
#[must_use]
pub fn split_plan(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(n % 8).min(rest.len());
    rest.split_at(n)
}

/// The chunks of `payload` under `plan` (see [`split_plan`]).
pub fn chunks<'a>(plan: &'a [u8], mut payload: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut lengths = plan.iter().cycle();
    std::iter::from_fn(move || {
        if payload.is_empty() {
            return None;
        }
        let take = match lengths.next() {
            Some(&b) => (usize::from(b) + 1).min(payload.len()),
            None => payload.len(),
        };
        let (chunk, rest) = payload.split_at(take);
        payload = rest;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_payload_in_order() {
        let (plan, payload) = split_plan(&[2, 0, 2, b'a', b'b', b'c', b'd', b'e']);
        assert_eq!(plan, &[0, 2]);
        let got: Vec<&[u8]> = chunks(plan, payload).collect();
        assert_eq!(got, vec![&b"a"[..], b"bcd", b"e"]);
        let (plan, payload) = split_plan(&[8, b'x', b'y']);
        assert!(plan.is_empty());
        assert_eq!(chunks(plan, payload).collect::<Vec<_>>(), vec![&b"xy"[..]]);
    }
}
