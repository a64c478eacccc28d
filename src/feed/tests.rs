use super::*;

fn put(revision: u64, key: &str) -> Event {
    Event {
        revision,
        key: Bytes::copy_from_slice(key.as_bytes()),
        kind: EventKind::Put {
            value: Bytes::from_static(b"v"),
            deadline: None,
        },
    }
}

fn revisions(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

#[tokio::test]
async fn a_watch_reads_the_history_from_its_revision_then_live_changes() {
    let feed = Feed::new(1 << 20, 16);
    for revision in 1..=3 {
        feed.publish(revision, vec![put(revision, "a")]);
    }
    let mut watcher = feed.watch(Bytes::new(), 2).unwrap();
    feed.publish(4, vec![put(4, "a")]);
    assert_eq!(
        revisions(&watcher.next(usize::MAX).await.unwrap()),
        [2, 3, 4]
    );
    assert_eq!(watcher.position(), 4);
    let mut from_now = feed.watch(Bytes::new(), 0).unwrap();
    feed.publish(5, vec![put(5, "a")]);
    assert_eq!(revisions(&from_now.next(usize::MAX).await.unwrap()), [5]);
    assert_eq!(revisions(&watcher.next(usize::MAX).await.unwrap()), [5]);
}

#[tokio::test]
async fn the_position_counts_only_what_was_delivered() {
    let feed = Feed::new(1 << 20, 16);
    let last = 2 * GATHER_EVENTS as u64;
    for revision in 1..=last {
        feed.publish(revision, vec![put(revision, "a")]);
    }
    let mut watcher = feed.watch(Bytes::new(), 1).unwrap();
    assert_eq!(watcher.position(), 0, "nothing delivered yet");
    let first = watcher.next(usize::MAX).await.unwrap();
    assert_eq!(watcher.position(), first.last().unwrap().revision);
    assert!(watcher.position() < last, "the rest of the backlog waits");
    let rest = watcher.next(usize::MAX).await.unwrap();
    assert_eq!(first.len() + rest.len(), last as usize);
    assert_eq!(watcher.position(), last);
}

#[tokio::test]
async fn a_watch_sees_its_prefix_and_every_clear() {
    let feed = Feed::new(1 << 20, 16);
    let mut watcher = feed.watch(Bytes::from_static(b"app/"), 0).unwrap();
    feed.publish(1, vec![put(1, "other"), put(1, "app/x")]);
    feed.publish(2, vec![put(2, "other")]);
    let mut clear = Vec::new();
    changes(&WriteOp::Clear, &Applied::Stored, 3, &mut clear);
    feed.publish(3, clear);
    let events = watcher.next(usize::MAX).await.unwrap();
    let keys: Vec<_> = events.iter().map(|e| (e.revision, e.key.clone())).collect();
    assert_eq!(keys, [(1, Bytes::from("app/x")), (3, Bytes::new())]);
    assert_eq!(events[1].kind, EventKind::Clear);
}

#[tokio::test]
async fn a_revision_the_history_dropped_is_compacted() {
    // Room for about two events.
    let feed = Feed::new(2 * (EVENT_OVERHEAD + 2), 16);
    for revision in 1..=5 {
        feed.publish(revision, vec![put(revision, "a")]);
    }
    assert_eq!(feed.span(), (4, 5));
    let compacted = feed.watch(Bytes::new(), 3).err();
    assert_eq!(compacted, Some(Ended::Compacted { oldest: 4 }));
    let mut watcher = feed.watch(Bytes::new(), 4).unwrap();
    assert_eq!(revisions(&watcher.next(usize::MAX).await.unwrap()), [4, 5]);
    // A restart or an install starts the feed over at its position.
    feed.start_at(9);
    assert_eq!(feed.span(), (10, 9));
    let compacted = feed.watch(Bytes::new(), 9).err();
    assert_eq!(compacted, Some(Ended::Compacted { oldest: 10 }));
}

#[tokio::test]
async fn without_history_a_skipped_batch_is_compacted_unless_watched() {
    let feed = Feed::new(0, 16);
    assert!(feed.skip(1));
    let compacted = feed.watch(Bytes::new(), 1).err();
    assert_eq!(compacted, Some(Ended::Compacted { oldest: 2 }));
    let mut watcher = feed.watch(Bytes::new(), 0).unwrap();
    assert!(!feed.skip(2), "a watcher wants the changes");
    feed.publish(2, vec![put(2, "a")]);
    assert_eq!(revisions(&watcher.next(usize::MAX).await.unwrap()), [2]);
}

#[tokio::test]
async fn a_watcher_that_falls_behind_ends_and_publishing_goes_on() {
    let feed = Feed::new(0, 4);
    let mut slow = feed.watch(Bytes::new(), 0).unwrap();
    for revision in 1..=10 {
        feed.publish(revision, vec![put(revision, "a")]);
    }
    assert_eq!(slow.next(usize::MAX).await, Err(Ended::Slow { behind: 6 }));
    let mut fresh = feed.watch(Bytes::new(), 0).unwrap();
    feed.publish(11, vec![put(11, "a")]);
    assert_eq!(revisions(&fresh.next(usize::MAX).await.unwrap()), [11]);
}

#[tokio::test]
async fn a_reset_ends_watchers() {
    let feed = Feed::new(1 << 20, 4);
    let mut watcher = feed.watch(Bytes::new(), 0).unwrap();
    feed.reset(40);
    assert_eq!(
        watcher.next(usize::MAX).await,
        Err(Ended::Reset { position: 40 })
    );
    assert!(feed.watch(Bytes::new(), 40).is_err());
    assert!(feed.watch(Bytes::new(), 41).is_ok());
}

#[test]
fn only_what_a_write_changed_is_a_change() {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let mut out = Vec::new();
    let delete = WriteOp::Delete { key: b("gone") };
    changes(&delete, &Applied::Deleted(false), 1, &mut out);
    let persist = WriteOp::Persist { key: b("gone") };
    changes(&persist, &Applied::Bool(false), 2, &mut out);
    assert_eq!(out, []);
    let many = WriteOp::DeleteMany {
        keys: vec![b("a"), b("b")],
    };
    changes(&many, &Applied::Removed(vec![b("b")]), 3, &mut out);
    let swept = WriteOp::Expire {
        keys: vec![b("c"), b("d")],
        now: 9,
    };
    changes(&swept, &Applied::Removed(vec![b("c")]), 4, &mut out);
    let kinds: Vec<_> = out
        .iter()
        .map(|e| (e.revision, e.key.clone(), e.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (3, b("b"), EventKind::Delete),
            (4, b("c"), EventKind::Expired)
        ]
    );
}

/// Watches started while a thread publishes each get every change from
/// their revision on, once and in order.
#[test]
fn watches_started_during_publishing_miss_nothing_and_repeat_nothing() {
    const LAST: u64 = 5_000;
    let feed = Arc::new(Feed::new(64 << 10, LAST as usize));
    let publisher = {
        let feed = feed.clone();
        std::thread::spawn(move || {
            for revision in 1..=LAST {
                feed.publish(revision, vec![put(revision, "k")]);
            }
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut watchers = Vec::new();
    while watchers.len() < 50 {
        let (oldest, position) = feed.span();
        let from = (oldest + position) / 2 + 1;
        if let Ok(watcher) = feed.watch(Bytes::new(), from) {
            watchers.push((from, watcher));
        }
        std::thread::yield_now();
    }
    publisher.join().unwrap();
    for (from, mut watcher) in watchers {
        let mut seen = Vec::new();
        while seen.last().is_none_or(|&last| last < LAST) {
            seen.extend(revisions(
                &runtime.block_on(watcher.next(usize::MAX)).unwrap(),
            ));
        }
        assert_eq!(seen, (from..=LAST).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_reply_holds_whole_revisions_unless_one_alone_is_too_big() {
    let feed = Feed::new(1 << 20, 16);
    let mut watcher = feed.watch(Bytes::new(), 0).unwrap();
    let one = EVENT_OVERHEAD + 2;
    feed.publish(1, vec![put(1, "a"), put(1, "b")]);
    feed.publish(2, vec![put(2, "a")]);
    feed.publish(3, vec![put(3, "a"), put(3, "b"), put(3, "c")]);
    // Revisions 1 and 2 fit in three events' room; 3 does not fit after them.
    assert_eq!(revisions(&watcher.next(3 * one).await.unwrap()), [1, 1, 2]);
    assert_eq!(watcher.position(), 2);
    // Revision 3 alone is bigger than two events' room: split.
    assert_eq!(revisions(&watcher.next(2 * one).await.unwrap()), [3, 3]);
    assert_eq!(watcher.position(), 2, "revision 3 is not whole yet");
    assert_eq!(revisions(&watcher.next(2 * one).await.unwrap()), [3]);
    assert_eq!(watcher.position(), 3);
}

#[test]
fn a_replayed_write_counts_as_it_did_when_the_log_says_it_changed_the_key() {
    let key = Bytes::from_static(b"k");
    let cases = [
        (
            WriteOp::Delete { key: key.clone() },
            Applied::Deleted(false),
            Applied::Deleted(true),
        ),
        (
            WriteOp::ExpireAt {
                key: key.clone(),
                at: 9,
            },
            Applied::Bool(false),
            Applied::Bool(true),
        ),
        (
            WriteOp::Persist { key: key.clone() },
            Applied::Bool(false),
            Applied::Bool(true),
        ),
        (WriteOp::set("k", "v"), Applied::Stored, Applied::Stored),
    ];
    for (op, again, published) in cases {
        assert_eq!(replayed(&op, again), published, "{op:?}");
    }
}
