//! Recovery from the files on disk: a torn tail is cut back to the longest
//! valid prefix; damage anywhere else stops the start with file and offset.
//! The log tests run for both engines: the log is shared, the engine it is
//! replayed into is not.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use kvstore::engine::{Engine, Span};
use kvstore::storage::fs::RealFs;
use kvstore::storage::op::WriteOp;
use kvstore::storage::store::Store;
use kvstore::storage::{self, snapshot, wal};
use kvstore::Error;

fn b(s: impl Into<Vec<u8>>) -> Bytes {
    Bytes::from(s.into())
}

/// A log of `ops` in segment 1, each written after the one before it was
/// synced (its `durable` field is the previous seq), as with one writer and
/// `--sync always`; returns the data path and each record's start offset
/// (plus the end of the file as the last element).
fn write_log(dir: &Path, ops: &[WriteOp]) -> (PathBuf, Vec<u64>) {
    write_log_with(dir, ops, |seq| seq - 1)
}

/// A log of `ops` whose record `seq` says `durable(seq)` was synced when it
/// was written.
fn write_log_with(
    dir: &Path,
    ops: &[WriteOp],
    durable: impl Fn(u64) -> u64,
) -> (PathBuf, Vec<u64>) {
    let data = dir.join("kvstore.db");
    let wal_dir = wal::dir_for(&data);
    fs::create_dir_all(&wal_dir).unwrap();
    let mut segment = wal::Segment::create(&RealFs, &wal_dir, 1, 1).unwrap();
    let mut offsets = vec![segment.len()];
    for (i, op) in ops.iter().enumerate() {
        let mut buf = Vec::new();
        let seq = i as u64 + 1;
        segment.encode_record(&mut buf, seq, durable(seq), op);
        segment.append(&buf).unwrap();
        offsets.push(segment.len());
    }
    segment.sync_data().unwrap();
    (data, offsets)
}

fn ops() -> Vec<WriteOp> {
    vec![
        WriteOp::Set {
            key: b("a"),
            value: b("1"),
        },
        WriteOp::Set {
            key: b("b"),
            value: b("2"),
        },
        WriteOp::Delete { key: b("a") },
        WriteOp::BulkSet {
            items: vec![(b("c"), b("3")), (b("d"), b("4")), (b("b"), b("22"))],
        },
        WriteOp::Set {
            key: b("e"),
            value: b("5"),
        },
    ]
}

fn model(ops: &[WriteOp]) -> BTreeMap<Bytes, Bytes> {
    let store = Store::new(1);
    (ops.iter()).zip(1..).for_each(|(op, seq)| {
        store.apply_at(op, seq);
    });
    dump(&store)
}

fn dump(store: &Store) -> BTreeMap<Bytes, Bytes> {
    let mut all = BTreeMap::new();
    for shard in 0..store.shard_count() {
        store.visit(shard, None, usize::MAX, |e| {
            let (k, v) = (e.key(), e.value());
            all.insert(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v));
        });
    }
    all
}

/// The engine a start replays the log into.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Memory,
    Disk,
}
const ENGINES: [Kind; 2] = [Kind::Memory, Kind::Disk];

/// Starts `engine` on `data`: every pair it then holds, and the last
/// sequence number in the log. The data's lock is released on return.
fn recover(engine: Kind, data: &Path) -> Result<(BTreeMap<Bytes, Bytes>, u64), Error> {
    match engine {
        Kind::Memory => storage::open(&RealFs, data, 4).map(|r| (dump(&r.store), r.last_seq)),
        Kind::Disk => {
            // A log with no engine named belongs to the memory engine.
            fs::write(wal::dir_for(data).join("ENGINE"), "disk\n").unwrap();
            storage::open_disk(&RealFs, data, 1 << 20, None, None).map(|r| {
                let everything = Span::prefix(b"", None, false);
                let pairs = r.engine.pairs(&everything, usize::MAX, usize::MAX);
                (pairs.unwrap().0.into_iter().collect(), r.last_seq)
            })
        }
    }
}

fn segment_file(data: &Path) -> PathBuf {
    wal::dir_for(data).join(format!("{:020}.wal", 1))
}

/// Cuts the zeros segment 1 wrote ahead, as a rotation does before the next
/// segment is created (only the newest segment may end in them).
fn rotated(data: &Path, offsets: &[u64]) {
    let file = fs::OpenOptions::new().write(true).open(segment_file(data));
    file.unwrap().set_len(*offsets.last().unwrap()).unwrap();
}

/// A copy of the data with the log cut or changed by `damage`.
fn damaged_copy(data: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kvstore.db");
    fs::create_dir_all(wal::dir_for(&copy)).unwrap();
    let mut bytes = fs::read(segment_file(data)).unwrap();
    damage(&mut bytes);
    fs::write(segment_file(&copy), bytes).unwrap();
    (dir, copy)
}

#[test]
fn a_log_cut_at_any_byte_of_its_last_records_recovers_the_longest_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let ops = ops();
    let (data, offsets) = write_log(dir.path(), &ops);
    // Every cut from the start of the third-last record to the end.
    let from = offsets[ops.len() - 3];
    let end = *offsets.last().unwrap();
    for (cut, engine) in (from..=end).flat_map(|cut| ENGINES.map(|e| (cut, e))) {
        let (_keep, copy) = damaged_copy(&data, |log| log.truncate(cut as usize));
        let (pairs, last_seq) =
            recover(engine, &copy).unwrap_or_else(|e| panic!("{engine:?}, cut at {cut}: {e}"));
        let whole = offsets.iter().filter(|&&o| o <= cut).count() - 1;
        assert_eq!(pairs, model(&ops[..whole]), "{engine:?}, cut at {cut}");
        assert_eq!(last_seq, whole as u64, "{engine:?}, cut at {cut}");
        // The torn bytes are gone from the file: the next append follows the prefix.
        assert_eq!(
            fs::metadata(segment_file(&copy)).unwrap().len(),
            offsets[whole],
            "{engine:?}, cut at {cut}"
        );
        // And a second start finds a clean log.
        let (again, _) = recover(engine, &copy).unwrap();
        assert_eq!(again, model(&ops[..whole]), "{engine:?}, cut at {cut}");
    }
}

/// A segment writes zeros ahead of its records (cheaper syncs): they are
/// the end of the log, not a torn tail, and a start cuts them off.
#[test]
fn the_zeros_written_ahead_of_the_records_end_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let ops = ops();
    let (data, offsets) = write_log(dir.path(), &ops);
    let end = *offsets.last().unwrap();
    let file_len = fs::metadata(segment_file(&data)).unwrap().len();
    assert!(file_len > end, "the segment has zeros ahead of its records");
    for engine in ENGINES {
        let (_keep, copy) = damaged_copy(&data, |_| {});
        let (pairs, last_seq) = recover(engine, &copy).unwrap();
        assert_eq!(pairs, model(&ops), "{engine:?}");
        assert_eq!(last_seq, ops.len() as u64, "{engine:?}");
        assert_eq!(fs::metadata(segment_file(&copy)).unwrap().len(), end);
    }
}

#[test]
fn a_flipped_bit_in_the_middle_of_the_log_refuses_the_start_with_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let ops = ops();
    let (data, offsets) = write_log(dir.path(), &ops);
    // Every bit of the second record (records follow it, so it is not a tail).
    let (start, end) = (offsets[1], offsets[2]);
    for (byte, engine) in (start..end).flat_map(|byte| ENGINES.map(|e| (byte, e))) {
        for bit in 0..8 {
            let (_keep, copy) = damaged_copy(&data, |log| log[byte as usize] ^= 1 << bit);
            match recover(engine, &copy) {
                Err(Error::Corrupt { path, offset, .. }) => {
                    assert_eq!(path, segment_file(&copy));
                    assert_eq!(offset, start, "{engine:?}, byte {byte} bit {bit}");
                }
                Err(other) => panic!("{engine:?}, byte {byte} bit {bit}: wrong error {other}"),
                Ok(_) => panic!("{engine:?}, byte {byte} bit {bit}: started on a damaged log"),
            }
        }
    }
}

/// One batch that no fdatasync confirmed (every record says nothing was
/// durable yet) reached the disk with a hole in its middle, as pages written
/// out of order before a power cut leave it: not corruption, a torn tail.
#[test]
fn a_hole_in_an_unsynced_batch_is_a_torn_tail_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let ops = ops();
    let (data, offsets) = write_log_with(dir.path(), &ops, |_| 0);
    for engine in ENGINES {
        let (_keep, copy) = damaged_copy(&data, |log| {
            log[offsets[1] as usize..offsets[3] as usize].fill(0);
        });
        let (pairs, last_seq) = recover(engine, &copy).unwrap();
        assert_eq!(pairs, model(&ops[..1]), "{engine:?}");
        assert_eq!(last_seq, 1, "{engine:?}");
        assert_eq!(fs::metadata(segment_file(&copy)).unwrap().len(), offsets[1]);
    }
}

/// The same hole, when a later record says the damaged ones were already
/// synced, is corruption of acknowledged writes.
#[test]
fn a_hole_before_a_record_written_after_it_was_synced_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let ops = ops();
    let (data, offsets) = write_log_with(dir.path(), &ops, |seq| if seq == 5 { 4 } else { 0 });
    for engine in ENGINES {
        let (_keep, copy) = damaged_copy(&data, |log| {
            log[offsets[1] as usize..offsets[3] as usize].fill(0);
        });
        match recover(engine, &copy) {
            Err(Error::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, offsets[1], "{engine:?}");
                assert!(reason.contains("durable"), "{engine:?}: {reason}");
            }
            Err(other) => panic!("{engine:?}: wrong error {other}"),
            Ok(_) => panic!("{engine:?}: started on a log that lost synced records"),
        }
    }
}

/// A client can put any bytes in a value, such as a well-formed record (plain
/// CRC32C) claiming a high sequence number and that everything before it was
/// synced. Record checksums are seeded with the segment's secret salt, so such
/// a forgery cannot make recovery mistake a torn tail for corruption.
#[test]
fn a_record_forged_inside_a_value_is_no_witness() {
    let dir = tempfile::tempdir().unwrap();
    let mut forged = Vec::new();
    let mut body = 1_000u64.to_le_bytes().to_vec(); // seq
    body.extend_from_slice(&999u64.to_le_bytes()); // durable: "all synced"
    body.extend_from_slice(
        &kvstore_client::codec::encode(&WriteOp::Delete { key: b("x") }).unwrap(),
    );
    kvstore::storage::record::append(&mut forged, &body);
    let mut ops = ops();
    ops.push(WriteOp::Set {
        key: b("evil"),
        value: Bytes::from(forged),
    });
    // One unsynced batch (durable 0 everywhere), torn by a hole before the
    // value that holds the forgery.
    let (data, offsets) = write_log_with(dir.path(), &ops, |_| 0);
    for engine in ENGINES {
        let (_keep, copy) = damaged_copy(&data, |log| {
            log[offsets[2] as usize..offsets[3] as usize].fill(0)
        });
        let (pairs, _) = recover(engine, &copy).expect("a torn tail, not corruption");
        assert_eq!(pairs, model(&ops[..2]), "{engine:?}");
    }
}

#[test]
fn a_damaged_segment_header_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = write_log(dir.path(), &ops());
    for (byte, engine) in [0usize, 7, 8, 12, 20, 27, 35]
        .into_iter()
        .flat_map(|byte| ENGINES.map(|e| (byte, e)))
    {
        let (_keep, copy) = damaged_copy(&data, |log| log[byte] ^= 0x10);
        let err = recover(engine, &copy).expect_err("refused");
        assert!(
            matches!(err, Error::Corrupt { offset: 0, .. }),
            "{engine:?}, byte {byte}: {err}"
        );
    }
}

#[test]
fn the_error_message_names_the_file_and_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (data, offsets) = write_log(dir.path(), &ops());
    for engine in ENGINES {
        let (_keep, copy) = damaged_copy(&data, |log| log[offsets[1] as usize + 10] ^= 1);
        let message = recover(engine, &copy).err().unwrap().to_string();
        assert!(message.contains("00000000000000000001.wal"), "{message}");
        assert!(
            message.contains(&format!("offset {}", offsets[1])),
            "{message}"
        );
    }
}

fn snapshot_of(dir: &Path, n: u32) -> (PathBuf, BTreeMap<Bytes, Bytes>) {
    let data = dir.join("kvstore.db");
    let store = Store::new(4);
    for i in 0..n {
        let set = WriteOp::Set {
            key: b(format!("key{i}")),
            value: b(vec![i as u8; (i % 300) as usize]),
        };
        store.apply_at(&set, u64::from(i) + 1);
    }
    snapshot::write(&RealFs, &data, &mut &store, 1, 1, || Ok(())).unwrap();
    (data, dump(&store))
}

#[test]
fn a_snapshot_loads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (data, expected) = snapshot_of(dir.path(), 5000);
    let recovered = storage::open(&RealFs, &data, 8).unwrap();
    assert_eq!(dump(&recovered.store), expected);
}

/// A snapshot of several blocks is decoded by several threads and its shards
/// built from their parts; it loads back exactly, also into another shard
/// count than it was written from.
#[test]
fn a_snapshot_of_many_blocks_loads_back_exactly_into_any_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let (data, expected) = snapshot_of(dir.path(), 40_000);
    assert!(
        fs::metadata(&data).unwrap().len() > 4 << 20,
        "want several blocks"
    );
    for shards in [1, 3, 64] {
        let recovered = storage::open(&RealFs, &data, shards).unwrap();
        assert_eq!(recovered.store.len(), expected.len());
        let bytes = |f: fn(&(&Bytes, &Bytes)) -> usize| expected.iter().map(|p| f(&p) as u64).sum();
        assert_eq!(
            recovered.store.bytes(),
            (bytes(|(k, _)| k.len()), bytes(|(_, v)| v.len()))
        );
        assert_eq!(dump(&recovered.store), expected, "{shards} shards");
    }
}

/// A block whose checksum is right but whose entries do not fit it (a writer
/// bug, not disk damage) is reported at that block's offset, even though
/// another thread decodes it while the reader has gone on.
#[test]
fn a_malformed_block_is_reported_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let mut file = b"KVSTSNAP".to_vec();
    let mut header = vec![1u8];
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&1u64.to_le_bytes());
    header.extend_from_slice(&1u64.to_le_bytes());
    kvstore::storage::record::append(&mut file, &header);
    let mut good = vec![2u8];
    good.extend_from_slice(&1u32.to_le_bytes());
    good.extend_from_slice(&1u32.to_le_bytes());
    good.extend_from_slice(b"kv");
    kvstore::storage::record::append(&mut file, &good);
    let bad_at = file.len() as u64;
    let mut bad = vec![2u8];
    bad.extend_from_slice(&100u32.to_le_bytes()); // a 100-byte key in 2 bytes
    bad.extend_from_slice(&1u32.to_le_bytes());
    bad.extend_from_slice(b"kv");
    kvstore::storage::record::append(&mut file, &bad);
    let mut footer = vec![3u8];
    footer.extend_from_slice(&2u64.to_le_bytes());
    footer.extend_from_slice(&2u64.to_le_bytes());
    kvstore::storage::record::append(&mut file, &footer);
    fs::write(&data, &file).unwrap();
    match storage::open(&RealFs, &data, 4) {
        Err(Error::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, bad_at);
            assert!(reason.contains("key extends past its block"), "{reason}");
        }
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("loaded a malformed block"),
    }
}

#[test]
fn any_damage_to_a_snapshot_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = snapshot_of(dir.path(), 5000);
    let original = fs::read(&data).unwrap();
    let len = original.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for at in (0..len).step_by(len / 97 + 1).chain([len - 1]) {
        let mut bytes = original.clone();
        bytes[at] ^= 0x04;
        cases.push((format!("bit flipped at {at}"), bytes));
    }
    for cut in (0..len).step_by(len / 31 + 1).chain([len - 1]) {
        cases.push((format!("cut at {cut}"), original[..cut].to_vec()));
    }
    let mut extended = original.clone();
    extended.extend_from_slice(b"junk");
    cases.push(("bytes after the footer".into(), extended));
    for (what, bytes) in cases {
        fs::write(&data, &bytes).unwrap();
        let _ = fs::remove_dir_all(wal::dir_for(&data));
        match storage::open(&RealFs, &data, 4) {
            Err(Error::Corrupt { path, .. }) => assert_eq!(path, data, "{what}"),
            Err(other) => panic!("{what}: wrong error {other}"),
            Ok(_) => panic!("{what}: loaded a damaged snapshot"),
        }
    }
}

#[test]
fn a_missing_snapshot_is_noticed_when_the_log_does_not_start_at_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("kvstore.db");
    let wal_dir = wal::dir_for(&data);
    fs::create_dir_all(&wal_dir).unwrap();
    wal::Segment::create(&RealFs, &wal_dir, 3, 100).unwrap();
    let err = storage::open(&RealFs, &data, 4).err().expect("refused");
    assert!(err.to_string().contains("snapshot is missing"), "{err}");
    // The disk engine, which has no checkpoint and so replays from segment 1.
    let err = recover(Kind::Disk, &data).expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("the log starts at segment 3"), "{message}");
}

#[test]
fn a_missing_segment_between_others_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = write_log(dir.path(), &ops());
    wal::Segment::create(&RealFs, &wal::dir_for(&data), 3, 6).unwrap();
    for engine in ENGINES {
        let err = recover(engine, &data).expect_err("refused");
        assert!(
            err.to_string().contains("segment 2 is missing"),
            "{engine:?}: {err}"
        );
    }
}

#[test]
fn a_segment_whose_header_was_torn_at_creation_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let ops = ops();
    let (data, offsets) = write_log(dir.path(), &ops);
    rotated(&data, &offsets);
    let wal_dir = wal::dir_for(&data);
    wal::Segment::create(&RealFs, &wal_dir, 2, ops.len() as u64 + 1).unwrap();
    let second = wal_dir.join(format!("{:020}.wal", 2));
    let header = fs::read(&second).unwrap();
    fs::write(&second, &header[..header.len() / 2]).unwrap();
    let recovered = storage::open(&RealFs, &data, 4).unwrap();
    assert_eq!(dump(&recovered.store), model(&ops));
    assert_eq!(recovered.segment.id(), 2);
    assert!(recovered.segment.is_empty());
}

#[test]
fn segments_covered_by_the_snapshot_are_dropped_and_later_ones_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let ops = ops();
    let (data, _) = write_log(dir.path(), &ops[..2]);
    // Snapshot of the first two writes, saying the log goes on at segment 2.
    let store = Store::new(2);
    (ops[..2].iter()).zip(1..).for_each(|(op, seq)| {
        store.apply_at(op, seq);
    });
    snapshot::write(&RealFs, &data, &mut &store, 2, 3, || Ok(())).unwrap();
    let wal_dir = wal::dir_for(&data);
    let mut second = wal::Segment::create(&RealFs, &wal_dir, 2, 3).unwrap();
    let mut buf = Vec::new();
    for (i, op) in ops[2..].iter().enumerate() {
        let seq = 3 + i as u64;
        second.encode_record(&mut buf, seq, seq - 1, op);
    }
    second.append(&buf).unwrap();
    drop(second);
    let recovered = storage::open(&RealFs, &data, 4).unwrap();
    assert_eq!(dump(&recovered.store), model(&ops));
    assert_eq!(recovered.last_seq, ops.len() as u64);
    assert_eq!(wal::list_segments(&RealFs, &wal_dir).unwrap(), vec![2]);
}

#[test]
fn a_segment_that_does_not_continue_the_sequence_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let (data, offsets) = write_log(dir.path(), &ops());
    rotated(&data, &offsets);
    // Segment 2 claims to start at 9, but segment 1 ended at 5.
    wal::Segment::create(&RealFs, &wal::dir_for(&data), 2, 9).unwrap();
    for engine in ENGINES {
        let err = recover(engine, &data).expect_err("refused");
        assert!(
            err.to_string().contains("sequence number"),
            "{engine:?}: {err}"
        );
    }
}
