//! Backup of a running cluster and restore into a new one, through the CLI: every key and
//! value comes back; a truncated backup is refused and restores nothing.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::Cluster;
use quorumkv_api::Page;

/// Every key of a cluster and its value (text, or `base64:` and the base64 of binary values),
/// through paginated linearizable listing.
async fn contents(cluster: &Cluster, id: u64) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let mut start = String::new();
    loop {
        let page: Page = cluster.get_json(id, &format!("/v1/kv?limit=1000&start={start}")).await;
        for item in page.items {
            let value = match (item.value, item.value_base64) {
                (Some(text), _) => text,
                (None, Some(base64)) => format!("base64:{base64}"),
                (None, None) => panic!("{} has no value", item.key),
            };
            all.insert(item.key, value);
        }
        match page.next_start {
            Some(next) => start = next,
            None => return all,
        }
    }
}

fn cli(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    let endpoints = cluster.nodes.iter().map(|n| n.client_addr.clone()).collect::<Vec<_>>().join(",");
    Command::new(env!("CARGO_BIN_EXE_quorumkv")).args(args).args(["--endpoints", &endpoints]).output().expect("cli")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_round_trip() {
    let source = Cluster::start(3).await;
    let leader = source.wait_for_leader().await;
    for i in 0..300 {
        source.put_ok(1 + i % 3, &format!("app/{i:03}/name"), &format!("value-{i}-é")).await;
    }
    let binary = source.http.put(source.url(leader, "/v1/kv/bin")).body(vec![0u8, 159, 146, 150]).send().await;
    assert_eq!(binary.expect("sent").status(), 200);
    let deleted = source.http.delete(source.url(leader, "/v1/kv/app/007/name")).send().await.expect("sent");
    assert_eq!(deleted.status(), 200);
    let expected = contents(&source, 2).await;
    assert_eq!(expected.len(), 300);

    let dir = tempfile::TempDir::new().expect("dir");
    let file = dir.path().join("backup.jsonl");
    let output = cli(&source, &["backup", file.to_str().expect("path")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let target = Cluster::start(3).await;
    target.wait_for_leader().await;
    // A truncated backup is refused before anything is written.
    let text = std::fs::read_to_string(&file).expect("backup");
    let truncated = dir.path().join("truncated.jsonl");
    std::fs::write(&truncated, text.lines().take(100).collect::<Vec<_>>().join("\n")).expect("write");
    let output = cli(&target, &["restore", truncated.to_str().expect("path")]);
    assert!(!output.status.success(), "a truncated backup must be refused");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cut short"));
    assert!(contents(&target, 1).await.is_empty());

    let output = cli(&target, &["restore", file.to_str().expect("path")]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(contents(&target, 3).await, expected);
}
