use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::clock::Version;
use crate::table::Data;

/// Two merging threads merge two batches at once: neither holds the queue while it merges.
/// Each hands its merged batch to a channel that nobody reads until both batches are in the
/// table, so a merger that held the queue until then would keep the other from its batch.
#[test]
fn mergers_merge_at_once() {
    let table = Table::new();
    let (work, batches) = mpsc::sync_channel::<Batch>(2);
    let batches = Mutex::new(batches);
    let sids = ["a-session", "another-session"];
    for (k, sid) in sids.iter().enumerate() {
        let version = Version { hlc: 1 + k as u64, node: 1 };
        let entry = Entry {
            data: Data::Live(Arc::from("{}")),
            data_version: version,
            cookie_version: version,
            cookie: None,
            expires_at: u64::MAX,
            local_expires_at: 0,
        };
        let mut batch = Batch::default();
        batch.push(sid, entry);
        work.send(batch).unwrap();
    }
    drop(work);
    let (give_back, merged) = mpsc::sync_channel::<Batch>(0);
    let both_in = std::thread::scope(|scope| {
        for _ in 0..2 {
            let (batches, table, give_back) = (&batches, &table, give_back.clone());
            scope.spawn(move || merge_batches(batches, table, move |batch| drop(give_back.send(batch))));
        }
        let both_in = || sids.iter().all(|sid| table.entry(sid).is_some());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !both_in() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let both = both_in();
        for _ in 0..2 {
            merged.recv().unwrap(); // lets the mergers go
        }
        both
    });
    assert!(both_in, "the second batch waited for the first merger to hand its batch back");
}
