//! Growth of the small vectors a connection holds for hours: a channel's subscribers and a
//! session's subscriptions. Most channels have a subscriber or two (personal channels) and
//! most connections a subscription or two, so these grow one entry at a time while small,
//! where `Vec`'s doubling would leave spare capacity in every one of them; past
//! [`EXACT_UP_TO`] they double, so a long vector is not copied on every push.

/// Up to this length a small vector grows by exactly one entry.
pub(crate) const EXACT_UP_TO: usize = 4;

/// Pushes `item`, growing `vec` by exactly one entry while it is shorter than
/// [`EXACT_UP_TO`] and by doubling after.
pub(crate) fn push_exact_while_small<T>(vec: &mut Vec<T>, item: T) {
    if vec.len() < EXACT_UP_TO {
        vec.reserve_exact(1);
    }
    vec.push(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exactly_while_small_then_doubles() {
        let mut vec = Vec::new();
        for n in 1..=EXACT_UP_TO {
            push_exact_while_small(&mut vec, n);
            assert_eq!(vec.capacity(), n, "exact up to {EXACT_UP_TO}");
        }
        push_exact_while_small(&mut vec, 0);
        assert_eq!(vec.capacity(), 2 * EXACT_UP_TO, "doubles after");
        assert_eq!(vec, [1, 2, 3, 4, 0]);
    }
}
