//! The auditor: every acknowledged publication against what one client saw.
//!
//! A publication the API acknowledged with `(epoch, offset)` must reach every client of its
//! channel exactly once and in order, unless the client was told it might miss it: a
//! subscribe answered `recovered: false` (or a fresh subscribe) at a position `p` excuses the
//! offsets between what the client had and `p`, and a move to another epoch through such a
//! notice excuses the rest of the old epoch. Walking a client's events gives the ranges of
//! `(epoch, offsets)` the client is responsible for; an acknowledged publication in one of
//! them that never arrived is *lost without notice*. Along the way the walk counts
//! duplicates (the same `(epoch, offset)` twice), reordering (an offset at or below one
//! already delivered, inside a responsible range), and *false `recovered: true`*: a
//! subscribe that claimed continuity while the epoch changed, or after which the next
//! delivery skipped an acknowledged publication.
//!
//! Pure: no I/O, fed with histories; the tests below feed synthetic ones.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::events::Event;

/// One acknowledged publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ack {
    /// The channel's index.
    pub(crate) channel: usize,
    /// The epoch the API answered.
    pub(crate) epoch: String,
    /// The offset the API answered.
    pub(crate) offset: u64,
}

/// Every acknowledged publication, by sequence number and by `(channel, epoch)`.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    by_seq: HashMap<u64, Ack>,
    by_stream: HashMap<(usize, String), BTreeMap<u64, u64>>,
}

impl Acks {
    /// Records that publication `seq` was acknowledged as `ack`.
    pub(crate) fn insert(&mut self, seq: u64, ack: Ack) {
        self.by_stream
            .entry((ack.channel, ack.epoch.clone()))
            .or_default()
            .insert(ack.offset, seq);
        self.by_seq.insert(seq, ack);
    }

    /// How many were acknowledged.
    pub(crate) fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Acknowledged offsets of `channel` in `epoch` within `from..=to`.
    fn offsets(&self, channel: usize, epoch: &str, from: u64, to: u64) -> Vec<u64> {
        if from > to {
            return Vec::new();
        }
        self.by_stream
            .get(&(channel, epoch.to_owned()))
            .map(|offsets| offsets.range(from..=to).map(|(o, _)| *o).collect())
            .unwrap_or_default()
    }
}

/// What the audit of one client found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct ClientAudit {
    /// Publications delivered (duplicates included).
    pub(crate) delivered: u64,
    /// Acknowledged publications the client was responsible for and never got.
    pub(crate) lost: u64,
    /// Deliveries of an `(epoch, offset)` already delivered.
    pub(crate) duplicated: u64,
    /// Deliveries at or below an offset already delivered, inside a responsible range.
    pub(crate) reordered: u64,
    /// Subscribes that said `recovered: true` without continuity.
    pub(crate) false_recovered: u64,
    /// Deliveries whose offset differs from the one the API acknowledged for that payload.
    pub(crate) mismatched: u64,
    /// Subscribes that asked for recovery and were told `recovered: false`.
    pub(crate) notices: u64,
    /// Subscribes that asked for recovery and were told `recovered: true`.
    pub(crate) recoveries: u64,
    /// Milliseconds from the fault's end to the first delivery after it (`None`: none).
    pub(crate) first_delivery_after_ms: Option<u64>,
}

/// Audits one client of `channel` from its events `(time ms, event)` in order. `fault_end`
/// (ms) is when the fault ended, for the time to the first delivery after it.
pub(crate) fn audit_client(
    channel: usize,
    events: &[(u64, Event)],
    acks: &Acks,
    fault_end: Option<u64>,
) -> ClientAudit {
    let mut out = ClientAudit::default();
    // The client's position: what it has, continuously, in which epoch.
    let mut cursor: Option<(String, u64)> = None;
    // The open responsible range (epoch, from); closed ranges are (epoch, from, to).
    let mut open: Option<(String, u64)> = None;
    let mut ranges: Vec<(String, u64, u64)> = Vec::new();
    let mut delivered: HashSet<(String, u64)> = HashSet::new();
    // Set by a `recovered: true`: the next delivery must continue the cursor.
    let mut check_continuity = false;
    let close = |open: &mut Option<(String, u64)>, ranges: &mut Vec<(String, u64, u64)>, to| {
        if let Some((epoch, from)) = open.take() {
            ranges.push((epoch, from, to));
        }
    };
    for (t, event) in events {
        match event {
            Event::Subscribed {
                was_recovering,
                recovered,
                epoch,
                offset,
            } => {
                let claims = *was_recovering && *recovered;
                if *was_recovering {
                    if *recovered {
                        out.recoveries += 1;
                    } else {
                        out.notices += 1;
                    }
                }
                match &cursor {
                    Some((had, _)) if claims && had == epoch => check_continuity = true,
                    Some(_) if claims => {
                        // Continuity claimed across a stream reset: the rest of the old
                        // epoch and all of the new one up to here were never delivered.
                        out.false_recovered += 1;
                        close(&mut open, &mut ranges, u64::MAX);
                        open = Some((epoch.clone(), 1));
                        cursor = Some((epoch.clone(), 0));
                    }
                    _ => {
                        // A notice (or the first subscribe): responsible from here on.
                        let to = cursor.as_ref().map_or(0, |(_, o)| *o);
                        close(&mut open, &mut ranges, to);
                        open = Some((epoch.clone(), offset + 1));
                        cursor = Some((epoch.clone(), *offset));
                        check_continuity = false;
                    }
                }
            }
            Event::Publication { offset, seq } => {
                out.delivered += 1;
                let ack = acks.by_seq.get(seq);
                if ack.is_some_and(|a| a.offset != *offset) {
                    out.mismatched += 1;
                }
                let epoch = ack
                    .map(|a| a.epoch.clone())
                    .or_else(|| cursor.as_ref().map(|(e, _)| e.clone()))
                    .unwrap_or_default();
                if !delivered.insert((epoch.clone(), *offset)) {
                    out.duplicated += 1;
                    continue;
                }
                if let Some(end) = fault_end
                    && *t >= end
                    && out.first_delivery_after_ms.is_none()
                {
                    out.first_delivery_after_ms = Some(t - end);
                }
                match &mut cursor {
                    Some((had, position)) if *had == epoch => {
                        if *offset <= *position {
                            let from = open.as_ref().map_or(u64::MAX, |(_, f)| *f);
                            if *offset >= from {
                                out.reordered += 1;
                            }
                        } else {
                            if check_continuity
                                && !acks
                                    .offsets(channel, &epoch, *position + 1, offset - 1)
                                    .is_empty()
                            {
                                out.false_recovered += 1;
                            }
                            *position = *offset;
                        }
                    }
                    _ => {
                        // A publication of another epoch with no notice: the old epoch's
                        // rest and the new one's start are the client's loss.
                        close(&mut open, &mut ranges, u64::MAX);
                        open = Some((epoch.clone(), 1));
                        cursor = Some((epoch, *offset));
                    }
                }
                check_continuity = false;
            }
            Event::Connected
            | Event::Connecting { .. }
            | Event::Disconnected { .. }
            | Event::Unsubscribed { .. }
            | Event::Switched { .. } => {}
        }
    }
    close(&mut open, &mut ranges, u64::MAX);
    for (epoch, from, to) in &ranges {
        for offset in acks.offsets(channel, epoch, *from, *to) {
            if !delivered.contains(&(epoch.clone(), offset)) {
                out.lost += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acks(epoch: &str, offsets: std::ops::RangeInclusive<u64>) -> Acks {
        let mut acks = Acks::default();
        for offset in offsets {
            acks.insert(
                offset,
                Ack {
                    channel: 0,
                    epoch: epoch.to_owned(),
                    offset,
                },
            );
        }
        acks
    }

    fn sub(recovering: bool, recovered: bool, epoch: &str, offset: u64) -> (u64, Event) {
        (
            0,
            Event::Subscribed {
                was_recovering: recovering,
                recovered,
                epoch: epoch.to_owned(),
                offset,
            },
        )
    }

    fn publication(offset: u64) -> (u64, Event) {
        (
            offset * 10,
            Event::Publication {
                offset,
                seq: offset,
            },
        )
    }

    #[test]
    fn a_clean_history_is_clean() {
        let acks = acks("a", 1..=5);
        let mut events = vec![sub(false, false, "a", 0)];
        events.extend((1..=5).map(publication));
        let audit = audit_client(0, &events, &acks, Some(25));
        assert_eq!(
            audit,
            ClientAudit {
                delivered: 5,
                first_delivery_after_ms: Some(5),
                ..ClientAudit::default()
            }
        );
    }

    #[test]
    fn a_gap_without_notice_is_lost() {
        let acks = acks("a", 1..=5);
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            publication(2),
            publication(4),
            publication(5),
        ];
        assert_eq!(audit_client(0, &events, &acks, None).lost, 1);
    }

    #[test]
    fn the_missing_tail_is_lost() {
        let acks = acks("a", 1..=5);
        let events = vec![sub(false, false, "a", 0), publication(1)];
        assert_eq!(audit_client(0, &events, &acks, None).lost, 4);
    }

    #[test]
    fn publications_before_the_first_subscribe_are_not_the_clients() {
        let acks = acks("a", 1..=5);
        let events = vec![sub(false, false, "a", 3), publication(4), publication(5)];
        assert_eq!(audit_client(0, &events, &acks, None).lost, 0);
    }

    #[test]
    fn duplicates_and_reordering_are_counted() {
        let acks = acks("a", 1..=4);
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            publication(3),
            publication(2),
            publication(3),
            publication(4),
        ];
        let audit = audit_client(0, &events, &acks, None);
        assert_eq!(audit.duplicated, 1);
        assert_eq!(audit.reordered, 1);
        assert_eq!(audit.lost, 0);
    }

    #[test]
    fn a_recovered_false_notice_excuses_the_gap() {
        let acks = acks("a", 1..=6);
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            publication(2),
            sub(true, false, "a", 4),
            publication(5),
            publication(6),
        ];
        let audit = audit_client(0, &events, &acks, None);
        assert_eq!(
            (audit.lost, audit.notices, audit.false_recovered),
            (0, 1, 0)
        );
    }

    #[test]
    fn a_gap_before_a_notice_is_still_lost() {
        let acks = acks("a", 1..=6);
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            publication(3),
            sub(true, false, "a", 4),
            publication(5),
            publication(6),
        ];
        assert_eq!(audit_client(0, &events, &acks, None).lost, 1);
    }

    #[test]
    fn a_new_epoch_through_a_notice_is_fine() {
        let mut acks = acks("a", 1..=3);
        acks.insert(
            100,
            Ack {
                channel: 0,
                epoch: "b".to_owned(),
                offset: 1,
            },
        );
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            sub(true, false, "b", 0),
            (
                1000,
                Event::Publication {
                    offset: 1,
                    seq: 100,
                },
            ),
        ];
        let audit = audit_client(0, &events, &acks, None);
        // 2 and 3 of epoch a are excused by the move to b.
        assert_eq!((audit.lost, audit.false_recovered), (0, 0));
    }

    #[test]
    fn recovered_true_across_epochs_is_false() {
        let mut acks = acks("a", 1..=2);
        for offset in 1..=2 {
            acks.insert(
                100 + offset,
                Ack {
                    channel: 0,
                    epoch: "b".to_owned(),
                    offset,
                },
            );
        }
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            publication(2),
            sub(true, true, "b", 1),
            (
                1000,
                Event::Publication {
                    offset: 2,
                    seq: 102,
                },
            ),
        ];
        let audit = audit_client(0, &events, &acks, None);
        assert_eq!(audit.false_recovered, 1);
        // Offset 1 of epoch b was claimed and never delivered.
        assert_eq!(audit.lost, 1);
    }

    #[test]
    fn recovered_true_followed_by_a_gap_is_false() {
        let acks = acks("a", 1..=5);
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            publication(2),
            sub(true, true, "a", 5),
            publication(4),
            publication(5),
        ];
        let audit = audit_client(0, &events, &acks, None);
        assert_eq!(
            (audit.false_recovered, audit.lost, audit.recoveries),
            (1, 1, 1)
        );
    }

    #[test]
    fn an_honest_recovery_is_clean() {
        let acks = acks("a", 1..=5);
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            publication(2),
            sub(true, true, "a", 5),
            publication(3),
            publication(4),
            publication(5),
        ];
        let audit = audit_client(0, &events, &acks, None);
        assert_eq!(
            (audit.false_recovered, audit.lost, audit.recoveries),
            (0, 0, 1)
        );
    }

    #[test]
    fn a_silent_epoch_change_loses_the_old_tail() {
        let mut acks = acks("a", 1..=3);
        acks.insert(
            100,
            Ack {
                channel: 0,
                epoch: "b".to_owned(),
                offset: 1,
            },
        );
        let events = vec![
            sub(false, false, "a", 0),
            publication(1),
            (
                1000,
                Event::Publication {
                    offset: 1,
                    seq: 100,
                },
            ),
        ];
        assert_eq!(audit_client(0, &events, &acks, None).lost, 2);
    }

    #[test]
    fn unacknowledged_publications_never_count_as_lost() {
        // Offset 2 was written but its publish failed: not in the acks.
        let mut acks = acks("a", 1..=1);
        acks.insert(
            3,
            Ack {
                channel: 0,
                epoch: "a".to_owned(),
                offset: 3,
            },
        );
        let events = vec![sub(false, false, "a", 0), publication(1), publication(3)];
        let audit = audit_client(0, &events, &acks, None);
        assert_eq!((audit.lost, audit.reordered), (0, 0));
    }

    #[test]
    fn a_delivery_at_another_offset_than_acknowledged_is_flagged() {
        let acks = acks("a", 1..=2);
        let events = vec![
            sub(false, false, "a", 0),
            (1, Event::Publication { offset: 1, seq: 1 }),
            (2, Event::Publication { offset: 3, seq: 2 }),
        ];
        let audit = audit_client(0, &events, &acks, None);
        assert_eq!(audit.mismatched, 1);
        assert_eq!(audit.lost, 1, "offset 2 never arrived");
    }
}
