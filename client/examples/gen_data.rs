//! Writes a sample data set for `kvstore load`: N rows of `key,value` with
//! values of a chosen size, as CSV, TSV or JSON Lines.
//!
//! `cargo run -p kvstore-client --example gen_data -- 1000000 100 csv > rows.csv`
//! (rows, value bytes, format), then `kvstore load rows.csv`.

use std::io::{BufWriter, Write};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let size: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let format = args.next().unwrap_or_else(|| "csv".into());
    let mut out = BufWriter::new(std::io::stdout().lock());
    // A deterministic alphabet value so runs are repeatable and compressible
    // data does not flatter anything.
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    for i in 0..rows {
        let value: String = (0..size)
            .map(|j| alphabet[((i as usize).wrapping_mul(31) + j * 7) % alphabet.len()] as char)
            .collect();
        match format.as_str() {
            "tsv" => writeln!(out, "key:{i:010}\t{value}")?,
            "jsonl" => writeln!(out, "{{\"key\":\"key:{i:010}\",\"value\":\"{value}\"}}")?,
            _ => writeln!(out, "key:{i:010},{value}")?,
        }
    }
    out.flush()
}
