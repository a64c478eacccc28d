//! The blocking client: the async [`Client`] driven by its own small runtime.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{Client, ClientBuilder, Versioned};
use crate::{BackupSummary, Command, Condition, Error, ExpireWhen, Expiry, Part, Reply, ScanQuery};

/// A blocking kvstore client with the same methods as [`Client`].
///
/// It owns a single-threaded tokio runtime; each call blocks the calling
/// thread until the answer arrives. Do not use it from inside an async
/// runtime (use [`Client`] there).
///
/// ```no_run
/// let client = kvstore_client::BlockingClient::connect("127.0.0.1:65433")?;
/// client.set("k", "v")?;
/// assert!(client.exists("k")?);
/// for key in client.keys("") {
///     println!("{:?}", key?);
/// }
/// # Ok::<(), kvstore_client::Error>(())
/// ```
pub struct BlockingClient {
    client: Client,
    /// Runs the client's connection tasks while a call blocks.
    runtime: tokio::runtime::Runtime,
}

impl BlockingClient {
    /// A blocking client for `addr` with default settings.
    pub fn connect(addr: impl Into<String>) -> Result<BlockingClient, Error> {
        BlockingClient::from_builder(Client::builder().addr(addr))
    }

    /// A blocking client with the given settings.
    pub fn from_builder(builder: ClientBuilder) -> Result<BlockingClient, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::ConnectionLost(format!("cannot start the client runtime: {e}")))?;
        Ok(BlockingClient {
            client: builder.build()?,
            runtime,
        })
    }

    /// The async client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Stores `value` under `key` ([`Client::set`]).
    pub fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.runtime.block_on(self.client.set(key, value))
    }

    /// The value of `key`, or `None` ([`Client::get`]).
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, Error> {
        self.runtime.block_on(self.client.get(key))
    }

    /// The value of `key` with its revisions ([`Client::get_with_version`]).
    pub fn get_with_version(&self, key: impl AsRef<[u8]>) -> Result<Option<Versioned>, Error> {
        self.runtime.block_on(self.client.get_with_version(key))
    }

    /// Runs a transaction ([`Client::txn`]).
    pub fn txn(&self, txn: crate::Transaction) -> Result<crate::TxnDone, Error> {
        self.runtime.block_on(self.client.txn(txn))
    }

    /// Removes `key`; `true` if it existed ([`Client::delete`]).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        self.runtime.block_on(self.client.delete(key))
    }

    /// Whether `key` exists ([`Client::exists`]).
    pub fn exists(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        self.runtime.block_on(self.client.exists(key))
    }

    /// Stores every pair atomically ([`Client::bulk_set`]).
    pub fn bulk_set<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), Error> {
        self.runtime.block_on(self.client.bulk_set(items))
    }

    /// Stores the pairs in one atomic part per group, each part's result
    /// apart ([`Client::bulk_set_split`]).
    pub fn bulk_set_split<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Vec<Part<()>> {
        self.runtime.block_on(self.client.bulk_set_split(items))
    }

    /// Stores `value` as JSON ([`Client::set_json`]).
    pub fn set_json<T: Serialize + ?Sized>(
        &self,
        key: impl AsRef<[u8]>,
        value: &T,
    ) -> Result<(), Error> {
        self.runtime.block_on(self.client.set_json(key, value))
    }

    /// Reads a value stored as JSON ([`Client::get_json`]).
    pub fn get_json<T: DeserializeOwned>(&self, key: impl AsRef<[u8]>) -> Result<Option<T>, Error> {
        self.runtime.block_on(self.client.get_json(key))
    }

    /// One page of keys ([`Client::keys_page`]).
    pub fn keys_page(
        &self,
        prefix: impl AsRef<[u8]>,
        start_after: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<Bytes>, bool), Error> {
        self.runtime
            .block_on(self.client.keys_page(prefix, start_after, limit))
    }

    /// Every key starting with `prefix`, ascending, fetched page by page as
    /// the iterator advances.
    pub fn keys(&self, prefix: impl AsRef<[u8]>) -> Keys<'_> {
        Keys {
            client: self,
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            page: Vec::new().into_iter(),
            after: None,
            more: true,
        }
    }

    /// The server's figures ([`Client::stats`]).
    pub fn stats(&self) -> Result<Vec<(String, i64)>, Error> {
        self.runtime.block_on(self.client.stats())
    }

    /// One page of pairs ([`Client::scan_page`]).
    pub fn scan_page(
        &self,
        query: &ScanQuery,
        limit: u32,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), Error> {
        self.runtime.block_on(self.client.scan_page(query, limit))
    }

    /// Every pair `query` selects, in its key order, fetched page by page as
    /// the iterator advances ([`Client::scan`] says what a page guarantees).
    pub fn scan(&self, query: ScanQuery) -> Pairs<'_> {
        Pairs {
            client: self,
            query,
            page: Vec::new().into_iter(),
            more: true,
        }
    }

    /// Writes a point-in-time backup of the whole store into `out`
    /// ([`Client::backup`]).
    pub fn backup(&self, out: &mut impl std::io::Write) -> Result<BackupSummary, Error> {
        let mut stream = self.runtime.block_on(self.client.backup_stream())?;
        while let Some(chunk) = self.runtime.block_on(stream.next_chunk())? {
            out.write_all(&chunk).map_err(Error::Output)?;
        }
        out.flush().map_err(Error::Output)?;
        stream.summary()
    }

    /// Has the server write a backup into its `--backup-dir`
    /// ([`Client::backup_on_server`]).
    pub fn backup_on_server(&self, name: impl Into<String>) -> Result<BackupSummary, Error> {
        self.runtime.block_on(self.client.backup_on_server(name))
    }

    /// [`Client::restore_on_server`]: the server loads the backup `name`
    /// from its `--backup-dir` into its empty store.
    pub fn restore_on_server(&self, name: impl Into<String>) -> Result<BackupSummary, Error> {
        self.runtime.block_on(self.client.restore_on_server(name))
    }

    /// Stores `value` if `condition` holds ([`Client::set_if`]).
    pub fn set_if(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        condition: Condition,
    ) -> Result<bool, Error> {
        self.runtime
            .block_on(self.client.set_if(key, value, condition))
    }

    /// Stores `value`, returns the old one ([`Client::get_set`]).
    pub fn get_set(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Option<Bytes>, Error> {
        self.runtime.block_on(self.client.get_set(key, value))
    }

    /// Removes `key`, returns its value ([`Client::get_del`]).
    pub fn get_del(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, Error> {
        self.runtime.block_on(self.client.get_del(key))
    }

    /// Adds `by` to the integer at `key` ([`Client::incr`]).
    pub fn incr(&self, key: impl AsRef<[u8]>, by: i64) -> Result<i64, Error> {
        self.runtime.block_on(self.client.incr(key, by))
    }

    /// Stores with a deadline ([`Client::set_expiring`]).
    pub fn set_expiring(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        condition: Condition,
        expiry: Expiry,
    ) -> Result<bool, Error> {
        (self.runtime).block_on(self.client.set_expiring(key, value, condition, expiry))
    }

    /// Changes a deadline ([`Client::expire`]).
    pub fn expire(
        &self,
        key: impl AsRef<[u8]>,
        expiry: Expiry,
        when: ExpireWhen,
    ) -> Result<bool, Error> {
        self.runtime.block_on(self.client.expire(key, expiry, when))
    }

    /// A value, changing its deadline ([`Client::get_ex`]).
    pub fn get_ex(&self, key: impl AsRef<[u8]>, expiry: Expiry) -> Result<Option<Bytes>, Error> {
        self.runtime.block_on(self.client.get_ex(key, expiry))
    }

    /// Removes a deadline ([`Client::persist`]).
    pub fn persist(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        self.runtime.block_on(self.client.persist(key))
    }

    /// The time left, or the deadline ([`Client::ttl`]).
    pub fn ttl(&self, key: impl AsRef<[u8]>, absolute: bool) -> Result<i64, Error> {
        self.runtime.block_on(self.client.ttl(key, absolute))
    }

    /// Appends to the value at `key` ([`Client::append`]).
    pub fn append(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<u64, Error> {
        self.runtime.block_on(self.client.append(key, value))
    }

    /// Overwrites part of a value ([`Client::set_range`]).
    pub fn set_range(
        &self,
        key: impl AsRef<[u8]>,
        offset: u64,
        value: impl AsRef<[u8]>,
    ) -> Result<u64, Error> {
        self.runtime
            .block_on(self.client.set_range(key, offset, value))
    }

    /// Adds to a floating-point number ([`Client::incr_by_float`]).
    pub fn incr_by_float(&self, key: impl AsRef<[u8]>, by: f64) -> Result<f64, Error> {
        self.runtime.block_on(self.client.incr_by_float(key, by))
    }

    /// Stores pairs if no key exists ([`Client::bulk_set_if_absent`]).
    pub fn bulk_set_if_absent<K, V>(
        &self,
        items: impl IntoIterator<Item = (K, V)>,
    ) -> Result<bool, Error>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        self.runtime.block_on(self.client.bulk_set_if_absent(items))
    }

    /// Copies a key ([`Client::copy`]).
    pub fn copy(
        &self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
        replace: bool,
    ) -> Result<bool, Error> {
        self.runtime.block_on(self.client.copy(from, to, replace))
    }

    /// Renames a key ([`Client::rename`]).
    pub fn rename(
        &self,
        from: impl AsRef<[u8]>,
        to: impl AsRef<[u8]>,
        replace: bool,
    ) -> Result<bool, Error> {
        self.runtime.block_on(self.client.rename(from, to, replace))
    }

    /// Removes many keys atomically ([`Client::delete_many`]).
    pub fn delete_many<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<u64, Error> {
        self.runtime.block_on(self.client.delete_many(keys))
    }

    /// Removes keys in one atomic part per group, each part's result apart
    /// ([`Client::delete_many_split`]).
    pub fn delete_many_split<K: AsRef<[u8]>>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Vec<Part<u64>> {
        self.runtime.block_on(self.client.delete_many_split(keys))
    }

    /// Removes every key ([`Client::flush`]).
    pub fn flush(&self) -> Result<(), Error> {
        self.runtime.block_on(self.client.flush())
    }

    /// Sends any command with timeouts and retries ([`Client::call`]).
    pub fn call(&self, command: Command) -> Result<Reply, Error> {
        self.runtime.block_on(self.client.call(command))
    }
}

/// The iterator of [`BlockingClient::keys`].
pub struct Keys<'a> {
    client: &'a BlockingClient,
    prefix: Bytes,
    /// Keys of the current page not yet returned.
    page: std::vec::IntoIter<Bytes>,
    /// The last key returned: the next page starts after it.
    after: Option<Bytes>,
    /// Whether the server said more keys may follow.
    more: bool,
}

impl Iterator for Keys<'_> {
    type Item = Result<Bytes, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(key) = self.page.next() {
                self.after = Some(key.clone());
                return Some(Ok(key));
            }
            if !self.more {
                return None;
            }
            match self
                .client
                .keys_page(&self.prefix, self.after.as_deref(), 0)
            {
                Ok((keys, more)) => {
                    self.more = more && !keys.is_empty();
                    self.page = keys.into_iter();
                }
                Err(e) => {
                    self.more = false;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The iterator of [`BlockingClient::scan`].
pub struct Pairs<'a> {
    client: &'a BlockingClient,
    /// Asks for the page after the last pair fetched.
    query: ScanQuery,
    /// Pairs of the current page not yet returned.
    page: std::vec::IntoIter<(Bytes, Bytes)>,
    /// Whether the server said more pairs may follow.
    more: bool,
}

impl Iterator for Pairs<'_> {
    type Item = Result<(Bytes, Bytes), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(pair) = self.page.next() {
                return Some(Ok(pair));
            }
            if !self.more {
                return None;
            }
            match self.client.scan_page(&self.query, 0) {
                Ok((pairs, more)) => {
                    if let Some((last, _)) = pairs.last() {
                        self.query.advance(last);
                    }
                    self.more = more && !pairs.is_empty();
                    self.page = pairs.into_iter();
                }
                Err(e) => {
                    self.more = false;
                    return Some(Err(e));
                }
            }
        }
    }
}
