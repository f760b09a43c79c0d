//! The peer port changes nothing for a sender that cannot prove it is a member (peer token or
//! mutual TLS), the leader checks forwarded writes again, and TLS works on both ports, with
//! certificates that reload without a restart. In-process nodes.

mod common;

use std::path::Path;
use std::path::PathBuf;

use common::eventually;
use common::Cluster;
use common::PEER_TOKEN;
use quorumkv::error::Error;
use quorumkv::protocol;
use quorumkv::protocol::Ack;
use quorumkv::protocol::ForwardedWrite;
use quorumkv::protocol::Rpc;
use quorumkv::types::Command;
use quorumkv::types::CommandResult;
use quorumkv::types::Precondition;
use quorumkv::types::Vote;

/// A forged write: what `/internal/write` would apply if it were accepted.
fn forged_write(key: &str, value: &str) -> Vec<u8> {
    let command = Command::Put { key: key.into(), value: value.to_string().into(), precondition: Precondition::None };
    protocol::encode(&ForwardedWrite { command, ack: Ack::Quorum }).expect("encode")
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Vec<u8>) -> reqwest::StatusCode {
    let mut request = http.post(url).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("peer port answers").status()
}

async fn value_of(cluster: &Cluster, id: u64, key: &str) -> Option<String> {
    let (status, body) = cluster.get(id, key, "linearizable").await;
    match status {
        200 => Some(body),
        404 => None,
        other => panic!("GET {key} on node {id}: {other} {body}"),
    }
}

/// Goal: without the peer token (or with a wrong one), a forged write, a forged higher-term
/// vote request, a forged snapshot and a forged announcement all get 401 and change nothing:
/// the key keeps its value, no forged key appears, the term does not move, the node serves on.
#[tokio::test]
async fn the_peer_port_refuses_senders_without_the_peer_token() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "k", "v").await;
    let term_before = cluster.cluster_status(leader).await.expect("status").term;
    let http = reqwest::Client::new();
    for id in 1..=3 {
        let peer = format!("http://{}", cluster.node(id).peer_addr);
        let forged_vote =
            openraft::raft::VoteRequest::<quorumkv::types::TypeConfig>::new(Vote::new(term_before + 100, 9), None);
        let forged_vote = protocol::encode(&forged_vote).expect("encode");
        let forged_node: u64 = 9;
        let requests: Vec<(&str, Vec<u8>)> = vec![
            (protocol::ForwardWrite::PATH, forged_write("k", "forged")),
            (protocol::ForwardWrite::PATH, forged_write("forged", "x")),
            (protocol::RequestVote::PATH, forged_vote),
            (protocol::InstallSnapshot::PATH, vec![0u8; 64]),
            (protocol::Announce::PATH, protocol::encode(&forged_node).expect("encode")),
        ];
        for (path, body) in requests {
            for token in [None, Some("not-the-peer-token-at-all")] {
                let status = post(&http, format!("{peer}{path}"), token, body.clone()).await;
                assert_eq!(status, 401, "node {id} {path} with token {token:?}");
            }
        }
    }
    for id in 1..=3 {
        assert_eq!(value_of(&cluster, id, "k").await.as_deref(), Some("v"), "node {id}");
        assert_eq!(value_of(&cluster, id, "forged").await, None, "node {id}");
    }
    // A real election may happen on a loaded machine; the forged term may not be reached.
    let status = cluster.cluster_status(leader).await.expect("status");
    assert!(status.term < term_before + 100, "the forged vote moved the term to {}", status.term);
    // Paths that do not exist and methods the routes do not take: 401 too, before anything.
    for (method, path) in [(reqwest::Method::POST, "/p2/raft/append"), (reqwest::Method::GET, "/p1/raft/vote")] {
        let url = format!("http://{}{path}", cluster.node(leader).peer_addr);
        let status = http.request(method.clone(), url).send().await.expect("answered").status();
        assert_eq!(status, 401, "{method} {path}");
    }
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "after", "still serving").await;
}

/// Goal: without peer TLS, adding a learner (which makes the leader send the peer token to the
/// new address) needs the peer token: a client without it gets a 401 JSON error and the
/// membership is unchanged; with it, the learner is added.
#[tokio::test]
async fn adding_a_learner_without_peer_tls_needs_the_peer_token() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let request = quorumkv_api::AddLearnerRequest { id: 7, peer_addr: "127.0.0.1:1".into(), fresh: false };
    let url = cluster.url(leader, "/v1/cluster/learners");
    for token in [None, Some("not-the-peer-token-at-all")] {
        let mut post = reqwest::Client::new().post(&url).json(&request);
        if let Some(token) = token {
            post = post.bearer_auth(token);
        }
        let response = post.send().await.expect("answered");
        assert_eq!(response.status(), 401, "token {token:?}");
        let body: quorumkv_api::ErrorBody = response.json().await.expect("a JSON error");
        assert_eq!((body.error.as_str(), body.outcome), ("unauthorized", quorumkv_api::Outcome::Failed));
    }
    let members = |status: quorumkv_api::ClusterStatus| status.members.iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(members(cluster.cluster_status(leader).await.expect("status")), [1]);
    let response = reqwest::Client::new().post(&url).bearer_auth(PEER_TOKEN).json(&request).send().await;
    assert_eq!(response.expect("answered").status(), 200, "the token holder adds the learner");
    assert_eq!(members(cluster.cluster_status(leader).await.expect("status")), [1, 7]);
}

/// Goal: a peer token file may hold several tokens (rotation): every one is accepted on the
/// peer port, anything else is refused.
#[tokio::test]
async fn every_token_of_the_peer_token_file_is_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("peer-token");
    std::fs::write(&file, "new-token-0123456789abcdef\n\nold-token-0123456789abcdef\n").expect("write");
    let file = file.display().to_string();
    let cluster = Cluster::start_with_args(1, &["--peer-token-file", &file]).await;
    let leader = cluster.wait_for_leader().await;
    let url = format!("http://{}{}", cluster.node(leader).peer_addr, protocol::Freshness::PATH);
    let http = reqwest::Client::new();
    for (token, expected) in
        [("new-token-0123456789abcdef", 200), ("old-token-0123456789abcdef", 200), (PEER_TOKEN, 401)]
    {
        let body = protocol::encode(&()).expect("encode");
        let status = post(&http, url.clone(), Some(token), body).await;
        assert_eq!(status, expected, "token {token}");
    }
}

/// Goal: the leader checks a forwarded write against the key and value limits again (a
/// buggy peer, or one whose credential was stolen, puts nothing in the log a client could not).
#[tokio::test]
async fn the_leader_checks_forwarded_writes_again() {
    let cluster = Cluster::start_with_args(1, &["--max-key-bytes", "16"]).await;
    let leader = cluster.wait_for_leader().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}{}", cluster.node(leader).peer_addr, protocol::ForwardWrite::PATH);
    let cases = [("a-key-longer-than-sixteen-bytes", "v"), ("bad\u{7}key", "v"), ("", "v")];
    for (key, value) in cases {
        let response = http.post(&url).bearer_auth(PEER_TOKEN).body(forged_write(key, value)).send().await;
        let bytes = response.expect("answered").bytes().await.expect("body");
        let reply: <protocol::ForwardWrite as Rpc>::Reply = protocol::decode(&bytes).expect("a reply");
        assert!(
            matches!(reply, Err(Error::KeyTooLarge { .. } | Error::InvalidKey(_))),
            "{key:?}: the leader must refuse it, got {reply:?}"
        );
    }
    let response = http.post(&url).bearer_auth(PEER_TOKEN).body(forged_write("fine", "v")).send().await;
    let bytes = response.expect("answered").bytes().await.expect("body");
    let reply: <protocol::ForwardWrite as Rpc>::Reply = protocol::decode(&bytes).expect("a reply");
    assert!(matches!(reply, Ok(CommandResult::Put { .. })), "a valid forwarded write runs: {reply:?}");
    let page: quorumkv_api::Page = cluster.get_json(leader, "/v1/kv?prefix=").await;
    let keys: Vec<&str> = page.items.iter().map(|item| item.key.as_str()).collect();
    assert_eq!(keys, ["fine"], "only the valid write is in the store");
}

/// Development certificates in a temporary directory (`quorumkv certs init`).
fn make_certs(dir: &Path) -> PathBuf {
    quorumkv::certs::init(&quorumkv::certs::CertsInit { dir, nodes: 1, hosts: Vec::new() }).expect("certs init");
    dir.to_path_buf()
}

fn tls_args(certs: &Path, client_cert: &Path, client_key: &Path) -> Vec<String> {
    let file = |name: &str| certs.join(name).display().to_string();
    vec![
        "--peer-cert-file".into(),
        file("node-1.pem"),
        "--peer-key-file".into(),
        file("node-1-key.pem"),
        "--peer-trusted-ca-file".into(),
        file("ca.pem"),
        "--client-cert-file".into(),
        client_cert.display().to_string(),
        "--client-key-file".into(),
        client_key.display().to_string(),
    ]
}

/// An HTTPS client trusting `ca_file`, presenting `identity` (certificate and key files).
fn tls_client(ca_file: &Path, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).expect("CA")).expect("CA certificate");
    let mut builder = reqwest::Client::builder().add_root_certificate(ca);
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).expect("cert");
        pem.extend(std::fs::read(key).expect("key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("client")
}

/// Goal: a 3-node cluster with mutual TLS between peers and HTTPS for clients elects a leader
/// and replicates; on the peer port, a sender without a certificate, or with one from another
/// CA, fails the handshake (even holding the peer token) and changes nothing, and plain HTTP
/// gets no answer.
#[tokio::test]
async fn a_tls_cluster_replicates_and_refuses_peers_without_a_member_certificate() {
    let certs_dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(certs_dir.path());
    let args = tls_args(&certs, &certs.join("node-1.pem"), &certs.join("node-1-key.pem"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with_args(3, &args).await;
    cluster.use_client_tls(&certs.join("ca.pem"));
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "k", "v").await;
    for id in 1..=3 {
        assert_eq!(value_of(&cluster, id, "k").await.as_deref(), Some("v"), "node {id} over HTTPS");
    }

    let other_dir = tempfile::tempdir().expect("temp dir");
    let other_ca = make_certs(other_dir.path());
    let strangers = [
        ("no certificate", tls_client(&certs.join("ca.pem"), None)),
        (
            "the CLI's certificate (of the client CA)",
            tls_client(&certs.join("ca.pem"), Some((&certs.join("client.pem"), &certs.join("client-key.pem")))),
        ),
        (
            "a certificate of another CA",
            tls_client(&certs.join("ca.pem"), Some((&other_ca.join("node-1.pem"), &other_ca.join("node-1-key.pem")))),
        ),
    ];
    for id in 1..=3 {
        let peer_addr = &cluster.node(id).peer_addr;
        for (who, client) in &strangers {
            let url = format!("https://{peer_addr}{}", protocol::ForwardWrite::PATH);
            // The sender knows the request never ran (not an unknown outcome): under TLS 1.3
            // the refusal arrives as the server's alert when the answer is read. On a loaded
            // machine the server's close can overtake its alert (a reset, which is taken as
            // an unknown outcome: the cautious side), so one of a few attempts must see it.
            let mut errors = Vec::new();
            for _ in 0..3 {
                let sent = client.post(&url).bearer_auth(PEER_TOKEN).body(forged_write("k", "forged")).send().await;
                errors.push(sent.expect_err(&format!("node {id}: a sender with {who} must fail the handshake")));
            }
            let recognised = errors.iter().any(quorumkv_api::client::certainly_not_sent);
            assert!(recognised, "node {id}, {who}: {errors:?}");
        }
        let plain = reqwest::Client::new().post(format!("http://{peer_addr}{}", protocol::ForwardWrite::PATH));
        let sent = plain.bearer_auth(PEER_TOKEN).body(forged_write("k", "forged")).send().await;
        assert!(sent.is_err(), "node {id}: plain HTTP to the TLS peer port gets no answer, got {sent:?}");
    }
    // A member's certificate is what the peers accept: the same request then runs.
    let member = tls_client(&certs.join("ca.pem"), Some((&certs.join("node-1.pem"), &certs.join("node-1-key.pem"))));
    let url = format!("https://{}{}", cluster.node(leader).peer_addr, protocol::ForwardWrite::PATH);
    let sent = member.post(url).body(forged_write("by-member", "x")).send().await.expect("a member is answered");
    assert_eq!(sent.status(), 200, "mutual TLS alone authenticates a member");
    for id in 1..=3 {
        assert_eq!(value_of(&cluster, id, "k").await.as_deref(), Some("v"), "node {id} unchanged");
    }
}

/// Goal: a node joins a TLS cluster whose client ports require client certificates (of the
/// client CA, as `certs init` makes them): the joining node trusts the members' client-port
/// certificates and presents its peer certificate, which the client ports accept for members.
#[tokio::test]
async fn a_node_joins_a_cluster_whose_client_ports_require_certificates() {
    let certs_dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(certs_dir.path());
    let mut args = tls_args(&certs, &certs.join("node-1.pem"), &certs.join("node-1-key.pem"));
    args.extend(["--client-trusted-ca-file".to_string(), certs.join("client-ca.pem").display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with_args(1, &args).await;
    let identity = (certs.join("client.pem"), certs.join("client-key.pem"));
    cluster.use_client_tls_as(&certs.join("ca.pem"), Some((&identity.0, &identity.1)));
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "k", "v").await;
    // A client without a certificate is refused by the client port.
    let anonymous = tls_client(&certs.join("ca.pem"), None);
    assert!(anonymous.get(cluster.url(leader, "/v1/kv/k")).send().await.is_err(), "no client certificate");
    let joined = cluster.add_joining_node(true);
    cluster.wait_voter(joined).await;
    eventually("the joined node serves the value", || async {
        (cluster.get(joined, "k", "linearizable").await == (200, "v".to_string())).then_some(())
    })
    .await;
}

/// Goal: replacing the client port's certificate files takes effect without a restart: a
/// client trusting only the new CA gets through once the node has noticed, and one trusting
/// only the old CA no longer does; a half-written replacement is refused and the previous
/// certificate stays in use.
#[tokio::test]
async fn the_client_certificate_reloads_when_its_files_change() {
    let certs_dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(certs_dir.path());
    let (cert, key) = (certs.join("client-port.pem"), certs.join("client-port-key.pem"));
    std::fs::copy(certs.join("node-1.pem"), &cert).expect("copy");
    std::fs::copy(certs.join("node-1-key.pem"), &key).expect("copy");
    let args = tls_args(&certs, &cert, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with_args(1, &args).await;
    cluster.use_client_tls(&certs.join("ca.pem"));
    cluster.wait_for_leader().await;
    let url = cluster.url(1, "/health");
    // A new client each time: a pooled connection would keep the certificate it began with.
    let old_ca_client = || tls_client(&certs.join("ca.pem"), None);
    assert!(old_ca_client().get(&url).send().await.is_ok());

    // A broken certificate file: refused, the old certificate keeps serving. Its modification
    // time is put back, as a copy that keeps times would: the change is seen by its contents.
    let original_mtime = std::fs::metadata(&cert).and_then(|m| m.modified()).expect("mtime");
    std::fs::write(&cert, "not a certificate").expect("write");
    let file = std::fs::File::options().write(true).open(&cert).expect("open");
    file.set_modified(original_mtime).expect("set mtime");
    drop(file);
    let new_dir = tempfile::tempdir().expect("temp dir");
    let new_certs = make_certs(new_dir.path());
    let new_ca_client = || tls_client(&new_certs.join("ca.pem"), None);
    // Let the reload poll see the broken file at least once (it logs the refusal).
    eventually("the broken certificate is refused", || async {
        cluster.log(1).contains("TLS certificate not reloaded").then_some(())
    })
    .await;
    assert!(old_ca_client().get(&url).send().await.is_ok(), "the previous certificate stays in use");

    // The renewed pair: the key first, then the certificate (as a renewal tool writes them).
    std::fs::copy(new_certs.join("node-1-key.pem"), &key).expect("copy");
    std::fs::copy(new_certs.join("node-1.pem"), &cert).expect("copy");
    eventually("the new certificate is served", || async { new_ca_client().get(&url).send().await.ok() }).await;
    assert!(old_ca_client().get(&url).send().await.is_err(), "the old certificate is no longer served");
}

/// Goal: SIGHUP makes a node read its certificate files again at once, and does not stop it
/// (the signal's default action would). The files are unchanged, so only the signal can have
/// caused the reload the log reports: the change poll reloads a pair only when its files'
/// contents differ.
#[tokio::test]
async fn sighup_reloads_the_certificates_and_the_node_serves_on() {
    let certs_dir = tempfile::tempdir().expect("temp dir");
    let certs = make_certs(certs_dir.path());
    let args = tls_args(&certs, &certs.join("node-1.pem"), &certs.join("node-1-key.pem"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_processes_with_args(1, &args).await;
    cluster.use_client_tls(&certs.join("ca.pem"));
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "before", "v").await;
    assert!(!cluster.log(leader).contains("TLS certificate reloaded"), "nothing reloaded before the signal");
    cluster.hangup(leader);
    eventually("SIGHUP reloads the certificates", || async {
        cluster.log(leader).contains("TLS certificate reloaded").then_some(())
    })
    .await;
    assert!(cluster.is_running(leader), "SIGHUP stopped the node");
    cluster.put_ok(leader, "after", "v").await;
    assert_eq!(cluster.get(leader, "before", "linearizable").await, (200, "v".to_string()));
}
