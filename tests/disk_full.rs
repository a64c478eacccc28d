//! A full disk (ENOSPC), on the simulated disk: the write that does not fit
//! is refused with a clear error, every later write too, nothing acknowledged
//! is lost, and the log holds no torn record that would trouble the next
//! start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kvstore::commit::{GroupCommit, Settings};
use kvstore::engine::memory::Memory;
use kvstore::log::Log;
use kvstore::storage::fs::Fs;
use kvstore::storage::op::WriteOp;
use kvstore::storage::simfs::{Faults, SimFs};
use kvstore::{storage, Error, SyncMode};

#[test]
fn a_full_disk_refuses_writes_and_keeps_every_acknowledged_one() {
    let data = PathBuf::from("/sim/kvstore.db");
    let sim = SimFs::new(Faults {
        capacity: Some(16 * 1024),
        ..Faults::default()
    });
    sim.create_dir_all(Path::new("/sim")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (acked, refused) = runtime.block_on(async {
        let recovered = storage::open(&sim, &data, 4).unwrap();
        let commit = GroupCommit::start(
            Arc::new(Memory::new(recovered.store.clone(), Arc::default())),
            recovered.segment,
            recovered.last_seq,
            Settings {
                sync: SyncMode::Always,
                sync_interval: Duration::from_secs(1),
                snapshot_after_bytes: u64::MAX,
                data: data.clone(),
                fs: Arc::new(sim.clone()),
            },
        )
        .unwrap();
        let committer = &commit;
        let mut acked = Vec::new();
        let mut refused = None;
        for i in 0..100 {
            let op = WriteOp::Set {
                key: Bytes::from(format!("k{i}")),
                value: Bytes::from(vec![b'v'; 300]),
            };
            match committer.submit(op.into()).await.unwrap().wait().await {
                Ok(_) => acked.push(i),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (i, error) = refused.expect("the disk filled up");
        assert!(
            matches!(&error, Error::StorageFailed(m) if m.contains("No space left on device")),
            "{error}"
        );
        assert!(
            recovered.store.get(format!("k{i}").as_bytes()).is_none(),
            "a refused write is not visible"
        );
        let later = committer
            .submit(
                WriteOp::Delete {
                    key: Bytes::from("k0"),
                }
                .into(),
            )
            .await;
        assert!(
            matches!(later, Err(Error::StorageFailed(_))),
            "writes stay fenced"
        );
        assert!(
            commit.close().await.is_err(),
            "shutdown reports the failure"
        );
        (acked, i)
    });
    assert!(acked.len() > 20, "only {} writes fit", acked.len());

    // Both what a reader of the disk sees now and what a power cut would
    // leave recover every acknowledged write and not the refused one.
    for image in [sim.crash_image(None), sim.clone()] {
        let recovered = storage::open(&image, &data, 4).expect("starts without repair");
        for i in &acked {
            assert_eq!(
                recovered
                    .store
                    .get(format!("k{i}").as_bytes())
                    .map(|v| v.len()),
                Some(300),
                "k{i}"
            );
        }
        assert!(recovered
            .store
            .get(format!("k{refused}").as_bytes())
            .is_none());
    }
}
