//! Users, roles and tokens: off by default; once enabled, nothing is read or changed without
//! a credential (401) or beyond its permissions (403); tokens work on every node, die when
//! their user changes, and the check is made again when a command is applied. In-process nodes.

mod common;

use std::path::Path;

use common::eventually;
use common::Cluster;
use common::PEER_TOKEN;
use quorumkv::auth::Principal;
use quorumkv::protocol;
use quorumkv::protocol::Ack;
use quorumkv::protocol::ForwardedWrite;
use quorumkv::protocol::Rpc;
use quorumkv::txn::Txn;
use quorumkv::txn::TxnOp;
use quorumkv::types::Command;
use quorumkv::types::CommandResult;
use quorumkv::types::Precondition;
use quorumkv_api::ErrorBody;
use quorumkv_api::Outcome;
use serde_json::json;

/// A client of the client ports that presents nothing unless told (the harness's own client
/// sends the peer token, which counts as a member).
struct Caller<'a> {
    cluster: &'a Cluster,
    http: reqwest::Client,
    token: Option<String>,
}

impl<'a> Caller<'a> {
    fn anonymous(cluster: &'a Cluster) -> Self {
        Caller { cluster, http: reqwest::Client::new(), token: None }
    }

    fn with_token(cluster: &'a Cluster, token: &str) -> Self {
        Caller { cluster, http: reqwest::Client::new(), token: Some(token.to_string()) }
    }

    async fn call(&self, id: u64, method: reqwest::Method, path: &str, body: Option<String>) -> (u16, String) {
        let mut request = self.http.request(method, self.cluster.url(id, path));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.expect("answered");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    async fn put(&self, id: u64, key: &str, value: &str) -> (u16, String) {
        self.call(id, reqwest::Method::PUT, &format!("/v1/kv/{key}"), Some(value.to_string())).await
    }

    async fn get(&self, id: u64, key: &str) -> (u16, String) {
        self.call(id, reqwest::Method::GET, &format!("/v1/kv/{key}"), None).await
    }

    async fn json(&self, id: u64, method: reqwest::Method, path: &str, body: serde_json::Value) -> (u16, String) {
        self.call(id, method, path, Some(body.to_string())).await
    }
}

async fn login(cluster: &Cluster, id: u64, name: &str, password: &str) -> (u16, String) {
    let body = json!({"name": name, "password": password});
    Caller::anonymous(cluster).json(id, reqwest::Method::POST, "/v1/auth/token", body).await
}

async fn token(cluster: &Cluster, id: u64, name: &str, password: &str) -> String {
    let (status, body) = login(cluster, id, name, password).await;
    assert_eq!(status, 200, "login as {name} on node {id}: {body}");
    serde_json::from_str::<quorumkv_api::TokenReply>(&body).expect("a token").token
}

/// The error body of a refusal: its code, and that it says nothing happened.
fn refused(answer: &(u16, String), status: u16, code: &str) {
    assert_eq!(answer.0, status, "expected {status} {code}, got {answer:?}");
    let body: ErrorBody =
        serde_json::from_str(&answer.1).unwrap_or_else(|e| panic!("JSON error body: {e}: {answer:?}"));
    assert_eq!((body.error.as_str(), body.outcome), (code, Outcome::Failed), "{answer:?}");
}

/// Creates role `app` (readwrite `app/`, read `shared/`), user `alice` with it and user
/// `root` with `admin`, then enables auth, all through node `id` without credentials.
async fn set_up_users(cluster: &Cluster, id: u64) {
    use reqwest::Method;
    let open = Caller::anonymous(cluster);
    let role =
        json!({"permissions": [{"prefix": "app/", "access": "readwrite"}, {"prefix": "shared/", "access": "read"}]});
    assert_eq!(open.json(id, Method::PUT, "/v1/auth/roles/app", role).await.0, 200);
    let alice = json!({"password": "alice-password", "roles": ["app"]});
    assert_eq!(open.json(id, Method::PUT, "/v1/auth/users/alice", alice).await.0, 200);
    // Enabling without an admin would lock everyone out: refused.
    refused(&open.call(id, Method::POST, "/v1/auth/enable", None).await, 409, "conflict");
    let root = json!({"password": "root-password", "roles": ["admin"]});
    assert_eq!(open.json(id, Method::PUT, "/v1/auth/users/root", root).await.0, 200);
    let (status, body) = open.call(id, Method::POST, "/v1/auth/enable", None).await;
    assert_eq!(status, 200, "enable: {body}");
    eventually("every node has applied the enable", || async {
        for node in cluster.running_ids() {
            if open.call(node, Method::GET, "/v1/auth", None).await.1 != r#"{"enabled":true}"# {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Goal: with auth enabled, a request without a credential reads and changes nothing (401);
/// a user's token works on every node within its permissions and gets 403 beyond them (keys,
/// listings, backup, membership, users); the data shows only the permitted writes.
#[tokio::test]
async fn credentials_and_permissions_are_required_once_auth_is_enabled() {
    use reqwest::Method;
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.put_ok(leader, "app/before", "v").await;
    let open = Caller::anonymous(&cluster);
    assert_eq!(open.get(follower, "app/before").await, (200, "v".to_string()), "auth is off by default");
    assert_eq!(open.call(follower, Method::GET, "/v1/auth", None).await.1, r#"{"enabled":false}"#);
    set_up_users(&cluster, follower).await;

    for id in 1..=3 {
        refused(&open.put(id, "app/x", "anonymous").await, 401, "unauthorized");
        refused(&open.get(id, "app/before").await, 401, "unauthorized");
        refused(&open.call(id, Method::GET, "/v1/kv?prefix=app/", None).await, 401, "unauthorized");
        refused(&open.call(id, Method::GET, "/v1/backup", None).await, 401, "unauthorized");
        refused(&open.json(id, Method::POST, "/v1/cluster/leader", json!({"id": 1})).await, 401, "unauthorized");
        refused(&open.call(id, Method::POST, "/v1/auth/disable", None).await, 401, "unauthorized");
        let bogus = Caller::with_token(&cluster, "qkv1.e30.AAAA");
        refused(&bogus.get(id, "app/before").await, 401, "unauthorized");
    }
    refused(&login(&cluster, leader, "alice", "wrong").await, 401, "unauthorized");
    refused(&login(&cluster, leader, "nobody", "alice-password").await, 401, "unauthorized");

    let alice = Caller::with_token(&cluster, &token(&cluster, leader, "alice", "alice-password").await);
    for id in 1..=3 {
        let (status, body) = alice.put(id, &format!("app/by-alice-{id}"), "ok").await;
        assert_eq!(status, 200, "alice writes app/ on node {id}: {body}");
        assert_eq!(alice.get(id, "app/before").await, (200, "v".to_string()));
        refused(&alice.get(id, "shared/missing").await, 404, "key_not_found");
        refused(&alice.put(id, "shared/x", "no").await, 403, "permission_denied");
        refused(&alice.put(id, "other", "no").await, 403, "permission_denied");
        refused(&alice.get(id, "other").await, 403, "permission_denied");
        refused(&alice.call(id, Method::GET, "/v1/kv?prefix=", None).await, 403, "permission_denied");
        assert_eq!(alice.call(id, Method::GET, "/v1/kv?prefix=app/", None).await.0, 200);
        refused(&alice.call(id, Method::GET, "/v1/backup", None).await, 403, "permission_denied");
        refused(&alice.json(id, Method::POST, "/v1/cluster/leader", json!({"id": 1})).await, 403, "permission_denied");
        let bob = json!({"password": "bob-password", "roles": ["admin"]});
        refused(&alice.json(id, Method::PUT, "/v1/auth/users/bob", bob).await, 403, "permission_denied");
        refused(&alice.call(id, Method::POST, "/v1/auth/disable", None).await, 403, "permission_denied");
    }

    let root = Caller::with_token(&cluster, &token(&cluster, follower, "root", "root-password").await);
    let (status, users) = root.call(leader, Method::GET, "/v1/auth/users", None).await;
    assert_eq!(status, 200, "{users}");
    assert!(users.contains("alice") && !users.contains("argon2"), "names and roles, never hashes: {users}");
    // A token for root with root's real revision, signed with another key (here the empty key
    // a node without one would have used): refused everywhere, changes nothing.
    let users: Vec<quorumkv_api::UserInfo> = serde_json::from_str(&users).expect("users");
    let root_revision = users.iter().find(|user| user.name == "root").expect("root").revision;
    let claims = quorumkv::auth::TokenClaims {
        user: "root".into(),
        revision: root_revision,
        applied_index: 0,
        expires_at_unix_ms: u64::MAX,
    };
    let forged = Caller::with_token(&cluster, &quorumkv::auth::issue_token(b"", &claims));
    for id in 1..=3 {
        refused(&forged.put(id, "app/forged", "x").await, 401, "unauthorized");
        refused(&forged.call(id, Method::POST, "/v1/auth/disable", None).await, 401, "unauthorized");
    }
    let page: quorumkv_api::Page =
        serde_json::from_str(&root.call(leader, Method::GET, "/v1/kv?prefix=", None).await.1)
            .expect("root lists everything");
    let keys: Vec<&str> = page.items.iter().map(|item| item.key.as_str()).collect();
    assert_eq!(keys, ["app/before", "app/by-alice-1", "app/by-alice-2", "app/by-alice-3"], "only permitted writes");
    // The last admin cannot be removed while auth is on.
    refused(&root.call(leader, Method::DELETE, "/v1/auth/users/root", None).await, 409, "conflict");
    let demote = json!({"roles": []});
    refused(&root.json(leader, Method::PUT, "/v1/auth/users/root", demote).await, 409, "conflict");
    assert_eq!(root.call(follower, Method::POST, "/v1/auth/disable", None).await.0, 200);
    eventually("every node serves without credentials again", || async {
        for id in 1..=3 {
            if open.get(id, "app/before").await.0 != 200 {
                return None;
            }
        }
        Some(())
    })
    .await;
}

/// Goal: changing a user revokes its tokens on every node, and a role change takes effect at
/// once; the new password works.
#[tokio::test]
async fn changing_a_user_revokes_its_tokens_and_roles_apply_at_once() {
    use reqwest::Method;
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    set_up_users(&cluster, leader).await;
    let root = Caller::with_token(&cluster, &token(&cluster, leader, "root", "root-password").await);
    let alice = Caller::with_token(&cluster, &token(&cluster, leader, "alice", "alice-password").await);
    for id in 1..=3 {
        assert_eq!(alice.put(id, "app/a", "1").await.0, 200);
    }
    let read_only = json!({"permissions": [{"prefix": "app/", "access": "read"}]});
    assert_eq!(root.json(leader, Method::PUT, "/v1/auth/roles/app", read_only).await.0, 200);
    eventually("the narrowed role holds on every node", || async {
        for id in 1..=3 {
            if alice.put(id, "app/a", "2").await.0 != 403 {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(alice.get(leader, "app/a").await, (200, "1".to_string()), "no write got through");

    let new_password = json!({"password": "alice-new-password"});
    assert_eq!(root.json(leader, Method::PUT, "/v1/auth/users/alice", new_password).await.0, 200);
    eventually("the old token is refused on every node", || async {
        for id in 1..=3 {
            if alice.get(id, "app/a").await.0 != 401 {
                return None;
            }
        }
        Some(())
    })
    .await;
    refused(&login(&cluster, leader, "alice", "alice-password").await, 401, "unauthorized");
    let alice = Caller::with_token(&cluster, &token(&cluster, leader, "alice", "alice-new-password").await);
    assert_eq!(alice.get(leader, "app/a").await, (200, "1".to_string()));
}

/// Goal: the check that counts is made at apply. A write already past a node's edge check
/// (forwarded to the leader as user alice at an older revision of her record, as a lagging
/// node would send it) is refused when applied, and a bare write without any sender is
/// refused too once auth is on: nothing is written.
#[tokio::test]
async fn commands_are_authorized_again_when_applied() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    set_up_users(&cluster, leader).await;
    let users: Vec<quorumkv_api::UserInfo> = {
        let root = Caller::with_token(&cluster, &token(&cluster, leader, "root", "root-password").await);
        serde_json::from_str(&root.call(leader, reqwest::Method::GET, "/v1/auth/users", None).await.1).expect("users")
    };
    let alice_revision = users.iter().find(|user| user.name == "alice").expect("alice").revision;
    let url = format!("http://{}{}", cluster.node(leader).peer_addr, protocol::ForwardWrite::PATH);
    let forward = |command: Command| async {
        let body = protocol::encode(&ForwardedWrite { command, ack: Ack::Quorum }).expect("encode");
        let response = reqwest::Client::new().post(&url).bearer_auth(PEER_TOKEN).body(body).send().await;
        let bytes = response.expect("answered").bytes().await.expect("body");
        let reply: <protocol::ForwardWrite as Rpc>::Reply = protocol::decode(&bytes).expect("a reply");
        reply.expect("applied, with a result")
    };
    let put = |key: &str| Command::Put { key: key.into(), value: "v".into(), precondition: Precondition::None };
    let as_alice = |revision: u64, command: Command| Command::As {
        principal: Principal::User { name: "alice".into(), revision: Some(revision) },
        command: Box::new(command),
    };
    let stale = forward(as_alice(alice_revision - 1, put("app/stale"))).await;
    assert!(matches!(stale, CommandResult::Refused(quorumkv::auth::Refusal::Unauthenticated(_))), "{stale:?}");
    let beyond = forward(as_alice(alice_revision, put("other/x"))).await;
    assert!(matches!(beyond, CommandResult::Refused(quorumkv::auth::Refusal::Forbidden(_))), "{beyond:?}");
    let bare = forward(put("app/bare")).await;
    assert!(matches!(bare, CommandResult::Refused(quorumkv::auth::Refusal::Unauthenticated(_))), "{bare:?}");
    // A transaction is judged by every key it touches: one operation beyond her grants
    // refuses the whole of it.
    let txn = |ops: Vec<TxnOp>| Command::Txn(Txn { success: ops, ..Txn::default() });
    let app_put = TxnOp::Put { key: "app/txn".into(), value: "v".into() };
    let mixed = forward(as_alice(alice_revision, txn(vec![app_put.clone(), TxnOp::Get { key: "other/y".into() }])));
    let mixed = mixed.await;
    assert!(matches!(mixed, CommandResult::Refused(quorumkv::auth::Refusal::Forbidden(_))), "{mixed:?}");
    let wide = forward(as_alice(alice_revision, txn(vec![TxnOp::DeletePrefix { prefix: "ap".into() }]))).await;
    assert!(matches!(wide, CommandResult::Refused(quorumkv::auth::Refusal::Forbidden(_))), "{wide:?}");
    let allowed = forward(as_alice(alice_revision, put("app/ok"))).await;
    assert!(matches!(allowed, CommandResult::Put { .. }), "{allowed:?}");
    // The harness's client is a member (it sends the peer token): it sees every key.
    let page: quorumkv_api::Page = cluster.get_json(leader, "/v1/kv?prefix=").await;
    let keys: Vec<&str> = page.items.iter().map(|item| item.key.as_str()).collect();
    assert_eq!(keys, ["app/ok"]);
}

/// Goal: a transaction needs read permission on every key it compares or gets and write
/// permission on every key it changes (on the whole prefix of a `delete_prefix`); one
/// operation beyond the user's grants refuses it whole (403), and nothing of it is written.
#[tokio::test]
async fn a_transaction_needs_permission_for_every_key_it_touches() {
    use reqwest::Method;
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    set_up_users(&cluster, leader).await;
    let alice = Caller::with_token(&cluster, &token(&cluster, leader, "alice", "alice-password").await);
    let txn = |body: serde_json::Value| alice.json(leader, Method::POST, "/v1/txn", body);
    let put = |key: &str| json!({"op": "put", "key": key, "value": "v"});
    let (status, body) =
        txn(json!({"compare": [{"key": "shared/flag", "exists": false}], "success": [put("app/t1")]})).await;
    assert_eq!(status, 200, "read shared/, write app/: {body}");
    assert!(body.contains(r#""succeeded":true"#), "{body}");
    for refused_txn in [
        json!({"compare": [{"key": "other", "exists": false}], "success": [put("app/t2")]}),
        json!({"success": [put("app/t2"), put("shared/t2")]}),
        json!({"failure": [put("app/t2"), {"op": "get", "key": "other"}]}),
        json!({"success": [put("app/t2"), {"op": "delete", "key": "shared/x"}]}),
        json!({"success": [put("app/t2"), {"op": "delete_prefix", "prefix": ""}]}),
        json!({"success": [put("app/t2"), {"op": "delete_prefix", "prefix": "ap"}]}),
    ] {
        refused(&txn(refused_txn.clone()).await, 403, "permission_denied");
    }
    let (status, body) = txn(json!({"success": [{"op": "delete_prefix", "prefix": "app/"}]})).await;
    assert_eq!(status, 200, "readwrite app/ covers deleting under it: {body}");
    assert!(body.contains(r#"{"op":"delete_prefix","deleted":1}"#), "app/t1 deleted, no app/t2 ever: {body}");
    let page: quorumkv_api::Page = cluster.get_json(leader, "/v1/kv?prefix=").await;
    assert!(page.items.is_empty(), "nothing of a refused transaction was written: {page:?}");
}

/// Goal: users, roles and the signing key are replicated state that snapshots carry: a node
/// that joins after the log was compacted accepts a token another node issued, and refuses
/// what the token's user may not do.
#[tokio::test]
async fn a_node_joining_from_a_snapshot_knows_the_users_and_accepts_their_tokens() {
    let mut cluster = Cluster::start_with_args(3, &["--snapshot-log-entries", "100"]).await;
    let leader = cluster.wait_for_leader().await;
    set_up_users(&cluster, leader).await;
    let alice_token = token(&cluster, leader, "alice", "alice-password").await;
    let alice = Caller::with_token(&cluster, &alice_token);
    // Past the 1,000 entries kept behind a snapshot: the start of the log (the users' creation
    // among it) is purged, so a new node can learn the users from a snapshot only.
    for i in 0..1_300 {
        assert_eq!(alice.put(leader, &format!("app/{i}"), "v").await.0, 200);
    }
    eventually("the leader purged the start of its log", || async {
        (cluster.cluster_status(leader).await?.purged_index > 10).then_some(())
    })
    .await;
    drop(alice);
    let joined = cluster.add_joining_node(true);
    cluster.wait_ready(joined).await;
    let alice = Caller::with_token(&cluster, &alice_token);
    eventually("the joined node serves alice's token", || async {
        (alice.get(joined, "app/1299").await == (200, "v".to_string())).then_some(())
    })
    .await;
    refused(&alice.put(joined, "other", "no").await, 403, "permission_denied");
    assert!(cluster.log(joined).contains("snapshot installed"), "the joined node was caught up by a snapshot");
}

/// Goal: with client certificates required, a certificate's common name is the user (as in
/// etcd): `client.pem` (CN "client") acts with user `client`'s roles, and a member's peer
/// certificate counts as a member.
#[tokio::test]
async fn a_client_certificate_names_its_user() {
    let certs_dir = tempfile::tempdir().expect("temp dir");
    let certs = certs_dir.path();
    quorumkv::certs::init(&quorumkv::certs::CertsInit { dir: certs, nodes: 1, hosts: Vec::new() }).expect("certs");
    let file = |name: &str| certs.join(name).display().to_string();
    let args = [
        "--peer-cert-file".to_string(),
        file("node-1.pem"),
        "--peer-key-file".into(),
        file("node-1-key.pem"),
        "--peer-trusted-ca-file".into(),
        file("ca.pem"),
        "--client-cert-file".into(),
        file("node-1.pem"),
        "--client-key-file".into(),
        file("node-1-key.pem"),
        "--client-trusted-ca-file".into(),
        file("client-ca.pem"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with_args(1, &args).await;
    cluster.use_client_tls_as(&certs.join("ca.pem"), Some((&certs.join("node-1.pem"), &certs.join("node-1-key.pem"))));
    let leader = cluster.wait_for_leader().await;
    let as_cert = |cert: &str, key: &str| -> reqwest::Client {
        let mut pem = std::fs::read(certs.join(cert)).expect("cert");
        pem.extend(std::fs::read(certs.join(key)).expect("key"));
        let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).expect("ca")).expect("ca");
        reqwest::Client::builder()
            .add_root_certificate(ca)
            .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
            .build()
            .expect("client")
    };
    let client = Caller { cluster: &cluster, http: as_cert("client.pem", "client-key.pem"), token: None };
    let member = Caller { cluster: &cluster, http: as_cert("node-1.pem", "node-1-key.pem"), token: None };
    use reqwest::Method;
    let role = json!({"permissions": [{"prefix": "app/", "access": "readwrite"}]});
    assert_eq!(client.json(leader, Method::PUT, "/v1/auth/roles/app", role).await.0, 200);
    for (name, roles) in [("client", json!(["app"])), ("root", json!(["admin"]))] {
        let user = json!({"password": format!("{name}-password"), "roles": roles});
        assert_eq!(client.json(leader, Method::PUT, &format!("/v1/auth/users/{name}"), user).await.0, 200);
    }
    assert_eq!(client.call(leader, Method::POST, "/v1/auth/enable", None).await.0, 200);
    assert_eq!(client.put(leader, "app/x", "by certificate").await.0, 200);
    refused(&client.put(leader, "other", "no").await, 403, "permission_denied");
    refused(&client.call(leader, Method::POST, "/v1/auth/disable", None).await, 403, "permission_denied");
    assert_eq!(member.get(leader, "app/x").await, (200, "by certificate".to_string()), "a member reads all");
    assert!(Path::new(&file("client.pem")).exists());
}

/// Runs the CLI against `endpoint` with `env`; returns (exit code, stdout, stderr).
async fn cli(endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"));
    command.args(["--endpoints", endpoint]).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output().expect("run the CLI")).await.expect("join");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// Goal: the CLI sets auth up (users with passwords from the environment, roles, enable),
/// logs in with `--user`, reuses a printed token with `--token`, and exits 1 with the 401 or
/// 403 body when refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_users_and_logs_in() {
    let cluster = Cluster::start(1).await;
    cluster.wait_for_leader().await;
    let endpoint = cluster.node(1).client_addr.clone();
    let ok = |answer: (Option<i32>, String, String)| {
        assert_eq!(answer.0, Some(0), "{answer:?}");
        answer.1
    };
    ok(cli(&endpoint, &[("QUORUMKV_NEW_PASSWORD", "root-pw")], &["user", "add", "root", "--roles", "admin"]).await);
    ok(cli(&endpoint, &[], &["role", "put", "app", "--readwrite", "app/"]).await);
    ok(cli(&endpoint, &[("QUORUMKV_NEW_PASSWORD", "alice-pw")], &["user", "add", "alice", "--roles", "app"]).await);
    ok(cli(&endpoint, &[], &["auth", "enable"]).await);
    assert!(ok(cli(&endpoint, &[], &["auth", "status"]).await).contains("true"));

    let (code, _, stderr) = cli(&endpoint, &[], &["put", "app/x", "1"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("401") && stderr.contains("unauthorized"), "{stderr}");
    let alice = [("QUORUMKV_PASSWORD", "alice-pw")];
    ok(cli(&endpoint, &alice, &["--user", "alice", "put", "app/x", "1"]).await);
    let (code, _, stderr) = cli(&endpoint, &alice, &["--user", "alice", "put", "other", "1"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("403") && stderr.contains("permission_denied"), "{stderr}");
    let (code, _, stderr) =
        cli(&endpoint, &[("QUORUMKV_PASSWORD", "wrong")], &["--user", "alice", "get", "app/x"]).await;
    assert_eq!(code, Some(1), "a wrong password: {stderr}");

    let token = ok(cli(&endpoint, &alice, &["--user", "alice", "auth", "token"]).await);
    assert_eq!(ok(cli(&endpoint, &[], &["--token", token.trim(), "get", "app/x"]).await), "1");
    let users = ok(cli(&endpoint, &[("QUORUMKV_PASSWORD", "root-pw")], &["--user", "root", "user", "list"]).await);
    assert!(users.contains("alice") && users.contains("root"), "{users}");
}

/// Goal: with auth on, a lease is its granter's: another user with the same permissions can
/// neither renew it, nor revoke it, nor attach a key to it (its keys would block the owner's
/// revoke); describing it needs read on its keys; an admin may do anything with it.
#[tokio::test]
async fn a_lease_belongs_to_the_user_who_granted_it() {
    use reqwest::Method;
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    set_up_users(&cluster, leader).await;
    let root = Caller::with_token(&cluster, &token(&cluster, leader, "root", "root-password").await);
    let other_role = json!({"permissions": [{"prefix": "c/", "access": "readwrite"}]});
    assert_eq!(root.json(leader, Method::PUT, "/v1/auth/roles/other", other_role).await.0, 200);
    for (name, role) in [("bob", "app"), ("carol", "other")] {
        let user = json!({"password": format!("{name}-password"), "roles": [role]});
        assert_eq!(root.json(leader, Method::PUT, &format!("/v1/auth/users/{name}"), user).await.0, 200);
    }
    let alice = Caller::with_token(&cluster, &token(&cluster, leader, "alice", "alice-password").await);
    let bob = Caller::with_token(&cluster, &token(&cluster, leader, "bob", "bob-password").await);
    let carol = Caller::with_token(&cluster, &token(&cluster, leader, "carol", "carol-password").await);
    let (status, body) = alice.json(leader, Method::POST, "/v1/leases", json!({"ttl_ms": 60_000})).await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<quorumkv_api::LeaseGrantReply>(&body).expect("a grant").id;
    let attach = |key: &str| format!("/v1/kv/{key}?lease={id}");
    assert_eq!(alice.call(leader, Method::PUT, &attach("app/a"), Some("v".into())).await.0, 200);

    let keepalive = format!("/v1/leases/{id}/keepalive");
    let lease = format!("/v1/leases/{id}");
    refused(&bob.call(leader, Method::POST, &keepalive, None).await, 403, "permission_denied");
    refused(
        &bob.json(leader, Method::POST, "/v1/leases/keepalive", json!({"ids": [id]})).await,
        403,
        "permission_denied",
    );
    refused(&bob.call(leader, Method::DELETE, &lease, None).await, 403, "permission_denied");
    refused(&bob.call(leader, Method::PUT, &attach("app/b"), Some("v".into())).await, 403, "permission_denied");
    refused(&Caller::anonymous(&cluster).call(leader, Method::POST, &keepalive, None).await, 401, "unauthorized");
    refused(&carol.call(leader, Method::GET, &lease, None).await, 403, "permission_denied");
    assert_eq!(bob.call(leader, Method::GET, &lease, None).await.0, 200, "bob may read app/a");
    assert_eq!(bob.get(leader, "app/b").await.0, 404, "the refused attach wrote nothing");
    assert_eq!(alice.call(leader, Method::POST, &keepalive, None).await.0, 200);
    assert_eq!(root.call(leader, Method::POST, &keepalive, None).await.0, 200, "an admin may");
    let (status, body) = alice.call(leader, Method::DELETE, &lease, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""deleted_keys":1"#), "{body}");
}
