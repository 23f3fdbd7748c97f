use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const TIMEOUT: Duration = Duration::from_secs(10);

fn message(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Pieces of `msg` as (index, count, bytes).
fn pieces(msg: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
    let pieces = split(msg).expect("fits");
    let count = pieces.len() as u16;
    pieces.into_iter().enumerate().map(|(i, p)| (i as u16, count, p.to_vec())).collect()
}

/// Feeds pieces of one sender's message; returns what completed, checking the tallies.
fn feed(
    r: &mut Reassembler,
    sender: Sender,
    first_seq: u64,
    pieces: Vec<(u16, u16, Vec<u8>)>,
    now: Instant,
) -> Vec<Vec<u8>> {
    let mut done = Vec::new();
    for (index, count, bytes) in pieces {
        if let Some(msg) = r.add(sender.0, sender.1, first_seq, index, count, bytes, now).unwrap() {
            done.push(msg);
        }
        check(r);
    }
    done
}

/// The tallies agree with the partials, and the budget holds.
fn check(r: &Reassembler) {
    let charged: usize = r.partials.values().map(|p| p.charged).sum();
    let bytes: usize = r.partials.values().flat_map(|p| p.pieces.values()).map(Vec::len).sum();
    assert_eq!(r.held, charged);
    assert_eq!(charged, bytes + r.partials.len() * PARTIAL_COST);
    assert_eq!(r.held_by.values().sum::<usize>(), r.held);
    assert_eq!(r.by_weight.len(), r.held_by.len());
    assert!(r.held <= r.max_bytes, "held {} over budget {}", r.held, r.max_bytes);
}

#[test]
fn split_cuts_full_pieces_and_refuses_what_fragments_cannot_carry() {
    let msg = message(PIECE_LEN * 2 + 5, 1);
    let lens: Vec<usize> = split(&msg).unwrap().iter().map(|p| p.len()).collect();
    assert_eq!(lens, [PIECE_LEN, PIECE_LEN, 5]);
    assert_eq!(split(&msg[..PIECE_LEN]).unwrap().len(), 1);
    assert!(split(&[]).is_none());
    let huge = vec![0u8; MAX_MESSAGE + 1];
    assert!(split(&huge).is_none());
    assert_eq!(split(&huge[..MAX_MESSAGE]).unwrap().len(), usize::from(u16::MAX));
}

#[test]
fn round_trip_in_any_order() {
    let msg = message(PIECE_LEN * 7 + 100, 2);
    let now = Instant::now();
    let mut in_order = pieces(&msg);
    let mut reverse = in_order.clone();
    reverse.reverse();
    let mut shuffled = in_order.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(7));
    let single = pieces(&msg[..10]);
    for (seq, order) in [in_order.clone(), reverse, shuffled, single].into_iter().enumerate() {
        let mut r = Reassembler::new(1 << 20, TIMEOUT);
        let expected = if order.len() == 1 { &msg[..10] } else { &msg[..] };
        assert_eq!(feed(&mut r, (1, 1), seq as u64, order, now), [expected]);
        assert_eq!((r.held_bytes(), r.partials()), (0, 0));
    }
    // Only the last piece completes.
    let last = in_order.pop().unwrap();
    let mut r = Reassembler::new(1 << 20, TIMEOUT);
    assert!(feed(&mut r, (1, 1), 0, in_order, now).is_empty());
    assert_eq!(r.partials(), 1);
    assert_eq!(feed(&mut r, (1, 1), 0, vec![last], now), [msg]);
}

#[test]
fn duplicates_are_ignored_and_not_counted_twice() {
    let msg = message(PIECE_LEN * 3, 3);
    let p = pieces(&msg);
    let now = Instant::now();
    let mut r = Reassembler::new(1 << 20, TIMEOUT);
    assert!(feed(&mut r, (1, 1), 9, vec![p[0].clone(), p[0].clone(), p[1].clone()], now).is_empty());
    let held = r.held_bytes();
    assert_eq!(held, 2 * PIECE_LEN + PARTIAL_COST);
    assert!(feed(&mut r, (1, 1), 9, vec![p[1].clone(), p[0].clone()], now).is_empty());
    assert_eq!(r.held_bytes(), held);
    assert_eq!(feed(&mut r, (1, 1), 9, vec![p[2].clone()], now), [msg]);
}

#[test]
fn partials_expire_after_the_timeout() {
    let msg = message(PIECE_LEN * 2, 4);
    let p = pieces(&msg);
    let t0 = Instant::now();
    let mut r = Reassembler::new(1 << 20, TIMEOUT);
    feed(&mut r, (1, 1), 1, vec![p[0].clone()], t0);
    feed(&mut r, (2, 1), 1, vec![p[0].clone()], t0 + TIMEOUT / 2);
    assert_eq!(r.expire(t0 + TIMEOUT - Duration::from_millis(1)), 0);
    assert_eq!(r.expire(t0 + TIMEOUT), 1);
    assert_eq!(r.partials(), 1);
    check(&r);
    // The survivor still completes; the expired one starts afresh and is incomplete.
    assert_eq!(feed(&mut r, (2, 1), 1, vec![p[1].clone()], t0 + TIMEOUT), [msg]);
    assert!(feed(&mut r, (1, 1), 1, vec![p[1].clone()], t0 + TIMEOUT).is_empty());
    assert_eq!(r.expire(t0 + TIMEOUT * 3), 1);
    assert_eq!((r.held_bytes(), r.partials()), (0, 0));
}

#[test]
fn inconsistent_pieces_are_refused_and_the_partial_kept() {
    let msg = message(PIECE_LEN * 3, 5);
    let p = pieces(&msg);
    let now = Instant::now();
    let mut r = Reassembler::new(1 << 20, TIMEOUT);
    feed(&mut r, (1, 1), 0, vec![p[0].clone()], now);
    let full = vec![0u8; PIECE_LEN];
    let err = |r: &mut Reassembler, index, count, bytes| r.add(1, 1, 0, index, count, bytes, now).unwrap_err();
    assert_eq!(err(&mut r, 1, 4, full.clone()), FragmentError::Inconsistent); // other count
    assert_eq!(err(&mut r, 0, 1, full.clone()), FragmentError::Inconsistent); // other count, alone
    assert_eq!(err(&mut r, 3, 3, full.clone()), FragmentError::Inconsistent); // index out of range
    assert_eq!(err(&mut r, 0, 0, full.clone()), FragmentError::Inconsistent); // no pieces at all
    assert_eq!(err(&mut r, 1, 3, vec![0; 10]), FragmentError::Inconsistent); // short middle piece
    assert_eq!(err(&mut r, 2, 3, Vec::new()), FragmentError::Inconsistent); // empty last piece
    assert_eq!(err(&mut r, 2, 3, vec![0; PIECE_LEN + 1]), FragmentError::TooLarge);
    assert_eq!(r.held_bytes(), PIECE_LEN + PARTIAL_COST);
    assert_eq!(feed(&mut r, (1, 1), 0, p[1..].to_vec(), now), [msg]);
}

#[test]
fn forged_count_beyond_the_budget_holds_nothing() {
    let now = Instant::now();
    let mut r = Reassembler::new(16 << 20, TIMEOUT);
    let piece = vec![0u8; PIECE_LEN];
    assert_eq!(r.add(1, 1, 0, 0, u16::MAX, piece.clone(), now), Err(FragmentError::OverBudget));
    assert_eq!((r.held_bytes(), r.partials()), (0, 0));
    // The largest count that can fit is accepted.
    let count = ((16 << 20) - PARTIAL_COST - 1) / PIECE_LEN + 1;
    assert_eq!(r.add(1, 1, 0, 0, count as u16, piece.clone(), now), Ok(None));
    assert_eq!(r.add(1, 1, 1, 0, count as u16 + 1, piece, now), Err(FragmentError::OverBudget));
}

#[test]
fn a_flood_from_one_sender_neither_exceeds_the_budget_nor_starves_another() {
    let budget = 64 * 1024;
    let now = Instant::now();
    let mut r = Reassembler::new(budget, TIMEOUT);
    let victim = message(PIECE_LEN * 10, 6);
    let mut victim_pieces = pieces(&victim).into_iter();
    let flood_piece = vec![0u8; PIECE_LEN];
    let mut done = Vec::new();
    for seq in 0..2000u64 {
        // Each flood message has 2 pieces and never completes.
        assert_eq!(r.add(66, 1, seq, 0, 2, flood_piece.clone(), now), Ok(None));
        check(&r);
        if seq % 100 == 50 {
            if let Some((index, count, bytes)) = victim_pieces.next() {
                done.extend(r.add(7, 1, 500, index, count, bytes, now).unwrap());
                check(&r);
            }
        }
    }
    assert_eq!(done, [victim]);
    assert!(r.held_bytes() > budget - PIECE_LEN - PARTIAL_COST, "the flooder may use what is free");
    // Now the flooder holds the budget: a newcomer's piece evicts the flooder, not the newcomer.
    let other = pieces(&message(PIECE_LEN * 3, 7));
    assert!(feed(&mut r, (8, 1), 0, other[..2].to_vec(), now).is_empty());
    assert_eq!(r.held_by[&(8, 1)], 2 * PIECE_LEN + PARTIAL_COST);
}

#[test]
fn a_sender_over_its_share_loses_its_own_message() {
    // Budget for ~6 full pieces: one sender holds 3, another's 5-piece message cannot fit.
    let budget = 6 * PIECE_LEN + 2 * PARTIAL_COST;
    let now = Instant::now();
    let mut r = Reassembler::new(budget, TIMEOUT);
    let small = pieces(&message(PIECE_LEN * 4, 8));
    let big = pieces(&message(PIECE_LEN * 5, 9));
    assert!(feed(&mut r, (1, 1), 0, small[..3].to_vec(), now).is_empty());
    assert!(feed(&mut r, (2, 1), 0, big[..3].to_vec(), now).is_empty());
    let (index, count, bytes) = big[3].clone();
    assert_eq!(r.add(2, 1, 0, index, count, bytes, now), Err(FragmentError::OverBudget));
    check(&r);
    assert_eq!(r.partials(), 1);
    // A completing piece needs no room.
    assert_eq!(feed(&mut r, (1, 1), 0, small[3..].to_vec(), now).len(), 1);
}

#[test]
fn forget_drops_every_incarnation_of_a_node() {
    let msg = message(PIECE_LEN * 2, 10);
    let p = pieces(&msg);
    let now = Instant::now();
    let mut r = Reassembler::new(1 << 20, TIMEOUT);
    for sender in [(1, 1), (1, 2), (2, 1)] {
        feed(&mut r, sender, 0, vec![p[0].clone()], now);
        feed(&mut r, sender, 5, vec![p[0].clone()], now);
    }
    r.forget(1);
    check(&r);
    assert_eq!(r.partials(), 2);
    assert_eq!(r.held_bytes(), 2 * (PIECE_LEN + PARTIAL_COST));
    assert!(feed(&mut r, (1, 1), 0, vec![p[1].clone()], now).is_empty());
    assert_eq!(feed(&mut r, (2, 1), 0, vec![p[1].clone()], now), [msg]);
}

/// A legit message: sender and first_seq unique to it.
#[derive(Debug, Clone)]
struct Sent {
    node: u64,
    first_seq: u64,
    bytes: Vec<u8>,
}

fn sent() -> impl Strategy<Value = Sent> {
    (0u64..4, any::<u8>(), 1usize..PIECE_LEN * 6).prop_map(|(node, seed, len)| Sent {
        node,
        first_seq: 0,
        bytes: message(len, seed),
    })
}

/// A forged piece from nodes 100.. (never those of legit messages).
fn forged() -> impl Strategy<Value = (u64, u64, u16, u16, usize)> {
    (100u64..103, 0u64..4, any::<u16>(), prop_oneof![1u16..8, any::<u16>()], 0usize..PIECE_LEN + 10)
}

proptest! {
    #[test]
    fn random_pieces_never_panic_nor_exceed_the_budget(
        mut msgs in prop::collection::vec(sent(), 1..8),
        forged in prop::collection::vec(forged(), 0..40),
        budget in 0usize..12 * PIECE_LEN,
        seed in any::<u64>(),
        drop_one_in in 2u32..20,
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        for (seq, m) in msgs.iter_mut().enumerate() {
            m.first_seq = seq as u64 * 100;
        }
        // Every piece of every message, minus random drops, plus forged ones, shuffled.
        let mut arrivals: Vec<(u64, u64, u16, u16, Vec<u8>)> = msgs
            .iter()
            .flat_map(|m| pieces(&m.bytes).into_iter().map(|(i, c, b)| (m.node, m.first_seq, i, c, b)))
            .filter(|_| rng.random_ratio(drop_one_in - 1, drop_one_in))
            .chain(forged.into_iter().map(|(node, seq, i, c, len)| (node, seq, i, c, vec![1; len])))
            .collect();
        arrivals.shuffle(&mut rng);
        let t0 = Instant::now();
        let mut r = Reassembler::new(budget, TIMEOUT);
        for (step, (node, first_seq, index, count, bytes)) in arrivals.into_iter().enumerate() {
            let now = t0 + Duration::from_millis(step as u64 * 50);
            if let Ok(Some(done)) = r.add(node, 1, first_seq, index, count, bytes, now) {
                if node < 100 {
                    let m = msgs.iter().find(|m| m.node == node && m.first_seq == first_seq).unwrap();
                    prop_assert_eq!(&done, &m.bytes);
                }
            }
            match rng.random_range(0..20) {
                0 => { r.expire(now); }
                1 => r.forget(rng.random_range(0..4)),
                _ => {}
            }
            check(&r);
        }
        r.expire(t0 + Duration::from_secs(3600));
        prop_assert_eq!((r.held_bytes(), r.partials()), (0, 0));
    }
}
