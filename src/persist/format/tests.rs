use super::*;
use proptest::prelude::*;
use std::sync::Arc;

fn header() -> Header {
    Header { cluster: "shop".into(), node: 7, incarnation: 9, written_at: 1_700_000_000_000, key_id: 0, nonce: [3; 16] }
}

fn entry(n: u64, data: Data, cookie: Option<&str>) -> Entry {
    Entry {
        data,
        data_version: Version { hlc: n << 16, node: 5 },
        cookie_version: Version { hlc: (n << 16) + 1, node: 6 },
        cookie: cookie.map(Arc::from),
        expires_at: 1_700_000_000_000 + n,
        local_expires_at: if n.is_multiple_of(4) { 1_700_000_060_000 + n } else { 0 },
    }
}

fn samples(n: usize, doc_bytes: usize) -> Vec<(String, Entry)> {
    (0..n)
        .map(|i| {
            let data = match i % 5 {
                0 => Data::Deleted,
                1 => Data::Absent,
                _ => Data::Live(format!(r#"{{"i":{i},"pad":"{}"}}"#, "é".repeat(doc_bytes / 2)).into()),
            };
            (format!("sid-{i}-\u{2603}"), entry(i as u64, data, (i % 3 == 0).then_some(r#"{"maxAge":1}"#)))
        })
        .collect()
}

fn encode(entries: &[(String, Entry)], keys: &Keys) -> Vec<u8> {
    let mut encoder = Encoder::new(header(), keys);
    let mut out = Vec::new();
    for (sid, e) in entries {
        encoder.push(sid, e);
        if let Some(bytes) = encoder.take() {
            let n = bytes.len();
            out.extend_from_slice(bytes);
            encoder.taken(n);
        }
    }
    encoder.finish(Version { hlc: 77, node: 1 }, 99 << 16, 1_700_000_000_500);
    out.extend_from_slice(encoder.take().unwrap());
    out
}

type Decoded = (Header, End, Vec<(String, Entry)>);

fn decode_all(bytes: &[u8], cluster: &str, keys: &Keys) -> Result<Decoded, FormatError> {
    let mut got = Vec::new();
    let (header, end) = decode(bytes, bytes.len() as u64, cluster, keys, |sid, e| got.push((sid.to_owned(), e)))
        .map_err(|e| match e {
            DecodeError::Format(f) => f,
            DecodeError::Io(e) => panic!("io error reading a slice: {e}"),
        })?;
    Ok((header, end, got))
}

fn plain() -> Keys {
    Keys::new("shop", &[])
}

fn sealed(secrets: &[&str]) -> Keys {
    let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::Key(Sha256::digest(s.as_bytes()).into())).collect();
    Keys::new("shop", &secrets)
}

#[test]
fn round_trip_plain_and_sealed_across_frames() {
    let entries = samples(6_000, 1_000); // several frames of FRAME_BYTES
    for keys in [plain(), sealed(&["k"])] {
        let bytes = encode(&entries, &keys);
        let (h, end, got) = decode_all(&bytes, "shop", &keys).unwrap();
        assert_eq!(h.key_id, keys.sealing_id());
        assert_eq!((h.cluster.as_str(), h.node, h.written_at), ("shop", 7, 1_700_000_000_000));
        assert_eq!(got, entries);
        assert_eq!(end.entries, 6_000);
        assert_eq!(end.sessions, 3_600);
        assert_eq!(end.clear_mark, Version { hlc: 77, node: 1 });
        assert_eq!(end.clock, 99 << 16);
        let frames = bytes.len() / FRAME_BYTES;
        assert!(frames >= 2, "{frames}");
    }
}

#[test]
fn sealed_snapshots_hide_the_sessions() {
    let entries = samples(10, 100);
    let bytes = encode(&entries, &sealed(&["k"]));
    assert!(!bytes.windows(5).any(|w| w == b"\"pad\""), "session JSON in a sealed file");
    assert!(!bytes.windows(5).any(|w| w == b"sid-1"), "sid in a sealed file");
    let bytes = encode(&entries, &plain());
    assert!(bytes.windows(5).any(|w| w == b"\"pad\""));
}

#[test]
fn an_empty_table_round_trips() {
    let bytes = encode(&[], &plain());
    let (_, end, got) = decode_all(&bytes, "shop", &plain()).unwrap();
    assert_eq!((end.entries, got.len()), (0, 0));
}

#[test]
fn each_kind_of_foreign_file_is_told_apart() {
    let entries = samples(20, 50);
    let bytes = encode(&entries, &plain());
    assert_eq!(decode_all(&bytes, "blog", &plain()).unwrap_err(), FormatError::ForeignCluster("shop".into()));
    assert_eq!(decode_all(&bytes, "shop", &sealed(&["k"])).unwrap_err(), FormatError::Unsealed);
    let with_k = encode(&entries, &sealed(&["k"]));
    assert_eq!(decode_all(&with_k, "shop", &plain()).unwrap_err(), FormatError::Sealed);
    let id = sealed(&["k"]).sealing_id();
    assert_eq!(decode_all(&with_k, "shop", &sealed(&["other"])).unwrap_err(), FormatError::UnknownKey(id));
    // A key ring opens a snapshot sealed with any of its keys; a rotated-out key does not.
    assert_eq!(decode_all(&with_k, "shop", &sealed(&["new", "k"])).unwrap().2, entries);
    assert!(matches!(decode_all(&with_k, "shop", &sealed(&["new"])), Err(FormatError::UnknownKey(_))));
    let mut future = bytes.clone();
    future[8..10].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(decode_all(&future, "shop", &plain()).unwrap_err(), FormatError::FutureFormat(2));
    assert_eq!(decode_all(b"{\"not\":\"a snapshot\"}", "shop", &plain()).unwrap_err(), FormatError::NotASnapshot);
    assert_eq!(decode_all(b"", "shop", &plain()).unwrap_err(), FormatError::NotASnapshot);
    assert_eq!(decode_all(b"ESMS", "shop", &plain()).unwrap_err(), FormatError::Truncated);
}

#[test]
fn frames_of_another_file_are_rejected() {
    let entries = samples(200, 50);
    let a = encode(&entries, &plain());
    let mut other = header();
    other.written_at += 1;
    let keys = plain();
    let mut encoder = Encoder::new(other, &keys);
    entries.iter().for_each(|(sid, e)| encoder.push(sid, e));
    encoder.finish(Version::ZERO, 0, 0);
    let b = encoder.take().unwrap().to_vec();
    // b's header with a's frames: every frame check is bound to its header.
    let header_len = Header::decode(&a).unwrap().1;
    let spliced = [&b[..header_len], &a[header_len..]].concat();
    assert!(matches!(decode_all(&spliced, "shop", &plain()), Err(FormatError::Corrupted(_))));
}

fn corruption_is_detected(bytes: &[u8], keys: &Keys, pos: usize, xor: u8) {
    let mut bad = bytes.to_vec();
    bad[pos] ^= xor;
    let result = decode_all(&bad, "shop", keys);
    assert!(result.is_err(), "byte {pos} ^ {xor:#x} of {} accepted", bytes.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any table round-trips.
    #[test]
    fn any_entries_round_trip(
        raw in prop::collection::vec(("[a-z\u{e9}\u{2603}]{0,12}", 0u8..3, ".{0,40}", any::<u64>(), any::<u64>(), (any::<u64>(), any::<u64>()), prop::option::of(".{0,20}")), 0..60),
        sealed_file in any::<bool>(),
    ) {
        let entries: Vec<(String, Entry)> = raw.into_iter().map(|(sid, kind, doc, dv, cv, (exp, local_exp), cookie)| {
            let data = match kind { 0 => Data::Absent, 1 => Data::Live(doc.into()), _ => Data::Deleted };
            let e = Entry {
                data,
                data_version: Version { hlc: dv, node: cv },
                cookie_version: Version { hlc: cv, node: dv },
                cookie: cookie.map(Arc::from),
                expires_at: exp,
                local_expires_at: local_exp,
            };
            (sid, e)
        }).collect();
        let keys = if sealed_file { sealed(&["p"]) } else { plain() };
        let bytes = encode(&entries, &keys);
        let (_, end, got) = decode_all(&bytes, "shop", &keys).unwrap();
        prop_assert_eq!(got, entries.clone());
        prop_assert_eq!(end.entries, entries.len() as u64);
    }

    /// Every truncation of a snapshot is detected, and none panics.
    #[test]
    fn any_truncation_is_detected(n in 0usize..40, cut in any::<prop::sample::Index>(), sealed_file in any::<bool>()) {
        let keys = if sealed_file { sealed(&["p"]) } else { plain() };
        let bytes = encode(&samples(n, 30), &keys);
        let at = cut.index(bytes.len());
        let result = decode_all(&bytes[..at], "shop", &keys);
        prop_assert!(result.is_err(), "cut at {} of {} accepted", at, bytes.len());
    }

    /// Every change of a byte (any bits of it) is detected, and none panics.
    #[test]
    fn any_corruption_is_detected(n in 0usize..40, pos in any::<prop::sample::Index>(), xor in 1u8.., sealed_file in any::<bool>()) {
        let keys = if sealed_file { sealed(&["p"]) } else { plain() };
        let bytes = encode(&samples(n, 30), &keys);
        corruption_is_detected(&bytes, &keys, pos.index(bytes.len()), xor);
    }

    /// Random bytes after a valid header, or anywhere, never panic the decoder.
    #[test]
    fn garbage_never_panics(tail in prop::collection::vec(any::<u8>(), 0..400), keep in 0usize..120) {
        let bytes = encode(&samples(3, 10), &plain());
        let keep = keep.min(bytes.len());
        let input = [&bytes[..keep], &tail[..]].concat();
        let _ = decode_all(&input, "shop", &plain());
        let _ = decode_all(&tail, "shop", &plain());
    }
}

/// Every single byte of a small snapshot, flipped, is caught (not only a sample of them).
#[test]
fn every_byte_flipped_is_detected() {
    for keys in [plain(), sealed(&["p"])] {
        let bytes = encode(&samples(6, 20), &keys);
        for pos in 0..bytes.len() {
            corruption_is_detected(&bytes, &keys, pos, 0x01);
            corruption_is_detected(&bytes, &keys, pos, 0x80);
        }
    }
}
