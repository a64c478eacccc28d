//! Generates the tonic server and client for `keyvalue.proto`, and writes
//! its encoded file descriptor set for the reflection service. protox
//! parses the file, so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=keyvalue.proto");
    let descriptors = protox::compile(["keyvalue.proto"], ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("kvstore_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // Keys and values as `bytes::Bytes`: the store keeps `Bytes`, so a
        // request's bytes reach it without a copy.
        .bytes(".kvstore.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
