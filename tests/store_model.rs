//! The sharded store against a `BTreeMap` model: any sequence of writes and
//! reads gives the same answers.

use std::collections::BTreeMap;

use bytes::Bytes;
use kvstore::storage::op::WriteOp;
use kvstore::storage::store::{Applied, Store};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Write(WriteOp),
    Get(Bytes),
    Keys {
        prefix: Bytes,
        start_after: Option<Bytes>,
        limit: usize,
    },
}

/// Keys from a small alphabet so that writes collide and prefixes match.
fn key() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(
        prop_oneof![Just(b'a'), Just(b'b'), Just(0u8), Just(0xffu8)],
        0..4,
    )
    .prop_map(Bytes::from)
}

fn value() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from)
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (key(), value()).prop_map(|(key, value)| Step::Write(WriteOp::Set { key, value })),
        key().prop_map(|key| Step::Write(WriteOp::Delete { key })),
        proptest::collection::vec((key(), value()), 0..6)
            .prop_map(|items| Step::Write(WriteOp::BulkSet { items })),
        key().prop_map(Step::Get),
        (key(), proptest::option::of(key()), 1usize..6).prop_map(|(prefix, start_after, limit)| {
            Step::Keys {
                prefix,
                start_after,
                limit,
            }
        }),
    ]
}

fn model_apply(model: &mut BTreeMap<Bytes, Bytes>, op: &WriteOp) -> Applied {
    match op {
        WriteOp::Set { key, value } => {
            model.insert(key.clone(), value.clone());
            Applied::Stored
        }
        WriteOp::Delete { key } => Applied::Deleted(model.remove(key).is_some()),
        WriteOp::BulkSet { items } => {
            for (k, v) in items {
                model.insert(k.clone(), v.clone());
            }
            Applied::Stored
        }
    }
}

proptest! {
    #[test]
    fn the_store_behaves_like_a_btreemap(shards in 1usize..9, steps in proptest::collection::vec(step(), 1..120)) {
        let store = Store::new(shards);
        let mut model = BTreeMap::new();
        for step in steps {
            match step {
                Step::Write(op) => prop_assert_eq!(store.apply(&op), model_apply(&mut model, &op)),
                Step::Get(key) => {
                    prop_assert_eq!(store.get(&key), model.get(&key).cloned());
                    prop_assert_eq!(store.contains(&key), model.contains_key(&key));
                }
                Step::Keys { prefix, start_after, limit } => {
                    let page = store.keys(&prefix, start_after.as_deref(), limit, usize::MAX);
                    let all: Vec<Bytes> = model
                        .keys()
                        .filter(|k| k.starts_with(&prefix) && start_after.as_ref().is_none_or(|a| *k > a))
                        .cloned()
                        .collect();
                    prop_assert_eq!(&page.keys[..], &all[..all.len().min(limit)]);
                    prop_assert_eq!(page.more, all.len() > limit);
                }
            }
        }
        prop_assert_eq!(store.len(), model.len());
    }
}

#[test]
fn a_keys_page_stops_before_its_byte_budget() {
    let store = Store::new(4);
    for i in 0..100u8 {
        store.apply(&WriteOp::Set {
            key: Bytes::from(vec![b'k', i]),
            value: Bytes::new(),
        });
    }
    // Each 2-byte key costs 10 bytes in a reply (with its length prefix).
    let page = store.keys(b"k", None, 1000, 105);
    assert_eq!(page.keys.len(), 10, "ten 2-byte keys fit in 105 bytes");
    assert!(page.more);
}
