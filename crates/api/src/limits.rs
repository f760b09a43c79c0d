//! The limits of the client, and the server's default limits a client can count on unless the
//! operator changed them (`--max-key-bytes`, `--max-value-bytes`).

/// The server's default largest key, in bytes. Keys are path segments and index entries; etcd
/// and Consul users keep them short, and a bound keeps one request from bloating every
/// replica's index.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;

/// The server's default largest value: 1 MiB, like etcd's request limit (1.5 MiB) and above
/// Consul's 512 KB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Client retries of a request that certainly did not take effect (refused connection, 503).
/// Writes whose outcome is unknown are never retried.
pub const CLIENT_MAX_ATTEMPTS: u32 = 6;
/// Client back-off between rounds of endpoints, doubling from the first value up to the cap.
pub const CLIENT_BACKOFF_FIRST_MS: u64 = 100;
pub const CLIENT_BACKOFF_MAX_MS: u64 = 1_000;
/// Client request timeout: above the server's write timeout so the server's 504 arrives first.
pub const CLIENT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// A blocking read's attempt may take its wait plus the request timeout, and at least this
/// long: the server answers at the end of the wait on its own clock, then reads (perhaps
/// through a read point) and sends the state.
pub const BLOCKING_READ_MARGIN_MS: u64 = 5_000;
/// How long the lock and election recipes block on one read before asking again (an answer
/// comes at once on a change anyway); short, so a waiter whose endpoint died moves on soon.
pub const RECIPE_WAIT_MS: u64 = 5_000;
/// How long the client waits to connect to one endpoint before trying the next.
pub const CLIENT_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// The client drops a pooled connection idle this long, before the server's header timeout
/// would close it under a request.
pub const CLIENT_POOL_IDLE_TIMEOUT_MS: u64 = 30_000;
/// A backup download may take this long in all (it streams the whole store).
pub const CLIENT_DOWNLOAD_TIMEOUT_MS: u64 = 3_600_000;
/// Asking an endpoint who leads (before a write) gives up after this long.
pub const CLIENT_LEADER_LOOKUP_TIMEOUT_MS: u64 = 1_000;

/// The bounds of a token's lifetime (`quorumkv serve --auth-token-ttl-ms`): a client asking a
/// cluster for long-lived tokens (a test harness) stays within them.
pub const MIN_AUTH_TOKEN_TTL_MS: u64 = 1_000;
/// A day: a leaked token is worthless by the next day at the latest.
pub const MAX_AUTH_TOKEN_TTL_MS: u64 = 86_400_000;

/// A watch stream that sends nothing (not even its progress event, every 5 s) for this long is
/// taken for dead, and the client reconnects (resuming after the last revision it got whole).
pub const WATCH_IDLE_TIMEOUT_MS: u64 = 15_000;
/// A watch stream is opened again after this long (a request needs a deadline; the client
/// resumes exactly where it was).
pub const WATCH_STREAM_MAX_MS: u64 = 86_400_000;
/// Largest server-sent event the client buffers: an event of a value at the largest value
/// limit (16 MiB) as JSON text, where a control character takes 6 bytes, with room.
pub const WATCH_MAX_EVENT_BYTES: usize = 6 * 16 * 1024 * 1024 + 1024 * 1024;
