//! The pipeline's ordering rules, with a scripted door and a log that only
//! records what it is handed: no socket, no disk.

use std::sync::Arc;

use bytes::Bytes;
use kvstore_client::{Command, Reply};

use super::pipeline::{Pipeline, MAX_IN_FLIGHT, MAX_WAITING_BYTES};
use super::{Door, Incoming, Step};
use crate::auth::Auth;
use crate::backup::Tees;
use crate::config::Limits;
use crate::db::Db;
use crate::engine::memory::Memory;
use crate::log::testing::Held;
use crate::storage::store::Store;

/// A door whose requests are `(id, command)`; it notes the order in which
/// requests were started.
struct Script {
    db: Db,
    started: Vec<u64>,
}

impl Door for Script {
    type Request = (u64, Command);
    type Reply = (u64, Reply);
    type Tag = u64;

    async fn read(&mut self) -> Incoming<Self::Request, Self::Reply> {
        Incoming::Closed
    }
    fn whole_buffered(&mut self) -> bool {
        false
    }
    fn partial(&self) -> bool {
        false
    }
    fn completed(&self) -> u64 {
        0
    }
    fn is_write(&self, (_, command): &Self::Request) -> bool {
        command.is_data_write()
    }
    fn size((_, command): &Self::Request) -> usize {
        crate::cmd::size(command)
    }
    async fn start(&mut self, (id, command): Self::Request) -> Step<Self> {
        self.started.push(id);
        if command.is_data_write() {
            Step::Write(command, id)
        } else {
            Step::Answer((id, crate::cmd::read(command, &self.db)))
        }
    }
    fn finish(&self, id: u64, reply: Reply) -> Self::Reply {
        (id, reply)
    }
    async fn feed(&mut self, _: Self::Reply) -> std::io::Result<()> {
        Ok(())
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn logged_in(&self) -> bool {
        true
    }
    fn closing(&self) -> bool {
        false
    }
}

fn setup() -> (Arc<Held>, Db, Script, Pipeline<Script>) {
    let log = Arc::new(Held::new(crate::log::MAX_QUEUED_BYTES, None));
    let tees = Arc::new(Tees::default());
    let engine = Arc::new(Memory::new(Arc::new(Store::new(4)), tees.clone()));
    let limits = Limits {
        max_key: 1024,
        max_value: 1 << 20,
        max_bulk_items: 1000,
        max_reply_bytes: 1 << 20,
        max_frame: 1 << 21,
    };
    let db = Db::new(engine, tees, log.clone(), limits, Arc::new(Auth::new(None)));
    let door = Script {
        db: db.clone(),
        started: Vec::new(),
    };
    (log, db, door, Pipeline::default())
}

fn set(id: u64) -> (u64, Command) {
    let key = Bytes::from(format!("k{id}"));
    (
        id,
        Command::Set {
            key,
            value: Bytes::from_static(b"v"),
        },
    )
}

fn get(id: u64) -> (u64, Command) {
    let key = Bytes::from(format!("k{id}"));
    (id, Command::Get { key })
}

/// The replies ready now, in the order they would be sent.
async fn drain(pipeline: &mut Pipeline<Script>, door: &mut Script, db: &Db) -> Vec<u64> {
    let mut ids = Vec::new();
    while let Some((id, _)) = pipeline.next_ready(door, db).await {
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn a_pipelined_burst_of_writes_is_one_log_message() {
    let (log, db, mut door, mut pipeline) = setup();
    pipeline.push(&mut door, set(1), true, &db).await;
    pipeline.push(&mut door, set(2), true, &db).await;
    // The last of the burst: nothing more buffered, but it follows the
    // deferred ones.
    pipeline.push(&mut door, set(3), false, &db).await;
    assert!(log.sizes().is_empty(), "held until the burst is read");
    pipeline.start_deferred(&db).await;
    assert_eq!(log.sizes(), [3]);
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [] as [u64; 0]);
    log.answer(0);
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [1, 2, 3]);
    assert!(pipeline.is_empty());
}

#[tokio::test]
async fn replies_leave_in_request_order() {
    let (log, db, mut door, mut pipeline) = setup();
    pipeline.push(&mut door, set(1), false, &db).await;
    pipeline.push(&mut door, set(2), false, &db).await;
    assert_eq!(log.sizes(), [1, 1]);
    // The second write is durable first: its reply still waits.
    log.answer(1);
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [] as [u64; 0]);
    log.answer(0);
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [1, 2]);
}

#[tokio::test]
async fn a_read_runs_only_after_the_writes_before_it() {
    let (log, db, mut door, mut pipeline) = setup();
    pipeline.push(&mut door, set(1), false, &db).await;
    pipeline.push(&mut door, get(2), false, &db).await;
    // Writes behind a waiting read wait for it, then go as one message.
    pipeline.push(&mut door, set(3), false, &db).await;
    pipeline.push(&mut door, set(4), false, &db).await;
    pipeline.push(&mut door, get(5), false, &db).await;
    assert_eq!(door.started, [1]);
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [] as [u64; 0]);
    log.answer(0);
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [1, 2]);
    assert_eq!(door.started, [1, 2, 3, 4]);
    assert_eq!(log.sizes(), [0, 2]);
    log.answer(1);
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [3, 4, 5]);
    assert_eq!(door.started, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn reads_with_no_write_before_them_answer_at_once() {
    let (log, db, mut door, mut pipeline) = setup();
    pipeline.push(&mut door, get(1), true, &db).await;
    pipeline.push(&mut door, get(2), false, &db).await;
    assert_eq!(drain(&mut pipeline, &mut door, &db).await, [1, 2]);
    assert!(log.sizes().is_empty());
}

#[tokio::test]
async fn a_full_pipeline_stops_reading() {
    let (_log, db, mut door, mut pipeline) = setup();
    pipeline.push(&mut door, set(0), false, &db).await;
    for id in 1..MAX_IN_FLIGHT as u64 {
        assert!(pipeline.has_room(), "{id}");
        pipeline.push(&mut door, get(id), false, &db).await;
    }
    assert!(!pipeline.has_room());

    let (_log, db, mut door, mut pipeline) = setup();
    pipeline.push(&mut door, set(0), false, &db).await;
    let big = Bytes::from(vec![b'v'; 1 << 20]);
    let mut id = 0;
    while pipeline.has_room() {
        id += 1;
        let value = big.clone();
        let key = Bytes::from(format!("k{id}"));
        pipeline
            .push(&mut door, (id, Command::Set { key, value }), true, &db)
            .await;
        // Writes behind a waiting read are counted too.
        pipeline.push(&mut door, get(id), false, &db).await;
    }
    assert_eq!(id as usize, MAX_WAITING_BYTES / (1 << 20));
}
