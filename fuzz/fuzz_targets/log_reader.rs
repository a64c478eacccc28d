//! Arbitrary log segments recovered on the simulated disk: recovery must
//! never panic; it either starts (possibly cutting a torn tail) or refuses
//! with an error. The first byte chooses between a raw file and a valid
//! segment header followed by the bytes, to reach the record reader.
#![no_main]

use std::io::Write;
use std::path::Path;

use kvstore::storage::fs::Fs;
use kvstore::storage::simfs::SimFs;
use kvstore::storage::{self, wal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let sim = SimFs::default();
    let data_path = Path::new("/f/kvstore.db");
    let dir = wal::dir_for(data_path);
    sim.create_dir_all(&dir).unwrap();
    let segment = dir.join(format!("{:020}.wal", 1));
    if mode % 2 == 0 {
        let mut file = sim.create(&segment).unwrap();
        file.write_all(rest).unwrap();
    } else {
        // A real header, then the fuzzer's records.
        drop(wal::Segment::create_with_salt(&sim, &dir, 1, 1, 0).unwrap());
        let mut file = sim.append(&segment).unwrap();
        file.write_all(rest).unwrap();
    }
    let _ = storage::open(&sim, data_path, 4);
});
