use super::*;

#[test]
fn classes_read_and_write_as_redis_7_does() {
    // What redis-server 7.0.15 answers CONFIG GET after CONFIG SET.
    let cases = [
        ("KEA", "AKE"),
        ("Kg$xn", "g$xnK"),
        ("A", "A"),
        ("Egm", "gEm"),
        ("", ""),
        ("KAn", "AK"),
        ("Ed", "dE"),
        ("AKEm", "AKEm"),
        ("g$lshzxetd", "A"),
        ("g$lshzxet", "g$lshzxet"),
    ];
    for (set, got) in cases {
        let flags = parse_classes(set.as_bytes()).unwrap();
        assert_eq!(format_classes(flags), got, "{set}");
    }
    assert_eq!(parse_classes(b"KEQ"), None);
}

fn event(key: &str, kind: EventKind) -> Event {
    Event {
        revision: 1,
        key: Bytes::copy_from_slice(key.as_bytes()),
        kind,
    }
}

fn texts(pairs: Vec<(Bytes, Bytes)>) -> Vec<(String, String)> {
    let text = |b: Bytes| String::from_utf8(b.to_vec()).unwrap();
    pairs.into_iter().map(|(c, m)| (text(c), text(m))).collect()
}

#[test]
fn each_change_is_named_as_redis_names_it_in_the_classes_asked_for() {
    let put = EventKind::Put {
        value: Bytes::from_static(b"v"),
        deadline: Some(9),
    };
    let all = parse_classes(b"KEA").unwrap();
    assert_eq!(
        texts(messages(&event("k", put), all)),
        [
            ("__keyspace@0__:k".into(), "set".into()),
            ("__keyevent@0__:set".into(), "k".into()),
            ("__keyspace@0__:k".into(), "expire".into()),
            ("__keyevent@0__:expire".into(), "k".into()),
        ]
    );
    let expired_only = parse_classes(b"Kx").unwrap();
    assert!(messages(&event("k", EventKind::Delete), expired_only).is_empty());
    assert_eq!(
        texts(messages(&event("k", EventKind::Expired), expired_only)),
        [("__keyspace@0__:k".into(), "expired".into())]
    );
    assert!(messages(&event("", EventKind::Clear), all).is_empty());
}

#[test]
fn a_message_reaches_each_channel_and_pattern_that_match() {
    let subs = Subscriptions {
        channels: vec![Bytes::from_static(b"__keyspace@0__:k")],
        patterns: vec![
            Bytes::from_static(b"__keyspace@0__:*"),
            Bytes::from_static(b"__keyevent@0__:*"),
        ],
    };
    let mut out = Vec::new();
    let (channel, message) = (
        Bytes::from_static(b"__keyspace@0__:k"),
        Bytes::from_static(b"del"),
    );
    subs.deliver(&channel, &message, &mut out);
    assert_eq!(out.len(), 2);
    assert!(matches!(&out[0], Value::Push(words) if words.len() == 3));
    assert!(matches!(&out[1], Value::Push(words) if words.len() == 4));
}
