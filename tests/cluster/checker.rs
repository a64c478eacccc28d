//! A linearizability checker for one key's history of `Get`, `Set` and
//! `Delete`: the Wing–Gong search with Lowe's memoisation (the algorithm of
//! Knossos and Porcupine), written for this history format.
//!
//! A history is a list of operations, each with the time it was invoked and
//! the time its answer came back. It is linearizable if every operation can be
//! given one instant between the two, such that the operations, run one at a
//! time in that order on a single register, give the answers that were seen.
//!
//! An operation whose outcome is unknown (a timeout, a lost connection,
//! `OutcomeUnknown`) has no return time: it may take effect at any instant
//! after its invocation, or never. That is the same as returning at the end of
//! time, which is how the search treats it. A read with an unknown outcome
//! tells nothing and is left out.
//!
//! Linearizability is local (Herlihy and Wing): a history of several keys is
//! linearizable if each key's is, so the caller checks keys one by one.
//!
//! The search keeps a list of the calls and returns not yet linearized, in
//! time order. It tries to linearize a call that comes before the first
//! return; if the register's answer matches, it removes that operation and
//! starts again from the front. Reaching a return means nothing pending can go
//! first, so it undoes the last choice. A set of (linearized operations,
//! register state) pairs already explored cuts repeated work. Unlike the
//! papers, the set of operations is kept as a hash, not a bit set (below).

use std::collections::HashSet;

/// What an operation did and what it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Get`, and the value id it read (`None`: no such key).
    Read(Option<u64>),
    /// `Set` of the value id (every write in a history writes its own id).
    Write(u64),
    /// `Delete`, and whether it answered that the key existed (`None` when
    /// the answer was not seen).
    Delete(Option<bool>),
}

/// One operation on the key, with times on one clock (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub kind: Kind,
    pub call: u64,
    /// `None`: the outcome is unknown.
    pub ret: Option<u64>,
}

/// The checker's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the answers. `stuck` is an operation that could not
    /// be placed in the deepest attempt: a place to start looking.
    NotLinearizable {
        stuck: Op,
    },
    /// The search explored `budget` states without an answer.
    GaveUp,
}

/// The register: the value id stored, if any.
type State = Option<u64>;

/// Runs `op` on `state`: the new state if the answer matches.
fn step(state: State, op: &Op) -> Option<State> {
    match op.kind {
        Kind::Read(seen) => (seen == state).then_some(state),
        Kind::Write(value) => Some(Some(value)),
        Kind::Delete(existed) => existed
            .is_none_or(|existed| existed == state.is_some())
            .then_some(None),
    }
}

/// The end of the event list.
const NONE: usize = usize::MAX;

/// Checks one key's history, starting from an absent key; gives up after
/// exploring `budget` distinct states.
pub fn check(history: &[Op], budget: usize) -> Verdict {
    let ops: Vec<Op> = history
        .iter()
        .filter(|op| op.ret.is_some() || !matches!(op.kind, Kind::Read(_)))
        .copied()
        .collect();
    let n = ops.len();
    // Events 0..2n: a call and a return per operation, in time order (a call
    // before a return at the same instant: they may overlap). Event 2n is the
    // head of the list.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, false, i));
        order.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    order.sort_unstable();
    let head = 2 * n;
    let mut is_return = vec![false; 2 * n];
    let mut op_of = vec![0; 2 * n];
    let mut return_of = vec![0; n];
    for (e, &(_, ret, i)) in order.iter().enumerate() {
        is_return[e] = ret;
        op_of[e] = i;
        if ret {
            return_of[i] = e;
        }
    }
    let mut next: Vec<usize> = (1..=2 * n)
        .map(|e| if e == 2 * n { NONE } else { e })
        .collect();
    next.push(if n == 0 { NONE } else { 0 });
    let mut prev: Vec<usize> = (0..2 * n)
        .map(|e| if e == 0 { head } else { e - 1 })
        .collect();
    prev.push(NONE);

    // Takes a call and its return out of the list; `restore` puts them back
    // (in the reverse order of removal, which the search keeps).
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for e in [call, return_of[op_of[call]]] {
            next[prev[e]] = next[e];
            if next[e] != NONE {
                prev[next[e]] = prev[e];
            }
        }
    };
    let restore = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for e in [return_of[op_of[call]], call] {
            next[prev[e]] = e;
            if next[e] != NONE {
                prev[next[e]] = e;
            }
        }
    };

    // The set of linearized operations is remembered by a 128-bit Zobrist
    // hash (the XOR of a random key per operation), updated in O(1) as the
    // search moves: a long history would not fit as one bit set per state. A
    // collision could only wrongly skip a state, which can hide a valid
    // order but never invent one.
    let keys = std::hash::RandomState::new();
    let zobrist: Vec<u128> = (0..n)
        .map(|i| {
            use std::hash::BuildHasher;
            (keys.hash_one((i, 0)) as u128) << 64 | keys.hash_one((i, 1)) as u128
        })
        .collect();
    let mut linearized = 0u128;
    let mut seen: HashSet<(u128, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut deepest = (0, None);
    let mut state: State = None;
    let mut entry = next[head];
    while next[head] != NONE {
        if !is_return[entry] {
            let i = op_of[entry];
            if let Some(after) = step(state, &ops[i]) {
                linearized ^= zobrist[i];
                if seen.insert((linearized, after)) {
                    if seen.len() > budget {
                        return Verdict::GaveUp;
                    }
                    stack.push((entry, state));
                    state = after;
                    lift(&mut next, &mut prev, entry);
                    entry = next[head];
                    continue;
                }
                linearized ^= zobrist[i];
            }
            entry = next[entry];
        } else {
            // A return: its operation has to be placed before it, and was not.
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), Some(ops[op_of[entry]]));
            }
            let Some((call, before)) = stack.pop() else {
                let stuck = deepest.1.unwrap_or(ops[op_of[entry]]);
                return Verdict::NotLinearizable { stuck };
            };
            let i = op_of[call];
            linearized ^= zobrist[i];
            state = before;
            restore(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::RngExt;
    use proptest::test_runner::{RngAlgorithm, TestRng};

    const BUDGET: usize = 1_000_000;

    fn op(kind: Kind, call: u64, ret: u64) -> Op {
        Op {
            kind,
            call,
            ret: Some(ret),
        }
    }

    fn unknown(kind: Kind, call: u64) -> Op {
        Op {
            kind,
            call,
            ret: None,
        }
    }

    use Kind::{Delete, Read, Write};

    fn linearizable(history: &[Op]) -> bool {
        match check(history, BUDGET) {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable { .. } => false,
            Verdict::GaveUp => panic!("gave up on {history:?}"),
        }
    }

    #[test]
    fn a_sequential_history_that_a_register_would_give_is_linearizable() {
        assert!(linearizable(&[
            op(Read(None), 0, 1),
            op(Write(1), 2, 3),
            op(Read(Some(1)), 4, 5),
            op(Delete(Some(true)), 6, 7),
            op(Delete(Some(false)), 8, 9),
            op(Read(None), 10, 11),
        ]));
        assert!(linearizable(&[]));
    }

    #[test]
    fn a_read_of_an_overwritten_value_after_the_overwrite_returned_is_not() {
        assert!(!linearizable(&[
            op(Write(1), 0, 1),
            op(Write(2), 2, 3),
            op(Read(Some(1)), 4, 5),
        ]));
    }

    #[test]
    fn reads_during_a_write_may_see_either_value_but_never_go_back() {
        // Old then new: fine.
        assert!(linearizable(&[
            op(Write(1), 0, 10),
            op(Read(None), 1, 2),
            op(Read(Some(1)), 3, 4),
        ]));
        // New then old, one after the other: the write cannot be undone.
        assert!(!linearizable(&[
            op(Write(1), 0, 10),
            op(Read(Some(1)), 1, 2),
            op(Read(None), 3, 4),
        ]));
        // The same two reads overlapping each other: either order works.
        assert!(linearizable(&[
            op(Write(1), 0, 10),
            op(Read(Some(1)), 1, 4),
            op(Read(None), 2, 3),
        ]));
    }

    #[test]
    fn a_read_of_a_value_not_yet_written_is_not() {
        assert!(!linearizable(&[
            op(Read(Some(1)), 0, 1),
            op(Write(1), 2, 3)
        ]));
    }

    #[test]
    fn a_write_with_unknown_outcome_may_have_happened_or_not() {
        // Seen later: it happened.
        assert!(linearizable(&[
            unknown(Write(1), 0),
            op(Read(None), 1, 2),
            op(Read(Some(1)), 5, 6),
        ]));
        // Never seen: it did not.
        assert!(linearizable(&[
            unknown(Write(1), 0),
            op(Read(None), 5, 6),
            op(Write(2), 7, 8),
            op(Read(Some(2)), 9, 10),
        ]));
        // But it happens once: seen, then gone without a write or delete.
        assert!(!linearizable(&[
            unknown(Write(1), 0),
            op(Read(Some(1)), 5, 6),
            op(Read(None), 7, 8),
        ]));
        // And not before it was sent.
        assert!(!linearizable(&[
            op(Read(Some(1)), 0, 1),
            unknown(Write(1), 2),
        ]));
        // A read with an unknown outcome says nothing.
        assert!(linearizable(&[unknown(Read(Some(7)), 0)]));
    }

    #[test]
    fn a_write_applied_twice_shows_as_a_value_coming_back() {
        // What a client that resends a `Set` after a lost answer can cause:
        // `a` applied, overwritten by `b`, then applied again.
        assert!(!linearizable(&[
            op(Write(1), 0, 10),
            op(Read(Some(1)), 1, 2),
            op(Write(2), 3, 4),
            op(Read(Some(2)), 5, 6),
            op(Read(Some(1)), 7, 8),
        ]));
    }

    #[test]
    fn a_delete_must_answer_whether_the_key_was_there() {
        assert!(!linearizable(&[op(Delete(Some(true)), 0, 1)]));
        assert!(!linearizable(&[
            op(Write(1), 0, 1),
            op(Delete(Some(false)), 2, 3),
        ]));
        assert!(linearizable(&[
            op(Write(1), 0, 1),
            unknown(Delete(None), 2),
            op(Read(None), 5, 6),
        ]));
    }

    /// A register run by `clients` clients, each operation taking effect at
    /// one instant inside its interval, with some outcomes lost.
    fn random_history(rng: &mut TestRng, clients: usize, ops: usize) -> Vec<Op> {
        let mut state: State = None;
        let mut free_at = vec![0u64; clients];
        let mut history = Vec::new();
        let mut now = 0u64;
        for value in 1..=ops as u64 {
            now += rng.random_range(1..5u64);
            let client = rng.random_range(0..clients);
            let call = free_at[client].max(now.saturating_sub(rng.random_range(0..20u64)));
            let ret = now + rng.random_range(0..20u64);
            free_at[client] = ret + 1;
            let kind = match rng.random_range(0..10) {
                0..=4 => Read(state),
                5..=7 => {
                    state = Some(value);
                    Write(value)
                }
                _ => {
                    let existed = state.is_some();
                    state = None;
                    Delete(Some(existed))
                }
            };
            let lost = rng.random_bool(0.03);
            history.push(Op {
                kind,
                call: call.min(now),
                ret: (!lost).then_some(ret),
            });
        }
        history
    }

    #[test]
    fn histories_of_a_real_register_always_pass() {
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
        for _ in 0..200 {
            let history = random_history(&mut rng, 5, 300);
            assert_eq!(check(&history, BUDGET), Verdict::Linearizable);
        }
    }

    #[test]
    fn a_stale_read_planted_in_a_real_history_is_found() {
        let mut rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]);
        let mut found = 0;
        for _ in 0..200 {
            let mut history = random_history(&mut rng, 5, 300);
            // A read after a write returned, answering with the value of
            // the write that had returned before it began.
            let Some(w) = (1..history.len()).find(|&i| {
                matches!(history[i].kind, Write(_))
                    && history[i].ret.is_some()
                    && matches!(history[i - 1].kind, Write(_))
                    && history[i - 1].ret.is_some_and(|r| r < history[i].call)
            }) else {
                continue;
            };
            let Write(old) = history[w - 1].kind else {
                unreachable!()
            };
            let after = history[w].ret.unwrap() + 1;
            history.truncate(w + 1);
            // Only operations that ended before the planted read stay.
            history.retain(|op| op.ret.is_some_and(|r| r < after));
            history.push(op(Read(Some(old)), after, after + 1));
            assert!(
                matches!(check(&history, BUDGET), Verdict::NotLinearizable { .. }),
                "{history:?}"
            );
            found += 1;
        }
        assert!(found > 50, "too few histories had two writes in a row");
    }
}
