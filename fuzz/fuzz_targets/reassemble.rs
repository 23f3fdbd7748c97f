//! One `Reassembler` with a small budget fed a sequence of pieces read from the input, with
//! `expire` and `forget` interleaved and a simulated clock. After every call the budget must
//! hold, and every completed message must have the shape its pieces promised.
//!
//! Input: one byte choosing the budget (64 KiB, 16 KiB, 8 KiB, or just 3 full pieces), then
//! steps until the input runs out, each one step byte followed by its operands:
//!   step % 8 == 0: advance the clock by `byte * 16 ms`, then `expire(now)`
//!   step % 8 == 1: `forget(node)` (node = byte % 4)
//!   step % 8 == 2: a burst: every piece but the last of one message of up to 63 pieces (a
//!                  sender that floods partials, to reach the eviction paths quickly)
//!   otherwise:     one piece: sender, first_seq, count, index, length selector (`Cursor::len`)
//! Senders are 4 nodes × 2 incarnations and first_seq is below 16, so pieces collide often.
//! Piece bytes are not taken from the input: each piece is filled with a byte derived from
//! (sender, first_seq, index), so completed messages can be checked piece by piece.
#![no_main]

use std::time::{Duration, Instant};

use express_session_multicast::core::fragment::{Reassembler, PARTIAL_COST, PIECE_LEN};
use libfuzzer_sys::fuzz_target;

const BUDGETS: [usize; 4] = [64 * 1024, 16 * 1024, 8 * 1024, 3 * PIECE_LEN + PARTIAL_COST];
const TIMEOUT: Duration = Duration::from_secs(2);

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }
    /// (node, incarnation, first_seq).
    fn message(&mut self) -> Option<(u64, u64, u64)> {
        let sender = self.u8()?;
        let first_seq = self.u8()? % 16;
        Some((u64::from(sender % 4), u64::from(sender / 4 % 2), u64::from(first_seq)))
    }
    /// Mostly small counts (so messages complete), sometimes any u16 (0 and huge included).
    fn count(&mut self) -> Option<u16> {
        match self.u8()? {
            b @ 0..=239 => Some(u16::from(b % 16)),
            _ => self.u16(),
        }
    }
    /// Mostly an index in 0..count, sometimes any u16.
    fn index(&mut self, count: u16) -> Option<u16> {
        match self.u8()? {
            b @ 0..=239 => Some(u16::from(b) % count.max(1)),
            _ => self.u16(),
        }
    }
    /// Mostly what a sender produces (a full piece, or a short last piece), sometimes anything
    /// up to a little over a full piece (0 and too large included).
    fn len(&mut self, index: u16, count: u16) -> Option<usize> {
        let b = self.u8()?;
        Some(match b % 4 {
            0 | 1 if index.checked_add(1) == Some(count) => usize::from(b >> 2) + 1,
            0..=2 => PIECE_LEN,
            _ => usize::from(self.u16()?) % (PIECE_LEN + 16),
        })
    }
}

fn fill(node: u64, incarnation: u64, first_seq: u64, index: u16) -> u8 {
    (node as u8).wrapping_mul(31)
        ^ (incarnation as u8).wrapping_mul(17)
        ^ (first_seq as u8).wrapping_mul(7)
        ^ (index as u8).wrapping_mul(3)
        ^ (index >> 8) as u8
}

/// Adds one piece and checks what comes out, and the budget.
fn add(
    r: &mut Reassembler,
    budget: usize,
    (node, incarnation, first_seq): (u64, u64, u64),
    index: u16,
    count: u16,
    len: usize,
    now: Instant,
) {
    let bytes = vec![fill(node, incarnation, first_seq, index); len];
    if let Ok(Some(msg)) = r.add(node, incarnation, first_seq, index, count, bytes, now) {
        let count = usize::from(count);
        assert!(!msg.is_empty(), "empty message completed");
        assert!(msg.len() <= count * PIECE_LEN, "{} bytes from {count} pieces", msg.len());
        assert!(msg.len() > (count - 1) * PIECE_LEN, "{} bytes from {count} pieces", msg.len());
        // Pieces in index order: piece i is all fill(.., i).
        for (i, chunk) in msg.chunks(PIECE_LEN).enumerate() {
            let expected = fill(node, incarnation, first_seq, i as u16);
            assert!(chunk.iter().all(|&b| b == expected), "piece {i} of {count} out of place");
        }
    }
    check(r, budget);
}

fn check(r: &Reassembler, budget: usize) {
    assert!(r.held_bytes() <= budget, "held {} over budget {budget}", r.held_bytes());
    assert!(r.held_bytes() >= r.partials() * PARTIAL_COST, "partials not charged");
    assert_eq!(r.partials() == 0, r.held_bytes() == 0, "held bytes without partials");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let Some(b) = input.u8() else { return };
    let budget = BUDGETS[usize::from(b % 4)];
    let mut now = Instant::now();
    let mut r = Reassembler::new(budget, TIMEOUT);
    while let Some(step) = input.u8() {
        match step % 8 {
            0 => {
                let Some(advance) = input.u8() else { break };
                now += Duration::from_millis(u64::from(advance) * 16);
                r.expire(now);
                check(&r, budget);
            }
            1 => {
                let Some(node) = input.u8() else { break };
                r.forget(u64::from(node % 4));
                check(&r, budget);
            }
            2 => {
                // Up to 63 pieces: beyond the largest budget, and bounded so a step stays cheap.
                let Some((message, count)) = (|| Some((input.message()?, u16::from(input.u8()? % 64))))() else {
                    break;
                };
                for index in 0..count.saturating_sub(1) {
                    add(&mut r, budget, message, index, count, PIECE_LEN, now);
                }
            }
            _ => {
                let piece = (|| {
                    let message = input.message()?;
                    let count = input.count()?;
                    let index = input.index(count)?;
                    Some((message, count, index, input.len(index, count)?))
                })();
                let Some((message, count, index, len)) = piece else { break };
                add(&mut r, budget, message, index, count, len, now);
            }
        }
    }
    r.expire(now + TIMEOUT);
    assert_eq!((r.held_bytes(), r.partials()), (0, 0), "expire left partials behind");
});
