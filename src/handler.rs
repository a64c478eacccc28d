//! The native door: length-prefixed bincode frames (`crate::connection`)
//! run as a [`session`](crate::session) over `crate::cmd`.
//!
//! What is the native door's own: the `Auth` command, the small frame limit
//! before login, `Indexed` (a write's reply carries the applied index) and
//! `Backup` (a stream that belongs to the connection).

use bytes::Bytes;
use futures_util::StreamExt;
use kvstore_client::{Command, ErrorCode, Reply, Response};
use tokio_util::sync::CancellationToken;

use crate::auth;
use crate::cmd::{self, backup, watch};
use crate::config::Timeouts;
use crate::connection::{self, Connection};
use crate::db::Db;
use crate::session::login::{Attempt, Login};
use crate::session::{self, Door, Incoming, Pushes, Step};

/// Serves one native client (see [`session::serve`]).
pub async fn serve(conn: Connection, db: Db, timeouts: Timeouts, shutdown: CancellationToken) {
    let door = Native::new(conn, db.clone());
    session::serve(door, db, timeouts, shutdown).await
}

/// One native connection.
struct Native {
    conn: Connection,
    db: Db,
    login: Login,
    closing: bool,
    /// The backup streaming on this connection; it ends with the connection.
    backup: backup::Session,
    /// A watch's replies, just started, for the session to send.
    watch: Option<Pushes<Response>>,
}

/// What a native write's reply needs: its request's id, and whether it came
/// wrapped in `Indexed` (unwrapped so it joins log batches like any write).
pub struct Tag {
    id: u64,
    indexed: bool,
}

impl Native {
    fn new(mut conn: Connection, db: Db) -> Native {
        let login = Login::new(&db.auth);
        if !login.authenticated() {
            // Before login only frames big enough for a token are read.
            conn.set_max_frame(auth::PRE_AUTH_MAX_FRAME);
        }
        Native {
            conn,
            db,
            login,
            closing: false,
            backup: None,
            watch: None,
        }
    }

    /// Answers a request sent before login: `Auth`, or a refusal.
    async fn log_in(&mut self, command: Command) -> Reply {
        let Command::Auth { token } = command else {
            self.closing |= self.login.refuse();
            return Reply::error(ErrorCode::Unauthenticated, "authenticate with Auth first");
        };
        let passed = self.db.auth.check(&token);
        match self.login.attempt(&self.db.auth, passed).await {
            Attempt::Passed => {
                self.conn.set_max_frame(self.db.limits.max_frame);
                Reply::Ok
            }
            Attempt::Failed { close } => {
                self.closing |= close;
                Reply::error(ErrorCode::AuthFailed, "wrong auth token")
            }
        }
    }

    /// Starts a watch whose replies carry `id`; it replaces the one the
    /// connection had.
    fn watch(&mut self, id: u64, prefix: Bytes, from_revision: u64) -> Reply {
        match watch::start(prefix, from_revision, &self.db) {
            Ok((first, replies)) => {
                let replies = replies.map(move |reply| Response { id, reply });
                self.watch = Some(replies.boxed());
                first
            }
            Err(refused) => refused,
        }
    }

    /// Runs a command that is not a data write. Backups are served here,
    /// with the connection's backup session.
    async fn run(&mut self, command: Command) -> Reply {
        let db = &self.db;
        match command {
            Command::Backup { name } => backup::start(name, db, &mut self.backup).await,
            Command::BackupNext => backup::next(&mut self.backup, db),
            Command::Indexed {
                after,
                any_node,
                command,
            } => cmd::indexed::apply(after, any_node, *command, db).await,
            command => match cmd::start(command, db).await {
                cmd::Started::Done(reply) => reply,
                // Not a data write, yet the log took it: wait for it here.
                cmd::Started::Pending(mut pending) => cmd::reply_for(pending.wait().await),
            },
        }
    }
}

/// The command a request runs as a write, if it is one: an `Indexed` write
/// is unwrapped.
fn write_of(command: &Command) -> Option<&Command> {
    match command {
        Command::Indexed { command, .. } | Command::Once { command, .. }
            if command.is_data_write() =>
        {
            Some(command)
        }
        command if command.is_data_write() => Some(command),
        _ => None,
    }
}

impl Door for Native {
    type Request = kvstore_client::Request;
    type Reply = Response;
    type Tag = Tag;

    async fn read(&mut self) -> Incoming<Self::Request, Response> {
        match self.conn.read().await {
            connection::Incoming::Request(request) => {
                self.db.stats.native_command(&request.command);
                Incoming::Request(request)
            }
            connection::Incoming::Closed => Incoming::Closed,
            connection::Incoming::Refused { id, reply } => {
                tracing::debug!(?reply, "refusing a frame and closing the connection");
                Incoming::Refused(Response { id, reply })
            }
        }
    }

    fn whole_buffered(&mut self) -> bool {
        self.conn.has_whole_frame()
    }

    fn partial(&self) -> bool {
        self.conn.has_partial_frame()
    }

    fn completed(&self) -> u64 {
        self.conn.frames_consumed()
    }

    fn is_write(&self, request: &Self::Request) -> bool {
        self.login.authenticated() && write_of(&request.command).is_some()
    }

    fn size(request: &Self::Request) -> usize {
        cmd::size(&request.command)
    }

    async fn start(&mut self, request: Self::Request) -> Step<Self> {
        let id = request.id;
        if !self.login.authenticated() {
            let reply = self.log_in(request.command).await;
            return Step::Answer(Response { id, reply });
        }
        match request.command {
            Command::Indexed { command, .. } if command.is_data_write() => {
                Step::Write(*command, Tag { id, indexed: true })
            }
            // Prepared whole: its stamp goes into the log with the write.
            once @ Command::Once { .. } if write_of(&once).is_some() => {
                Step::Write(once, Tag { id, indexed: true })
            }
            command if command.is_data_write() => Step::Write(command, Tag { id, indexed: false }),
            Command::Watch {
                prefix,
                from_revision,
            } => Step::Answer(Response {
                id,
                reply: self.watch(id, prefix, from_revision),
            }),
            command => Step::Answer(Response {
                id,
                reply: self.run(command).await,
            }),
        }
    }

    fn finish(&self, tag: Tag, reply: Reply) -> Response {
        let reply = match tag.indexed {
            true => cmd::indexed::wrap(reply, &self.db),
            false => reply,
        };
        Response { id: tag.id, reply }
    }

    async fn feed(&mut self, response: Response) -> std::io::Result<()> {
        self.db.stats.reply(&response.reply);
        self.conn.feed(&response).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.conn.flush().await
    }

    fn logged_in(&self) -> bool {
        self.login.authenticated()
    }

    fn closing(&self) -> bool {
        self.closing
    }

    fn pushes(&mut self) -> Option<Pushes<Response>> {
        self.watch.take()
    }
}
