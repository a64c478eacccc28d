//! The codec and the log append path, so regressions show:
//! `cargo bench --bench paths`.
//!
//! - `codec/*`: encoding and decoding a Set request and a Get reply with
//!   100-byte values (the per-request cost on both sides of the native door),
//!   and decoding a pipelined RESP SET (the Redis door's request parser).
//! - `log/*`: encoding a batch of 64 Set records into the log's buffer, and
//!   appending it to a real segment with and without `fdatasync` (the group
//!   commit's per-batch cost; the sync is the disk's, shown for scale).

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kvstore::resp::codec::{RequestLimits, RespCodec};
use kvstore::storage::fs::RealFs;
use kvstore::storage::op::WriteOp;
use kvstore::storage::wal::Segment;
use kvstore_client::{codec, Command, Reply, Request, Response};
use tokio_util::codec::Decoder;

fn set_request() -> Request {
    Request {
        id: 42,
        command: Command::Set {
            key: Bytes::from_static(b"key:000000001234"),
            value: Bytes::from(vec![b'x'; 100]),
        },
    }
}

fn codec_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let request = set_request();
    let mut buf = Vec::with_capacity(256);
    group.bench_function("encode Set request", |b| {
        b.iter(|| {
            buf.clear();
            codec::encode_into(&request, &mut buf).unwrap();
            buf.len()
        })
    });
    let body = codec::encode(&request).unwrap();
    group.bench_function("decode Set request", |b| {
        b.iter(|| codec::decode::<Request>(&body).unwrap())
    });
    let reply = codec::encode(&Response {
        id: 42,
        reply: Reply::Value(Some(Bytes::from(vec![b'x'; 100]))),
    })
    .unwrap();
    group.bench_function("decode Get reply", |b| {
        b.iter(|| codec::decode::<Response>(&reply).unwrap())
    });
    let mut pipeline = Vec::new();
    for _ in 0..16 {
        pipeline.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000001234\r\n$100\r\n");
        pipeline.extend(std::iter::repeat_n(b'x', 100));
        pipeline.extend_from_slice(b"\r\n");
    }
    group.throughput(Throughput::Elements(16));
    group.bench_function("RESP decode 16 pipelined SETs", |b| {
        b.iter_batched(
            || BytesMut::from(&pipeline[..]),
            |mut input| {
                let mut codec = RespCodec::new(RequestLimits {
                    max_bulk: 1 << 20,
                    max_request: 1 << 24,
                });
                let mut n = 0;
                while let Some(args) = codec.decode(&mut input).unwrap() {
                    n += args.len();
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn log_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("log");
    let ops: Vec<WriteOp> = (0..64)
        .map(|i| WriteOp::Set {
            key: Bytes::from(format!("key:{i:012}")),
            value: Bytes::from(vec![b'x'; 100]),
        })
        .collect();
    group.throughput(Throughput::Elements(ops.len() as u64));
    let dir = tempfile::tempdir().unwrap();
    let mut segment = Segment::create(&RealFs, dir.path(), 1, 1).unwrap();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut seq = 0;
    group.bench_function("encode 64 Set records", |b| {
        b.iter(|| {
            buf.clear();
            for op in &ops {
                seq += 1;
                segment.encode_record(&mut buf, seq, seq, op);
            }
            buf.len()
        })
    });
    group.bench_function("append 64 Set records (no sync)", |b| {
        b.iter(|| segment.append(&buf).unwrap())
    });
    group.sample_size(20);
    group.bench_function("append 64 Set records + fdatasync", |b| {
        b.iter(|| {
            segment.append(&buf).unwrap();
            segment.sync_data().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, codec_benches, log_benches);
criterion_main!(benches);
