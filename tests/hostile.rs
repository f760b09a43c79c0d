//! Hostile input against a running node, as raw bytes on its sockets: malformed requests,
//! invalid UTF-8, path tricks, too many or too large headers, oversized and garbage peer
//! messages. Each must be answered with a 4xx (or, for the peer port without the token, 401),
//! leave the node serving, and change no data. In-process node.

mod common;

use std::time::Duration;

use common::Cluster;
use common::PEER_TOKEN;
use quorumkv_api::Page;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a node may take to answer a hostile request (they are all refused at once).
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// Sends `request` as is and returns the status code of the answer (0: the connection was
/// closed without one).
async fn raw_status(addr: &str, request: &[u8]) -> u16 {
    raw_status_within(addr, request, ANSWER_DEADLINE).await
}

/// [`raw_status`], waiting up to `deadline` for the answer.
async fn raw_status_within(addr: &str, request: &[u8], deadline: Duration) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The node may answer and close before reading everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut buffer = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within {deadline:?} to {:?}", String::from_utf8_lossy(request));
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok()).unwrap_or(0)
}

/// Goal: every hostile client request gets a 4xx, and afterwards the node serves and its data
/// is what it was.
#[tokio::test]
async fn hostile_client_requests_get_4xx_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "k", "v").await;
    let addr = cluster.node(leader).client_addr.clone();
    let many_headers: String = (0..500).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge_header = format!("x-big: {}\r\n", "a".repeat(1024 * 1024));
    let long_uri = format!("GET /v1/kv/{} HTTP/1.1\r\nhost: x\r\n\r\n", "k".repeat(1024 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "invalid UTF-8, percent-encoded",
            b"PUT /v1/kv/%FF%FE HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nv".to_vec(),
        ),
        ("invalid UTF-8, raw", b"PUT /v1/kv/\xff\xfe HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nv".to_vec()),
        ("a NUL in the key", b"PUT /v1/kv/a%00b HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nv".to_vec()),
        ("a header without a colon", b"GET /v1/kv/k HTTP/1.1\r\nhost x\r\n\r\n".to_vec()),
        ("a request line of garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec()),
        ("many headers", format!("GET /v1/kv/k HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n").into_bytes()),
        ("a 1 MiB header", format!("GET /v1/kv/k HTTP/1.1\r\nhost: x\r\n{huge_header}\r\n").into_bytes()),
        ("a 1 MiB URI", long_uri.into_bytes()),
        (
            "a declared body far over the value limit",
            format!("PUT /v1/kv/big HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", 64 * 1024 * 1024).into_bytes(),
        ),
        (
            "two content lengths",
            b"PUT /v1/kv/k HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nvv".to_vec(),
        ),
        (
            "bad chunked encoding",
            b"PUT /v1/kv/k HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        ),
        (
            "If-Match not ASCII",
            b"PUT /v1/kv/k HTTP/1.1\r\nhost: x\r\nif-match: \xff\r\ncontent-length: 1\r\n\r\nv".to_vec(),
        ),
        ("a cluster path with a trick", b"DELETE /v1/cluster/members/..%2F1 HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ("a member id that is not a number", b"DELETE /v1/cluster/members/-1 HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        (
            "a learner request that is not JSON (with the token, so the JSON is what is judged)",
            format!(
                "POST /v1/cluster/learners HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {PEER_TOKEN}\r\n\
                 content-type: application/json\r\ncontent-length: 3\r\n\r\n{{{{{{"
            )
            .into_bytes(),
        ),
    ];
    for (what, request) in &cases {
        let status = raw_status(&addr, request).await;
        assert!((400..500).contains(&status), "{what}: answered {status}, not a 4xx");
    }
    // The last case passes the token check: its 4xx is the JSON's.
    let (what, request) = cases.last().expect("cases");
    assert_eq!(raw_status(&addr, request).await, 400, "{what}");
    let (status, body) = cluster.get(leader, "k", "linearizable").await;
    assert_eq!((status, body.as_str()), (200, "v"), "the node serves and the key is unchanged");
    let page: Page = cluster.get_json(leader, "/v1/kv").await;
    let keys: Vec<&str> = page.items.iter().map(|item| item.key.as_str()).collect();
    assert_eq!(keys, ["k"], "no hostile request wrote anything");
    let members: serde_json::Value = cluster.get_json(leader, "/v1/cluster/members").await;
    assert_eq!(members.as_array().map(Vec::len), Some(1), "membership unchanged: {members}");
    cluster.put_ok(leader, "after", "v").await;
}

/// Goal: on the peer port, garbage and oversized messages from a holder of the token get a
/// 4xx, without the token a 401 before the body is read, and the node serves on unchanged.
#[tokio::test]
async fn hostile_peer_messages_get_4xx_and_change_nothing() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put_ok(leader, "k", "v").await;
    let addr = cluster.node(leader).peer_addr.clone();
    let with_token = |path: &str, body: &[u8]| {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {PEER_TOKEN}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let oversized = format!(
        "POST /p1/raft/append HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {PEER_TOKEN}\r\ncontent-length: {}\r\n\r\n",
        1024 * 1024 * 1024
    );
    // A forwarded delete wrapped in `As { principal: Member, .. }` four million times (8 MB,
    // within the peer message limit): decoding it recursively would overflow the stack.
    let mut nested = vec![1u8];
    nested.extend(std::iter::repeat_n([0x03u8, 0x01], 4_000_000).flatten());
    nested.extend_from_slice(&[0x01, 0x01, b'k', 0x00, 0x00]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a forwarded write wrapped four million times", with_token("/p1/internal/write", &nested), 400),
        ("garbage append", with_token("/p1/raft/append", b"\x01\xff\xff\xff\xff\xff\xff"), 400),
        ("an append of another version", with_token("/p1/raft/append", b"\x02\x00"), 400),
        ("an empty vote", with_token("/p1/raft/vote", b""), 400),
        ("garbage forwarded write", with_token("/p1/internal/write", b"\x01\x07\x07\x07"), 400),
        ("a snapshot cut short", with_token("/p1/raft/snapshot", b"\x05\x00"), 400),
        ("a snapshot header too large", with_token("/p1/raft/snapshot", b"\xff\xff\xff\x7f"), 400),
        ("an unknown path", with_token("/p2/raft/append", b"\x01"), 404),
        ("an append of 1 GiB", oversized.into_bytes(), 413),
        ("no token, garbage", b"POST /p1/raft/append HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nxx".to_vec(), 401),
        (
            "a token that is not ASCII",
            b"POST /p1/raft/vote HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \xff\xfe\r\ncontent-length: 0\r\n\r\n"
                .to_vec(),
            401,
        ),
    ];
    for (what, request, expected) in &cases {
        let status = raw_status(&addr, request).await;
        assert_eq!(status, *expected, "{what}");
    }
    let (status, body) = cluster.get(leader, "k", "linearizable").await;
    assert_eq!((status, body.as_str()), (200, "v"), "the node serves and the key is unchanged");
    let page: Page = cluster.get_json(leader, "/v1/kv").await;
    assert_eq!(page.items.len(), 1, "no hostile message wrote anything: {:?}", page.items);
    cluster.put_ok(leader, "after", "v").await;
}

/// Goal: a peer message whose body stops arriving holds its connection no longer than the
/// peer body deadline: the sender (with the token) gets `408`, and the node serves on.
#[tokio::test]
async fn a_peer_body_that_stops_arriving_gets_408_at_the_deadline() {
    let cluster = Cluster::start(1).await;
    let leader = cluster.wait_for_leader().await;
    let addr = cluster.node(leader).peer_addr.clone();
    // Ten bytes of a declared hundred, then nothing, with the connection kept open.
    let mut request = format!(
        "POST /p1/raft/append HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {PEER_TOKEN}\r\ncontent-length: 100\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(&[0x01; 10]);
    let deadline = Duration::from_millis(quorumkv::limits::PEER_BODY_READ_TIMEOUT_MS);
    let started = std::time::Instant::now();
    let status = raw_status_within(&addr, &request, deadline + ANSWER_DEADLINE).await;
    assert_eq!(status, 408, "a stalled peer body is answered 408");
    assert!(started.elapsed() >= deadline, "answered before the deadline: {:?}", started.elapsed());
    cluster.put_ok(leader, "after", "v").await;
}
