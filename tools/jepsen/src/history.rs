//! The recorded history: one record per client operation, invoke to completion.

use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Read,
    Write,
    Cas,
    Delete,
}

/// How an operation ended, in Jepsen's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It took effect (and, for a read, returned `value_read`).
    Ok,
    /// It certainly did not take effect (refused before sending, 412, 4xx, 503).
    Fail,
    /// Unknown: it may or may not have taken effect (timeout, connection lost, 504).
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Position in the history, for reports.
    pub index: usize,
    /// The client that issued it; a client runs one operation at a time.
    pub process: usize,
    /// The node the request was sent to.
    pub node: u64,
    pub key: String,
    pub kind: OpKind,
    /// The value written (write, cas).
    pub value: Option<String>,
    /// For cas: the value whose revision was sent in `If-Match`.
    pub expected: Option<String>,
    /// For an ok read: the value seen (`None` = absent).
    pub value_read: Option<String>,
    pub status: Status,
    /// Nanoseconds since the start of the run.
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub error: Option<String>,
    /// For a bounded-staleness read (`consistency=stale&max_lag_ms=N`): N. Such reads are
    /// checked against their bound, not for linearizability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<u64>,
    /// Sent as a transaction (`POST /v1/txn`): a read as a get, a cas as a value compare and a
    /// put. Checked like the same operation sent as a GET or an `If-Match` PUT.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub txn: bool,
    /// For an ok write or cas: the revision the answer gave (the watch checker expects every
    /// watcher to have seen the write there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// Writes the history to `out/history.jsonl`, one operation per line.
pub fn write(out: &Path, operations: &[Operation]) -> Result<(), String> {
    let mut file = std::fs::File::create(out.join("history.jsonl")).map_err(|e| e.to_string())?;
    for op in operations {
        let line = serde_json::to_string(op).map_err(|e| e.to_string())?;
        writeln!(file, "{line}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
pub mod build {
    //! Compact constructors for hand-made histories in tests.
    use super::*;

    pub fn op(
        process: usize,
        kind: OpKind,
        value: Option<&str>,
        status: Status,
        invoke_ns: u64,
        complete_ns: u64,
    ) -> Operation {
        Operation {
            index: 0,
            process,
            node: 1,
            key: "k".into(),
            kind,
            value: if kind == OpKind::Read { None } else { value.map(str::to_string) },
            expected: None,
            value_read: if kind == OpKind::Read { value.map(str::to_string) } else { None },
            status,
            invoke_ns,
            complete_ns,
            error: None,
            max_lag_ms: None,
            txn: false,
            revision: None,
        }
    }

    pub fn cas(process: usize, from: &str, to: &str, status: Status, invoke_ns: u64, complete_ns: u64) -> Operation {
        Operation { expected: Some(from.into()), ..op(process, OpKind::Cas, Some(to), status, invoke_ns, complete_ns) }
    }

    pub fn numbered(mut ops: Vec<Operation>) -> Vec<Operation> {
        for (i, op) in ops.iter_mut().enumerate() {
            op.index = i;
        }
        ops
    }
}
