//! Arbitrary snapshot files loaded on the simulated disk: loading must never
//! panic nor allocate from a claimed length beyond the file; it loads or
//! refuses with an error.
#![no_main]

use std::io::Write;
use std::path::Path;

use kvstore::storage::fs::Fs;
use kvstore::storage::simfs::SimFs;
use kvstore::storage::snapshot;
use kvstore::storage::store::Store;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let sim = SimFs::default();
    sim.create_dir_all(Path::new("/f")).unwrap();
    let path = Path::new("/f/kvstore.db");
    let mut file = sim.create(path).unwrap();
    file.write_all(data).unwrap();
    drop(file);
    let _ = snapshot::load(&sim, path, &Store::new(4));
});
