//! Store and read a few values, JSON included.
//!
//! Start a server (`cargo run --release --bin kvstore-server`), then:
//! `cargo run -p kvstore-client --example basic` (set `KVSTORE_ADDR` for another server).

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use kvstore_client::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), kvstore_client::Error> {
    // The address comes from KVSTORE_ADDR, else 127.0.0.1:65433.
    let client = Client::builder().build()?;

    client.set("greeting", "hello, world").await?;
    let value = client.get("greeting").await?;
    println!(
        "greeting = {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );

    // Maps, lists and structs go in as JSON.
    let profile = BTreeMap::from([("name", "ann"), ("city", "Lisbon")]);
    client.set_json("user:1", &profile).await?;
    let back: Option<BTreeMap<String, String>> = client.get_json("user:1").await?;
    println!("user:1 = {back:?}");

    client
        .bulk_set([("user:2", "bob"), ("user:3", "cy")])
        .await?;
    let users: Vec<_> = client.keys("user:").try_collect().await?;
    println!("{} users: {users:?}", users.len());

    println!("deleted user:3: {}", client.delete("user:3").await?);
    println!("user:3 exists: {}", client.exists("user:3").await?);
    Ok(())
}
