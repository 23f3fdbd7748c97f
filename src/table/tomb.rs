//! A destroyed session's tombstone in one 56-byte allocation (the allocator's 64-byte chunk):
//! the destroy's version, how long copies of the session may live elsewhere (for the retention),
//! and the sid. A hash set slot holds only its pointer. Kept in this form while the session's
//! cookie register is void (see `Entry::merge`) and the sid is at most `MAX_SID` bytes (an
//! express-session sid is 32 characters); otherwise the tombstone is a full entry.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use super::entry::tombstone_purge_at;
use super::{Data, Entry};
use crate::clock::Version;

pub const MAX_SID: usize = 32;
/// The version (16 bytes), the expiry (6), the sid's length (1), a spare byte, the sid.
const BYTES: usize = 24 + MAX_SID;
/// Expiries are kept in 48 bits of epoch ms (until the year 10889).
const MAX_EXPIRY: u64 = (1 << 48) - 1;

pub struct Tomb(Box<[u8; BYTES]>);

impl Tomb {
    /// The compact form of `entry`, when it is a tombstone that has one.
    pub fn of(sid: &str, entry: &Entry) -> Option<Tomb> {
        let void = matches!(entry.data, Data::Deleted) && entry.cookie_version == Version::ZERO;
        if !void || sid.len() > MAX_SID {
            return None;
        }
        let mut bytes = Box::new([0u8; BYTES]);
        bytes[..8].copy_from_slice(&entry.data_version.hlc.to_be_bytes());
        bytes[8..16].copy_from_slice(&entry.data_version.node.to_be_bytes());
        bytes[16..22].copy_from_slice(&entry.expires_at.min(MAX_EXPIRY).to_be_bytes()[2..]);
        bytes[22] = sid.len() as u8;
        bytes[24..24 + sid.len()].copy_from_slice(sid.as_bytes());
        Some(Tomb(bytes))
    }

    fn sid_bytes(&self) -> &[u8] {
        &self.0[24..24 + self.0[22] as usize]
    }

    pub fn sid(&self) -> &str {
        // Copied from a `&str`: always UTF-8.
        std::str::from_utf8(self.sid_bytes()).unwrap_or_default()
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_be_bytes(self.0[at..at + 8].try_into().unwrap_or_default())
    }

    pub fn version(&self) -> Version {
        Version { hlc: self.u64_at(0), node: self.u64_at(8) }
    }

    fn expires_at(&self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes[2..].copy_from_slice(&self.0[16..22]);
        u64::from_be_bytes(bytes)
    }

    pub fn purge_at(&self, retention_ms: u64) -> u64 {
        tombstone_purge_at(self.version(), self.expires_at(), retention_ms)
    }

    /// The tombstone as the entry it stands for.
    pub fn entry(&self) -> Entry {
        Entry { data: Data::Deleted, data_version: self.version(), expires_at: self.expires_at(), ..Entry::absent() }
    }
}

/// Found by its sid's bytes (`HashSet::get(sid.as_bytes())`): hashed and compared as them.
impl Hash for Tomb {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sid_bytes().hash(state);
    }
}

impl PartialEq for Tomb {
    fn eq(&self, other: &Self) -> bool {
        self.sid_bytes() == other.sid_bytes()
    }
}

impl Eq for Tomb {}

impl Borrow<[u8]> for Tomb {
    fn borrow(&self) -> &[u8] {
        self.sid_bytes()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const SID: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";

    fn tombstone(version: Version, expires_at: u64) -> Entry {
        Entry { data: Data::Deleted, data_version: version, expires_at, ..Entry::absent() }
    }

    /// A slot of the set is one pointer; the allocation, with a 32-character sid, one 64-byte
    /// chunk (56 bytes asked, 8 of the allocator's header).
    #[test]
    fn a_tombstone_is_one_pointer_to_56_bytes() {
        assert_eq!(std::mem::size_of::<Tomb>(), 8);
        assert_eq!(BYTES, 56);
        assert_eq!(SID.len(), MAX_SID);
    }

    #[test]
    fn it_stands_for_the_entry_it_was_made_of() {
        let version = Version { hlc: u64::MAX - 3, node: 0xfeed_beef };
        let entry = tombstone(version, 1_800_000_000_000);
        let tomb = Tomb::of(SID, &entry).expect("compact");
        assert_eq!((tomb.sid(), tomb.entry()), (SID, entry));
        assert_eq!(Tomb::of(SID, &tombstone(version, u64::MAX)).unwrap().entry().expires_at, MAX_EXPIRY);
        let mut set = HashSet::new();
        set.insert(tomb);
        assert!(set.contains(SID.as_bytes()));
        assert!(!set.contains(&SID.as_bytes()[1..]));
    }

    #[test]
    fn only_void_tombstones_of_short_sids_are_compact() {
        let version = Version { hlc: 9, node: 1 };
        let long = format!("{SID}x");
        assert!(Tomb::of(&long, &tombstone(version, 0)).is_none(), "a sid of 33 bytes");
        let touched = Entry { cookie_version: Version { hlc: 10, node: 2 }, ..tombstone(version, 0) };
        assert!(Tomb::of(SID, &touched).is_none(), "touched after the destroy");
        assert!(Tomb::of(SID, &Entry::absent()).is_none());
    }
}
