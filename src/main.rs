//! The `quorumkv` binary: `serve` runs a node; the other subcommands are a client.

use std::io::Read;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use clap::Subcommand;
use quorumkv::config::ServeConfig;
use quorumkv_api::client::Answer;
use quorumkv_api::client::Client;
use quorumkv_api::client::ClientError;
use quorumkv_api::client::Retry;
use quorumkv_api::recipes;
use reqwest::header::HeaderMap;
use reqwest::header::HeaderValue;
use reqwest::Method;

/// glibc's malloc took about 11% of a node's CPU under a write load (perf, 3-node cluster,
/// 64 connections); mimalloc's thread-local free lists avoid most of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status when a write's outcome is unknown (it may or may not have been applied).
const EXIT_OUTCOME_UNKNOWN: u8 = 3;

#[derive(Parser)]
#[command(name = "quorumkv", version, about = "A replicated key-value store on Raft and RocksDB")]
struct Cli {
    /// Client endpoints to try, comma-separated (`host:port` or URLs).
    #[arg(
        long,
        global = true,
        env = "QUORUMKV_ENDPOINTS",
        default_value = "127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083"
    )]
    endpoints: String,

    /// Read `QUORUMKV_*=value` lines from this file (flags and environment take precedence).
    #[arg(long, global = true, env = "QUORUMKV_CONFIG")]
    config: Option<String>,

    /// CA certificate (PEM) to trust for `https://` endpoints; endpoints without a scheme are
    /// then `https://`. Only this CA is trusted.
    #[arg(long, global = true, env = "QUORUMKV_CACERT")]
    cacert: Option<std::path::PathBuf>,

    /// Client certificate (PEM) to present, for clusters that require one.
    #[arg(long = "cert", id = "cert_file", global = true, env = "QUORUMKV_CERT", requires = "key_file")]
    cert_file: Option<std::path::PathBuf>,

    /// Private key (PEM) of `--cert`. (The ids are not `cert`/`key`: `key` names the
    /// subcommands' key argument.)
    #[arg(long = "key", id = "key_file", global = true, env = "QUORUMKV_KEY", requires = "cert_file")]
    key_file: Option<std::path::PathBuf>,

    /// Log in as this user (auth enabled): the password comes from `QUORUMKV_PASSWORD`, or
    /// is asked for on the terminal.
    #[arg(long, global = true, env = "QUORUMKV_USER", conflicts_with = "token")]
    user: Option<String>,

    /// A token from `quorumkv auth token` (or `POST /v1/auth/token`) to send as
    /// `Authorization: Bearer`.
    #[arg(long, global = true, env = "QUORUMKV_TOKEN", hide_env_values = true)]
    token: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum LeaseCliCommand {
    /// Grant a lease of this TTL; prints `{"id", "ttl_ms", "revision"}`.
    Grant { ttl_ms: u64 },
    /// Keep a lease alive: renew it every third of its TTL until interrupted, printing each
    /// renewal (`--once`: renew once). Exits 1 when the lease has ended.
    Keepalive {
        id: u64,
        #[arg(long)]
        once: bool,
    },
    /// End a lease now, deleting its keys.
    Revoke { id: u64 },
    /// Print a lease: TTL, revisions, keys, and (from the leader) the time left.
    Show { id: u64 },
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    Serve(Box<ServeConfig>),
    /// Write a value (from the argument, or standard input when omitted).
    Put {
        key: String,
        value: Option<String>,
        /// Only if the key's revision is this one (compare-and-set).
        #[arg(long)]
        if_match: Option<u64>,
        /// Only if the key does not exist.
        #[arg(long, conflicts_with = "if_match")]
        create_only: bool,
        /// Attach the key to this lease (`quorumkv lease grant`): it goes when the lease ends.
        #[arg(long)]
        lease: Option<u64>,
        /// Delete the key this many milliseconds after this put (unless put again).
        #[arg(long, conflicts_with = "lease")]
        ttl_ms: Option<u64>,
    },
    /// Hold a lock while a command runs: waits for the lock NAME, runs CMD with the fencing
    /// token in QUORUMKV_FENCING_TOKEN, and releases the lock when CMD exits. If the lock is
    /// lost (no keepalive answered within the TTL), CMD is killed and the exit status is 1;
    /// otherwise it is CMD's.
    Lock {
        name: String,
        /// The lock's lease TTL: how long a crashed holder keeps others waiting.
        #[arg(long, default_value_t = 10_000)]
        ttl_ms: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Campaign to lead NAME with VALUE and print the leader (JSON, one line per change) until
    /// interrupted, then resign. With --observe, only print the leader.
    Elect {
        name: String,
        #[arg(required_unless_present = "observe")]
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        observe: bool,
        /// The campaign's lease TTL: how long a crashed leader keeps its place.
        #[arg(long, default_value_t = 10_000)]
        ttl_ms: u64,
    },
    /// Leases: keys that live while their holder keeps the lease alive.
    Lease {
        #[command(subcommand)]
        command: LeaseCliCommand,
    },
    /// Print a value.
    Get {
        key: String,
        /// linearizable (default), lease or stale.
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Delete a key.
    Delete {
        key: String,
        /// Only if the key's revision is this one.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Run a transaction: the JSON body of `POST /v1/txn` (compare, success, failure) from
    /// FILE, or standard input when omitted. Prints the answer; exits 0 whichever branch ran
    /// (its "succeeded" says which).
    Txn { file: Option<std::path::PathBuf> },
    /// Print the changes of a key (or of every key under `--prefix`) as they happen, one per
    /// line: `<revision> put <key> <value>` or `<revision> delete <key>` (`--json`: the
    /// events as JSON). Reconnects by itself without losing or repeating an event.
    Watch {
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        #[arg(long)]
        prefix: Option<String>,
        /// Start with the events of this revision (default: from now). Exit 1 when this node no
        /// longer keeps them (`compacted`).
        #[arg(long = "rev")]
        rev: Option<u64>,
        #[arg(long)]
        json: bool,
        /// Print progress events too (`<revision> progress`).
        #[arg(long)]
        progress: bool,
        /// Stop after printing this many lines.
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// List keys and values as JSON.
    List {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "")]
        start: String,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value = "linearizable")]
        consistency: String,
    },
    /// Write a consistent backup of all keys to FILE (JSON lines).
    Backup { file: std::path::PathBuf },
    /// Write every key of a backup FILE into the cluster (unconditional, idempotent PUTs).
    Restore { file: std::path::PathBuf },
    /// Measure throughput and latency (of quorumkv, or of etcd with `--target etcd`).
    Bench(Box<quorumkv_bench::BenchOptions>),
    /// Check a live cluster: a short concurrent register workload on keys under a reserved
    /// prefix (`_quorumkv/verify/`), checked for linearizability, then deleted. Exit 0 when the
    /// history is linearizable, 1 when it is not, 4 when the checker could not decide, 2 when
    /// the check could not run or its keys could not be deleted.
    Verify {
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Concurrent clients, spread over the endpoints.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Registers (keys) the clients share.
        #[arg(long, default_value_t = 4)]
        keys: usize,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the first endpoint answers `/health` (for container health checks).
    Health,
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Cluster commands.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Turn authentication on or off, see whether it is on, or print a token.
    Auth {
        #[command(subcommand)]
        command: AuthCliCommand,
    },
    /// Users (their passwords are hashed with Argon2id; roles say what they may do).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Roles: read, write or readwrite on key prefixes (`admin` is built in).
    Role {
        #[command(subcommand)]
        command: RoleCommand,
    },
}

#[derive(Subcommand)]
enum AuthCliCommand {
    /// Require credentials from now on (create a user with role admin first).
    Enable,
    /// Stop requiring credentials (needs admin).
    Disable,
    /// Print whether authentication is on.
    Status,
    /// Log in (`--user`) and print a token for `--token` or `QUORUMKV_TOKEN`.
    Token,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; its password comes from `QUORUMKV_NEW_PASSWORD` or is asked for twice.
    Add {
        name: String,
        /// Its roles, comma-separated (`admin` for an administrator).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Change a user's password (`QUORUMKV_NEW_PASSWORD`, or asked for); revokes its tokens.
    Passwd {
        name: String,
    },
    /// Set a user's roles (replacing the ones it had); revokes its tokens.
    SetRoles {
        name: String,
        #[arg(value_delimiter = ',')]
        roles: Vec<String>,
    },
    Delete {
        name: String,
    },
    Get {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum RoleCommand {
    /// Create or replace a role from its permissions (each flag repeatable).
    Put {
        name: String,
        /// Read keys under this prefix ("" for all keys).
        #[arg(long)]
        read: Vec<String>,
        /// Write keys under this prefix.
        #[arg(long)]
        write: Vec<String>,
        /// Read and write keys under this prefix.
        #[arg(long)]
        readwrite: Vec<String>,
    },
    Delete {
        name: String,
    },
    Get {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create DIR/ca.pem, a certificate per node (node-N.pem, valid for localhost, 127.0.0.1,
    /// ::1 and --hosts, as server and as client), client.pem for the CLI (signed by a second
    /// CA, client-ca.pem: for --client-trusted-ca-file), and a peer-token.
    /// For test clusters: production certificates come from your own CA.
    Init {
        dir: std::path::PathBuf,
        /// Node certificates to create.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// More host names or addresses every node certificate is valid for, comma-separated.
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Show members, leader, term and indexes as seen by the first reachable endpoint.
    Status,
    /// Print the id of the leader the first reachable endpoint knows; exit 1 when it knows none
    /// (an election in progress, or no quorum). For scripts: `leader=$(quorumkv cluster leader)`.
    Leader,
    /// List members (id, addresses, voter or learner).
    Members,
    /// Add a node as a learner (it then needs `quorumkv serve --join`, or already runs).
    AddLearner {
        id: u64,
        peer_addr: String,
        /// The cluster's peer token: without peer TLS, the cluster will send it to the new
        /// node, so only a holder of it may add one.
        #[arg(long, env = "QUORUMKV_PEER_TOKEN_FILE")]
        peer_token_file: Option<std::path::PathBuf>,
    },
    /// Promote a caught-up learner to voter.
    Promote { id: u64 },
    /// Remove a voter or learner; refused when the remaining voters would lack a healthy quorum.
    Remove { id: u64 },
    /// Hand leadership to the given voter.
    TransferLeader { id: u64 },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Err(error) = quorumkv::config::load_config_file(&args) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let tls = quorumkv_api::client::ClientTls { ca_file: cli.cacert, cert_file: cli.cert_file, key_file: cli.key_file };
    match cli.command {
        Command::Certs { command: CertsCommand::Init { dir, nodes, hosts } } => {
            match quorumkv::certs::init(&quorumkv::certs::CertsInit { dir: &dir, nodes, hosts }) {
                Ok(()) => {
                    println!(
                        "wrote a development CA, {nodes} node certificates, client.pem and peer-token to {}",
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(config) => {
            quorumkv::logging::init(config.id, &config.log);
            let result = runtime.block_on(quorumkv::server::serve(*config));
            // Let the tasks that still hold the database finish, so RocksDB closes before exit.
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error}");
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench(options) => match runtime.block_on(quorumkv_bench::run(*options, &cli.endpoints, &tls)) {
            Ok(report) => {
                report.print();
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        },
        Command::Verify { duration_secs, clients, keys, json } => {
            let credentials = Credentials { user: cli.user, token: cli.token };
            runtime.block_on(verify(&cli.endpoints, &tls, &credentials, duration_secs, clients, keys, json))
        }
        command => {
            let credentials = Credentials { user: cli.user, token: cli.token };
            runtime.block_on(run_client(&cli.endpoints, &tls, &credentials, command))
        }
    }
}

/// How the CLI proves who it is, once auth is enabled (a client certificate is the other way).
struct Credentials {
    user: Option<String>,
    token: Option<String>,
}

impl Credentials {
    /// A client sending the token (given, or from logging in as `--user`).
    async fn client(&self, endpoints: &str, tls: &quorumkv_api::client::ClientTls) -> Result<Client, ClientError> {
        Client::with_token(endpoints, tls, self.token(endpoints, tls).await?.as_deref())
    }

    /// The token to send: given, or from logging in as `--user`; `None` without either.
    async fn token(
        &self,
        endpoints: &str,
        tls: &quorumkv_api::client::ClientTls,
    ) -> Result<Option<String>, ClientError> {
        Ok(match (&self.user, &self.token) {
            (Some(user), _) => Some(Client::with_tls(endpoints, tls)?.login(user, &password_of(user)?).await?.token),
            (None, token) => token.clone(),
        })
    }
}

/// The password to log in as `user` with: `QUORUMKV_PASSWORD`, or asked for on the terminal.
fn password_of(user: &str) -> Result<String, ClientError> {
    std::env::var("QUORUMKV_PASSWORD").or_else(|_| {
        rpassword::prompt_password(format!("password of {user}: "))
            .map_err(|e| ClientError::Failed(format!("no QUORUMKV_PASSWORD and no terminal to ask: {e}")))
    })
}

/// A new password: `QUORUMKV_NEW_PASSWORD`, or asked for twice on the terminal.
fn new_password(user: &str) -> Result<String, ClientError> {
    if let Ok(password) = std::env::var("QUORUMKV_NEW_PASSWORD") {
        return Ok(password);
    }
    let ask = |prompt: String| {
        rpassword::prompt_password(prompt)
            .map_err(|e| ClientError::Failed(format!("no QUORUMKV_NEW_PASSWORD and no terminal to ask: {e}")))
    };
    let first = ask(format!("new password of {user}: "))?;
    if ask("again: ".to_string())? != first {
        return Err(ClientError::Failed("the passwords differ".into()));
    }
    Ok(first)
}

/// A call under `/v1/auth`; changes are not blindly retried (as `admin`).
async fn auth_call(
    client: &Client,
    method: Method,
    path: &[&str],
    body: Option<impl serde::Serialize>,
) -> Result<ExitCode, ClientError> {
    let mut segments = vec!["v1".to_string(), "auth".to_string()];
    segments.extend(path.iter().map(|s| s.to_string()));
    let mut headers = HeaderMap::new();
    headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = match body.map(|body| serde_json::to_vec(&body)) {
        Some(Ok(bytes)) => Some(Bytes::from(bytes)),
        Some(Err(error)) => return Err(ClientError::Failed(format!("encoding the request: {error}"))),
        None => None,
    };
    let retry = if method == Method::GET { Retry::Idempotent } else { Retry::OnlyIfNotSent };
    let answer = client.request(method, &segments, &[], headers, body, retry).await?;
    print_answer(answer, false)
}

async fn run_auth_command(
    client: &Client,
    credentials: &Credentials,
    command: Command,
) -> Result<ExitCode, ClientError> {
    use quorumkv_api::Access;
    use quorumkv_api::Permission;
    use quorumkv_api::RoleRequest;
    use quorumkv_api::UserRequest;
    let none = None::<()>;
    match command {
        Command::Auth { command: AuthCliCommand::Enable } => auth_call(client, Method::POST, &["enable"], none).await,
        Command::Auth { command: AuthCliCommand::Disable } => auth_call(client, Method::POST, &["disable"], none).await,
        Command::Auth { command: AuthCliCommand::Status } => auth_call(client, Method::GET, &[], none).await,
        Command::Auth { command: AuthCliCommand::Token } => {
            let Some(user) = &credentials.user else {
                return Err(ClientError::Failed("auth token needs --user (or QUORUMKV_USER)".into()));
            };
            println!("{}", client.login(user, &password_of(user)?).await?.token);
            Ok(ExitCode::SUCCESS)
        }
        Command::User { command: UserCommand::Add { name, roles } } => {
            let request = UserRequest { password: Some(new_password(&name)?), roles: Some(roles) };
            auth_call(client, Method::PUT, &["users", &name], Some(request)).await
        }
        Command::User { command: UserCommand::Passwd { name } } => {
            let request = UserRequest { password: Some(new_password(&name)?), roles: None };
            auth_call(client, Method::PUT, &["users", &name], Some(request)).await
        }
        Command::User { command: UserCommand::SetRoles { name, roles } } => {
            let request = UserRequest { password: None, roles: Some(roles) };
            auth_call(client, Method::PUT, &["users", &name], Some(request)).await
        }
        Command::User { command: UserCommand::Delete { name } } => {
            auth_call(client, Method::DELETE, &["users", &name], none).await
        }
        Command::User { command: UserCommand::Get { name } } => {
            auth_call(client, Method::GET, &["users", &name], none).await
        }
        Command::User { command: UserCommand::List } => auth_call(client, Method::GET, &["users"], none).await,
        Command::Role { command: RoleCommand::Put { name, read, write, readwrite } } => {
            let permission = |access: Access| move |prefix: String| Permission { prefix, access };
            let permissions = (read.into_iter().map(permission(Access::Read)))
                .chain(write.into_iter().map(permission(Access::Write)))
                .chain(readwrite.into_iter().map(permission(Access::Readwrite)))
                .collect();
            auth_call(client, Method::PUT, &["roles", &name], Some(RoleRequest { permissions })).await
        }
        Command::Role { command: RoleCommand::Delete { name } } => {
            auth_call(client, Method::DELETE, &["roles", &name], none).await
        }
        Command::Role { command: RoleCommand::Get { name } } => {
            auth_call(client, Method::GET, &["roles", &name], none).await
        }
        Command::Role { command: RoleCommand::List } => auth_call(client, Method::GET, &["roles"], none).await,
        _ => unreachable!("only auth, user and role commands come here"),
    }
}

/// `quorumkv lock NAME -- CMD`: see `quorumkv_api::recipes`.
async fn lock(client: Client, name: &str, ttl_ms: u64, command: Vec<String>) -> Result<ExitCode, ClientError> {
    let client = std::sync::Arc::new(client);
    let session = recipes::Session::open(client.clone(), ttl_ms).await?;
    let acquired = async {
        let (key, token) = recipes::enter(&client, &session, name, "").await?;
        recipes::wait_turn(&client, name, &key, token).await?;
        Ok::<_, ClientError>((key, token))
    };
    let acquired = tokio::select! {
        acquired = acquired => Ok(acquired),
        reason = session.lost() => Err(reason),
    };
    let (key, token) = match acquired {
        Ok(Ok(acquired)) => acquired,
        Ok(Err(error)) => {
            close_session(session).await;
            return Err(error);
        }
        Err(reason) => return Err(ClientError::Failed(format!("lost the lock before holding it: {reason}"))),
    };
    let (program, arguments) = command.split_first().ok_or_else(|| ClientError::Failed("no command to run".into()))?;
    // In quorumkv's own process group: the terminal's Ctrl-C and Ctrl-Z reach both, and CMD
    // may read the terminal.
    let mut child = tokio::process::Command::new(program)
        .args(arguments)
        .env("QUORUMKV_FENCING_TOKEN", token.to_string())
        .env("QUORUMKV_LOCK_KEY", &key)
        .env("QUORUMKV_LEASE_ID", session.lease.to_string())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ClientError::Failed(format!("cannot run {program}: {e}")))?;
    // Signals to quorumkv go to CMD too, and the lock is held until CMD has exited: quorumkv
    // must not die (releasing nothing) while CMD runs on.
    use tokio::signal::unix::SignalKind;
    let listen = |kind: SignalKind| {
        tokio::signal::unix::signal(kind).map_err(|e| ClientError::Failed(format!("cannot handle signals: {e}")))
    };
    let (mut interrupt, mut terminate, mut hangup) =
        (listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?, listen(SignalKind::hangup())?);
    let forward = |signal: &str, child: &tokio::process::Child| {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").args([signal, &pid.to_string()]).status();
        }
    };
    let status = loop {
        let finished = tokio::select! {
            status = child.wait() => Ok(status),
            reason = session.lost() => Err(reason),
            _ = interrupt.recv() => { forward("-INT", &child); continue }
            _ = terminate.recv() => { forward("-TERM", &child); continue }
            _ = hangup.recv() => { forward("-HUP", &child); continue }
        };
        match finished {
            Ok(status) => break status.map_err(|e| ClientError::Failed(format!("waiting for {program}: {e}")))?,
            Err(reason) => {
                let _ = child.kill().await;
                eprintln!("lost the lock {name} (fencing token {token}): {reason}; {program} was killed");
                return Ok(ExitCode::FAILURE);
            }
        }
    };
    close_session(session).await;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal: as a shell reports it.
        None => ExitCode::from(
            128u8.saturating_add(std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0) as u8),
        ),
    })
}

/// Revokes a lock's or a campaign's lease; on an error it expires by itself, and says so.
async fn close_session(session: recipes::Session) {
    let lease = session.lease;
    if let Err(error) = session.close().await {
        eprintln!("could not revoke lease {lease} (it expires by itself): {error}");
    }
}

/// `quorumkv elect NAME VALUE` (or `--observe`): see `quorumkv_api::recipes`.
async fn elect(client: Client, name: &str, value: Option<String>, ttl_ms: u64) -> Result<ExitCode, ClientError> {
    let client = std::sync::Arc::new(client);
    let Some(value) = value else {
        tokio::select! {
            result = recipes::observe(&client, name) => result?,
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(ExitCode::SUCCESS);
    };
    let session = recipes::Session::open(client.clone(), ttl_ms).await?;
    let campaign = async {
        recipes::enter(&client, &session, name, &value).await?;
        recipes::observe(&client, name).await
    };
    let outcome = tokio::select! {
        campaigned = campaign => campaigned.map(|()| ExitCode::SUCCESS),
        reason = session.lost() => {
            eprintln!("lost the campaign for {name}: {reason}");
            Ok(ExitCode::FAILURE)
        }
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
    };
    close_session(session).await;
    outcome
}

async fn run_lease_command(client: &Client, command: LeaseCliCommand) -> Result<ExitCode, ClientError> {
    let json = || {
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers
    };
    let path =
        |parts: &[&str]| -> Vec<String> { ["v1", "leases"].iter().chain(parts).map(|s| s.to_string()).collect() };
    match command {
        LeaseCliCommand::Grant { ttl_ms } => {
            let body = Bytes::from(serde_json::json!({ "ttl_ms": ttl_ms }).to_string());
            // Not retried once sent: a second grant would make a second lease.
            let answer =
                client.request(Method::POST, &path(&[]), &[], json(), Some(body), Retry::OnlyIfNotSent).await?;
            print_answer(answer, false)
        }
        LeaseCliCommand::Revoke { id } => {
            let id = id.to_string();
            let answer = client.request(Method::DELETE, &path(&[&id]), &[], json(), None, Retry::OnlyIfNotSent).await?;
            print_answer(answer, false)
        }
        LeaseCliCommand::Show { id } => {
            let id = id.to_string();
            let answer = client.request(Method::GET, &path(&[&id]), &[], json(), None, Retry::Idempotent).await?;
            print_answer(answer, false)
        }
        LeaseCliCommand::Keepalive { id, once } => {
            let id = id.to_string();
            loop {
                // A renewal may be sent again: renewing twice is renewing once.
                let answer = client
                    .request(Method::POST, &path(&[&id, "keepalive"]), &[], json(), None, Retry::Idempotent)
                    .await?;
                if !answer.status.is_success() || once {
                    return print_answer(answer, false);
                }
                let renewed: quorumkv_api::KeptAlive = serde_json::from_slice(&answer.body)
                    .map_err(|e| ClientError::Failed(format!("the keepalive answer: {e}")))?;
                println!("{}", String::from_utf8_lossy(&answer.body));
                tokio::time::sleep(Duration::from_millis(renewed.ttl_ms / 3)).await;
            }
        }
    }
}

/// Exit status of `verify` when the checker ran out of budget (as `quorumkv-jepsen`'s).
const EXIT_VERIFY_UNDECIDED: u8 = 4;

async fn verify(
    endpoints: &str,
    tls: &quorumkv_api::client::ClientTls,
    credentials: &Credentials,
    duration_secs: u64,
    clients: usize,
    keys: usize,
    json: bool,
) -> ExitCode {
    use quorumkv_jepsen::checker::Verdict;
    let scheme = if tls.is_on() { "https" } else { "http" };
    let endpoints_text = endpoints;
    let endpoints = match quorumkv_api::client::parse_endpoints_with_scheme(endpoints, scheme) {
        Ok(urls) => urls.iter().map(|url| url.as_str().trim_end_matches('/').to_string()).collect(),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let token = match credentials.token(endpoints_text, tls).await {
        Ok(token) => token,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let options = quorumkv_jepsen::verify::VerifyOptions {
        endpoints,
        duration: std::time::Duration::from_secs(duration_secs),
        clients,
        keys,
        step_budget: quorumkv_jepsen::checker::DEFAULT_STEP_BUDGET,
        tls: tls.clone(),
        token,
    };
    let report = match quorumkv_jepsen::verify::verify(&options).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!(
            "verdict: {:?} ({} operations: {} ok, {} compare-and-set refused by a concurrent write, {} failed, \
             {} unknown; keys {}*)",
            report.verdict, report.ops, report.ok, report.cas_refused, report.fail, report.info, report.prefix
        );
        for anomaly in &report.anomalies {
            println!("not linearizable: {}", serde_json::to_string(anomaly).unwrap_or_default());
        }
        if !report.unknown_keys.is_empty() {
            println!("undecided within the checker's budget: {:?}", report.unknown_keys);
        }
    }
    if !report.keys_left.is_empty() {
        eprintln!("error: could not delete {:?}; delete them with `quorumkv delete KEY`", report.keys_left);
    }
    match report.verdict {
        Verdict::Invalid => ExitCode::FAILURE,
        _ if !report.keys_left.is_empty() => ExitCode::from(2),
        Verdict::Valid => ExitCode::SUCCESS,
        Verdict::Unknown => ExitCode::from(EXIT_VERIFY_UNDECIDED),
    }
}

async fn run_client(
    endpoints: &str,
    tls: &quorumkv_api::client::ClientTls,
    credentials: &Credentials,
    command: Command,
) -> ExitCode {
    let result = async {
        if let Command::Auth { command: AuthCliCommand::Token } = command {
            // Logs in itself; the others log in first.
            return run_auth_command(&Client::with_tls(endpoints, tls)?, credentials, command).await;
        }
        let mut client = credentials.client(endpoints, tls).await?;
        match command {
            command @ (Command::Auth { .. } | Command::User { .. } | Command::Role { .. }) => {
                run_auth_command(&client, credentials, command).await
            }
            Command::Serve(_) | Command::Bench(_) | Command::Verify { .. } | Command::Certs { .. } => {
                unreachable!("handled by main")
            }
            Command::Lease { command } => run_lease_command(&client, command).await,
            Command::Lock { name, ttl_ms, command } => lock(client, &name, ttl_ms, command).await,
            Command::Elect { name, value, observe: _, ttl_ms } => elect(client, &name, value, ttl_ms).await,
            Command::Put { key, value, if_match, create_only, lease, ttl_ms } => {
                let value = match value {
                    Some(value) => Bytes::from(value),
                    None => {
                        let mut buffer = Vec::new();
                        std::io::stdin()
                            .read_to_end(&mut buffer)
                            .map_err(|e| ClientError::Failed(format!("reading stdin: {e}")))?;
                        Bytes::from(buffer)
                    }
                };
                client.prefer_leader().await;
                let headers = precondition_headers(if_match, create_only);
                let query: Vec<(&str, String)> = (lease.map(|id| ("lease", id.to_string())).into_iter())
                    .chain(ttl_ms.map(|ms| ("ttl_ms", ms.to_string())))
                    .collect();
                let answer = client
                    .request(Method::PUT, &Client::key_path(&key), &query, headers, Some(value), Retry::OnlyIfNotSent)
                    .await?;
                print_answer(answer, false)
            }
            Command::Get { key, consistency } => {
                let query = [("consistency", consistency)];
                let answer = client
                    .request(Method::GET, &Client::key_path(&key), &query, HeaderMap::new(), None, Retry::Idempotent)
                    .await?;
                print_answer(answer, true)
            }
            Command::Delete { key, if_match } => {
                client.prefer_leader().await;
                let headers = precondition_headers(if_match, false);
                let answer = client
                    .request(Method::DELETE, &Client::key_path(&key), &[], headers, None, Retry::OnlyIfNotSent)
                    .await?;
                print_answer(answer, false)
            }
            Command::Watch { key, prefix, rev, json, progress, max_events } => {
                let mut watcher = client.watch(key.as_deref(), prefix.as_deref(), rev);
                let mut printed = 0u64;
                while max_events.is_none_or(|max| printed < max) {
                    let line = match watcher.next().await? {
                        quorumkv_api::client::WatchMessage::Event(event) if json => {
                            serde_json::to_string(&event).unwrap_or_default()
                        }
                        quorumkv_api::client::WatchMessage::Event(event) => match event.kind {
                            quorumkv_api::WatchEventKind::Put => format!(
                                "{} put {} {}",
                                event.revision,
                                event.key,
                                event.value.or(event.value_base64.map(|b| format!("(base64) {b}"))).unwrap_or_default()
                            ),
                            quorumkv_api::WatchEventKind::Delete => format!("{} delete {}", event.revision, event.key),
                        },
                        quorumkv_api::client::WatchMessage::Progress(revision) if progress => {
                            if json {
                                format!("{{\"progress\":{revision}}}")
                            } else {
                                format!("{revision} progress")
                            }
                        }
                        quorumkv_api::client::WatchMessage::Progress(_) => continue,
                    };
                    println!("{line}");
                    printed += 1;
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Txn { file } => {
                // At most the largest body any node accepts, plus one byte to tell it is over.
                let limit = quorumkv::limits::txn_body_bytes(
                    quorumkv::limits::MAX_KEY_BYTES_CEILING,
                    quorumkv::limits::MAX_VALUE_BYTES_CEILING,
                ) as u64;
                let mut body = Vec::new();
                let read = match &file {
                    Some(path) => std::fs::File::open(path).and_then(|f| f.take(limit + 1).read_to_end(&mut body)),
                    None => std::io::stdin().take(limit + 1).read_to_end(&mut body),
                };
                let source = file.as_ref().map_or("standard input".to_string(), |p| p.display().to_string());
                read.map_err(|e| ClientError::Failed(format!("reading {source}: {e}")))?;
                if body.len() as u64 > limit {
                    return Err(ClientError::Failed(format!(
                        "{source} is larger than any transaction ({limit} bytes)"
                    )));
                }
                client.prefer_leader().await;
                let mut headers = HeaderMap::new();
                headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                let segments = vec!["v1".to_string(), "txn".to_string()];
                let answer = client
                    .request(Method::POST, &segments, &[], headers, Some(Bytes::from(body)), Retry::OnlyIfNotSent)
                    .await?;
                print_answer(answer, false)
            }
            Command::List { prefix, start, limit, consistency } => {
                let mut query = vec![("prefix", prefix), ("start", start), ("consistency", consistency)];
                if let Some(limit) = limit {
                    query.push(("limit", limit.to_string()));
                }
                let segments = vec!["v1".to_string(), "kv".to_string()];
                let answer =
                    client.request(Method::GET, &segments, &query, HeaderMap::new(), None, Retry::Idempotent).await?;
                print_answer(answer, false)
            }
            Command::Health => {
                let only_first = endpoints.split(',').next().unwrap_or_default();
                let client = Client::with_tls(only_first, tls)?;
                let segments = vec!["health".to_string()];
                let answer =
                    client.request(Method::GET, &segments, &[], HeaderMap::new(), None, Retry::Idempotent).await?;
                print_answer(answer, false)
            }
            Command::Backup { file } => backup(&client, &file).await,
            Command::Restore { file } => restore(&client, &file).await,
            Command::Cluster { command: ClusterCommand::Members } => {
                let segments = vec!["v1".to_string(), "cluster".to_string(), "members".to_string()];
                let answer =
                    client.request(Method::GET, &segments, &[], HeaderMap::new(), None, Retry::Idempotent).await?;
                print_answer(answer, false)
            }
            Command::Cluster { command: ClusterCommand::AddLearner { id, peer_addr, peer_token_file } } => {
                let body = quorumkv_api::AddLearnerRequest { id, peer_addr, fresh: false };
                let mut headers = HeaderMap::new();
                if let Some(file) = peer_token_file {
                    let too_large =
                        std::fs::metadata(&file).is_ok_and(|m| m.len() > quorumkv::limits::MAX_PEER_TOKEN_FILE_BYTES);
                    if too_large {
                        return Err(ClientError::Failed(format!("--peer-token-file {} is too large", file.display())));
                    }
                    let token = std::fs::read_to_string(&file)
                        .map_err(|e| ClientError::Failed(format!("--peer-token-file {}: {e}", file.display())))?;
                    // The token this node would send: a rotating file's first line (as `serve`).
                    let token = token.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or_default();
                    let value = HeaderValue::from_str(&format!("Bearer {token}"))
                        .map_err(|_| ClientError::Failed("the peer token is not a valid header value".into()))?;
                    headers.insert(reqwest::header::AUTHORIZATION, value);
                }
                admin(&client, Method::POST, &["learners"], headers, Some(body)).await
            }
            Command::Cluster { command: ClusterCommand::Promote { id } } => {
                admin(&client, Method::POST, &["voters"], HeaderMap::new(), Some(quorumkv_api::NodeRef { id })).await
            }
            Command::Cluster { command: ClusterCommand::Remove { id } } => {
                admin(&client, Method::DELETE, &["members", &id.to_string()], HeaderMap::new(), None::<()>).await
            }
            Command::Cluster { command: ClusterCommand::TransferLeader { id } } => {
                admin(&client, Method::POST, &["leader"], HeaderMap::new(), Some(quorumkv_api::NodeRef { id })).await
            }
            Command::Cluster { command: ClusterCommand::Leader } => {
                // One quick look, no retries: scripts poll it in loops of their own.
                let status = client.cluster_status_once().await?;
                match status.leader_id {
                    Some(leader) => {
                        println!("{leader}");
                        Ok(ExitCode::SUCCESS)
                    }
                    None => {
                        Err(ClientError::Failed(format!("node {} knows no leader (term {})", status.id, status.term)))
                    }
                }
            }
            Command::Cluster { command: ClusterCommand::Status } => {
                let segments = vec!["v1".to_string(), "cluster".to_string()];
                let answer =
                    client.request(Method::GET, &segments, &[], HeaderMap::new(), None, Retry::Idempotent).await?;
                if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&answer.body) {
                    let pretty = serde_json::to_string_pretty(&json).unwrap_or_default();
                    return print_answer(Answer { body: Bytes::from(pretty + "\n"), ..answer }, true);
                }
                print_answer(answer, false)
            }
        }
    };
    match result.await {
        Ok(code) => code,
        Err(ClientError::Unknown(message)) => {
            eprintln!("outcome unknown: the write may or may not have been applied: {message}");
            ExitCode::from(EXIT_OUTCOME_UNKNOWN)
        }
        Err(ClientError::Failed(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Streams `/v1/backup` into FILE (through a temporary file, renamed once complete).
async fn backup(client: &Client, file: &std::path::Path) -> Result<ExitCode, ClientError> {
    let failed = |e: std::io::Error| ClientError::Failed(format!("{}: {e}", file.display()));
    let partial = file.with_extension("partial");
    let mut out = tokio::fs::File::create(&partial).await.map_err(failed)?;
    let segments = vec!["v1".to_string(), "backup".to_string()];
    let bytes = client.download(&segments, &mut out).await?;
    out.sync_all().await.map_err(failed)?;
    let keys = check_backup_file(&partial).await?;
    tokio::fs::rename(&partial, file).await.map_err(failed)?;
    eprintln!("backup of {keys} keys ({bytes} bytes) written to {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// Checks a backup file from end to end without holding it in memory; returns its key count.
async fn check_backup_file(path: &std::path::Path) -> Result<u64, ClientError> {
    let path = path.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        quorumkv::backup::BackupReader::new(std::io::BufReader::new(file)).check_complete()
    });
    checked.await.map_err(|e| ClientError::Failed(e.to_string()))?.map_err(ClientError::Failed)
}

/// Replays a backup with unconditional PUTs, a bounded number at a time, reading the file as
/// it goes. Writing the same value again is harmless, so a PUT whose outcome is unknown is
/// simply retried.
async fn restore(client: &Client, file: &std::path::Path) -> Result<ExitCode, ClientError> {
    use futures::StreamExt;
    // The whole file is checked first, so a truncated backup changes nothing.
    let expected = check_backup_file(file).await?;
    // futures' channel receiver is itself a stream of the records the reader thread sends.
    let (mut sender, records) = futures::channel::mpsc::channel::<(String, Bytes)>(RESTORE_CONCURRENCY);
    let path = file.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        use futures::SinkExt;
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut backup = quorumkv::backup::BackupReader::new(std::io::BufReader::new(file));
        backup.header()?;
        while let Some(record) = backup.next_record()? {
            if futures::executor::block_on(sender.send(record)).is_err() {
                break; // a PUT failed and the restore stopped
            }
        }
        Ok::<_, String>(())
    });
    let puts = records.map(|(key, value)| async move {
        let answer = client
            .request(Method::PUT, &Client::key_path(&key), &[], HeaderMap::new(), Some(value), Retry::Idempotent)
            .await;
        match answer {
            Ok(answer) if answer.status.is_success() => Ok(()),
            Ok(answer) => {
                Err(ClientError::Failed(format!("{key}: {} {}", answer.status, String::from_utf8_lossy(&answer.body))))
            }
            Err(error) => Err(ClientError::Failed(format!("{key}: {error}"))),
        }
    });
    let mut results = puts.buffer_unordered(RESTORE_CONCURRENCY);
    let mut restored = 0u64;
    while let Some(result) = results.next().await {
        result?;
        restored += 1;
    }
    // The stream ended because the reader dropped its sender: it has finished.
    reader.await.map_err(|e| ClientError::Failed(e.to_string()))?.map_err(ClientError::Failed)?;
    eprintln!("restored {restored} of {expected} keys from {}", file.display());
    Ok(ExitCode::SUCCESS)
}

/// PUTs a restore keeps in flight: enough to batch in Raft, few enough not to flood a node.
const RESTORE_CONCURRENCY: usize = 32;

/// A cluster administration call. Membership changes are not blindly retried: an unknown
/// outcome is reported (exit status 3) and `cluster members` shows what happened.
async fn admin(
    client: &Client,
    method: Method,
    path: &[&str],
    mut headers: HeaderMap,
    body: Option<impl serde::Serialize>,
) -> Result<ExitCode, ClientError> {
    let mut segments = vec!["v1".to_string(), "cluster".to_string()];
    segments.extend(path.iter().map(|s| s.to_string()));
    headers.insert(reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let body = match body.map(|body| serde_json::to_vec(&body)) {
        Some(Ok(bytes)) => Some(Bytes::from(bytes)),
        Some(Err(error)) => return Err(ClientError::Failed(format!("encoding the request: {error}"))),
        None => None,
    };
    let answer = client.request(method, &segments, &[], headers, body, Retry::OnlyIfNotSent).await?;
    print_answer(answer, false)
}

fn precondition_headers(if_match: Option<u64>, create_only: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(revision) = if_match {
        if let Ok(value) = HeaderValue::from_str(&format!("\"{revision}\"")) {
            headers.insert(reqwest::header::IF_MATCH, value);
        }
    }
    if create_only {
        headers.insert(reqwest::header::IF_NONE_MATCH, HeaderValue::from_static("*"));
    }
    headers
}

/// Success bodies go to stdout (raw for values), error bodies to stderr with exit status 1.
fn print_answer(answer: Answer, raw: bool) -> Result<ExitCode, ClientError> {
    if answer.status.is_success() {
        let mut stdout = std::io::stdout();
        let _ = stdout.write_all(&answer.body);
        if !raw {
            let _ = stdout.write_all(b"\n");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{} {}", answer.status, String::from_utf8_lossy(&answer.body));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Goal: the flags' definitions are consistent (clap's own checks: unique ids, valid
    /// `requires`), and the global TLS flags reach the subcommands that have a `key` argument.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["quorumkv", "--cacert", "ca.pem", "--cert", "c.pem", "--key", "k.pem", "get", "k"])
                .expect("parses");
        assert_eq!(cli.key_file.as_deref(), Some(std::path::Path::new("k.pem")));
        assert!(matches!(cli.command, Command::Get { key, .. } if key == "k"));
    }
}
