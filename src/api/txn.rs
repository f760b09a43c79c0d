//! `POST /v1/txn`: compares, then the `success` or the `failure` operations, atomically in one
//! log entry (`quorumkv_wire::txn`). The body is checked whole before anything is proposed: a
//! malformed transaction is a 4xx and changes nothing.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use quorumkv_api::CompareOp;
use quorumkv_api::TxnCompare;
use quorumkv_api::TxnOpKind;
use quorumkv_api::TxnOperation;
use quorumkv_api::TxnReply;
use quorumkv_api::TxnRequest;
use quorumkv_api::TxnResult;
use quorumkv_api::WriteParams;
use quorumkv_wire::lease::LeaseRef;
use quorumkv_wire::txn::Cmp;
use quorumkv_wire::txn::Compare;
use quorumkv_wire::txn::Target;
use quorumkv_wire::txn::Txn;
use quorumkv_wire::txn::TxnOp;
use quorumkv_wire::txn::TxnOpResult;

use super::kv::ack;
use super::kv::item;
use super::kv::write_result_error;
use super::ApiError;
use super::Caller;
use super::Params;
use crate::error::Error;
use crate::limits;
use crate::node::Node;
use crate::types::Command;
use crate::types::CommandResult;

pub(super) async fn txn(
    State(node): State<Arc<Node>>,
    params: Result<Params<WriteParams>, ApiError>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TxnReply>, ApiError> {
    let config = node.config();
    let (max_key_bytes, max_value_bytes) = (config.max_key_bytes, config.max_value_bytes);
    // The body first, whatever else is wrong (as a PUT's value, see `kv::put`).
    let body = super::read_body(&headers, body, limits::txn_body_bytes(max_key_bytes, max_value_bytes)).await;
    let Params(params) = params?;
    super::kv::no_lease_params(&params)?;
    let ack = ack(params.ack);
    let request: TxnRequest = serde_json::from_slice(&body?)
        .map_err(|e| Error::InvalidParameter(format!("the transaction is not of the documented form: {e}")))?;
    let txn = parse_txn(request)?;
    txn.check(max_key_bytes, max_value_bytes)?;
    let caller = caller?;
    for need in txn.needs() {
        node.authorize_or_catch_up(caller.principal(), need).await?;
    }
    // The keys of each branch's gets, to name them in the answer.
    let get_keys = |branch: &[TxnOp]| -> Vec<Option<String>> {
        branch.iter().map(|op| if let TxnOp::Get { key } = op { Some(key.clone()) } else { None }).collect()
    };
    let (success_keys, failure_keys) = (get_keys(&txn.success), get_keys(&txn.failure));
    let _slot = node.admit().await?;
    match node.write(caller.wrap(Command::Txn(txn)), ack).await? {
        CommandResult::Txn { succeeded, revision, results } => {
            let keys = if succeeded { success_keys } else { failure_keys };
            let results = results.into_iter().zip(keys).map(|(result, key)| answer(result, key)).collect();
            Ok(Json(TxnReply { succeeded, revision, results }))
        }
        other => Err(write_result_error(other).into()),
    }
}

fn answer(result: TxnOpResult, key: Option<String>) -> TxnResult {
    match result {
        TxnOpResult::Put { revision } => TxnResult::Put { revision },
        TxnOpResult::Delete { deleted } => TxnResult::Delete { deleted },
        TxnOpResult::DeletePrefix { deleted } => TxnResult::DeletePrefix { deleted },
        TxnOpResult::Get(stored) => TxnResult::Get { kv: stored.map(|stored| item(key.unwrap_or_default(), stored)) },
    }
}

/// The transaction a request body describes, or what is wrong with it, named by its place
/// (`compare[0]`, `success[2]`).
fn parse_txn(request: TxnRequest) -> Result<Txn, Error> {
    let compare = (request.compare.into_iter().enumerate())
        .map(|(index, compare)| parse_compare(index, compare))
        .collect::<Result<_, _>>()?;
    let ops = |name: &str, ops: Vec<TxnOperation>| -> Result<Vec<TxnOp>, Error> {
        ops.into_iter().enumerate().map(|(index, op)| parse_op(&format!("{name}[{index}]"), op)).collect()
    };
    Ok(Txn { compare, success: ops("success", request.success)?, failure: ops("failure", request.failure)? })
}

fn parse_compare(index: usize, compare: TxnCompare) -> Result<Compare, Error> {
    let place = format!("compare[{index}]");
    let cmp = match compare.cmp {
        CompareOp::Equal => Cmp::Equal,
        CompareOp::NotEqual => Cmp::NotEqual,
        CompareOp::Less => Cmp::Less,
        CompareOp::Greater => Cmp::Greater,
    };
    let mut targets = Vec::new();
    if let Some(value) = compare.value {
        targets.push(Target::Value(Bytes::from(value)));
    }
    if let Some(value) = compare.value_base64 {
        targets.push(Target::Value(decode_base64(&place, &value)?));
    }
    targets.extend(compare.mod_revision.map(Target::ModRevision));
    targets.extend(compare.create_revision.map(Target::CreateRevision));
    targets.extend(compare.exists.map(Target::Exists));
    let Ok([target]) = <[Target; 1]>::try_from(targets) else {
        return Err(Error::InvalidParameter(format!(
            "{place} needs exactly one of value, value_base64, mod_revision, create_revision, exists"
        )));
    };
    Ok(Compare { key: compare.key, cmp, target })
}

fn parse_op(place: &str, op: TxnOperation) -> Result<TxnOp, Error> {
    let invalid = |what: &str| Error::InvalidParameter(format!("{place}: {what}"));
    let TxnOperation { op: kind, key, prefix, value, value_base64, lease, ttl_ms } = op;
    let has_value = value.is_some() || value_base64.is_some();
    let lease = match (lease, ttl_ms) {
        (None, None) => None,
        _ if kind != TxnOpKind::Put => return Err(invalid("lease and ttl_ms go with a put")),
        (Some(_), Some(_)) => return Err(invalid("use lease or ttl_ms, not both")),
        (Some(id), None) => Some(LeaseRef::Existing(id)),
        (None, Some(ttl_ms)) => Some(LeaseRef::New { ttl_ms }),
    };
    let put = |key: String, value: Bytes| match lease {
        None => TxnOp::Put { key, value },
        Some(lease) => TxnOp::PutWithLease { key, value, lease },
    };
    match kind {
        TxnOpKind::DeletePrefix => match (prefix, key, has_value) {
            (Some(prefix), None, false) => Ok(TxnOp::DeletePrefix { prefix }),
            _ => Err(invalid("delete_prefix takes a prefix, and no key or value")),
        },
        kind => {
            let (Some(key), None) = (key, prefix) else {
                return Err(invalid("put, delete and get take a key, and no prefix"));
            };
            match (kind, value, value_base64) {
                (TxnOpKind::Put, Some(value), None) => Ok(put(key, Bytes::from(value))),
                (TxnOpKind::Put, None, Some(value)) => Ok(put(key, decode_base64(place, &value)?)),
                (TxnOpKind::Put, _, _) => Err(invalid("put takes exactly one of value and value_base64")),
                (_, None, None) if kind == TxnOpKind::Delete => Ok(TxnOp::Delete { key }),
                (_, None, None) => Ok(TxnOp::Get { key }),
                _ => Err(invalid("delete and get take no value")),
            }
        }
    }
}

fn decode_base64(place: &str, value: &str) -> Result<Bytes, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(value)
        .map(Bytes::from)
        .map_err(|e| Error::InvalidParameter(format!("{place}: value_base64 is not base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: each malformed compare or operation is refused with its place named, and a
    /// well-formed one becomes the transaction it describes.
    #[test]
    fn a_request_becomes_its_transaction_or_a_named_refusal() {
        let request = TxnRequest {
            compare: vec![TxnCompare::mod_revision("a", CompareOp::Less, 4), TxnCompare::exists("b", true)],
            success: vec![TxnOperation::put("a", "1"), TxnOperation::delete_prefix("t/")],
            failure: vec![TxnOperation::get("a"), TxnOperation::delete("b")],
        };
        let txn = parse_txn(request).expect("valid");
        assert_eq!(txn.compare[0], Compare { key: "a".into(), cmp: Cmp::Less, target: Target::ModRevision(4) });
        assert_eq!(txn.success[1], TxnOp::DeletePrefix { prefix: "t/".into() });
        assert_eq!(txn.failure, [TxnOp::Get { key: "a".into() }, TxnOp::Delete { key: "b".into() }]);
        let binary = TxnOperation { value: None, value_base64: Some("/wA=".into()), ..TxnOperation::put("k", "") };
        let parsed = parse_txn(TxnRequest { success: vec![binary], ..TxnRequest::default() }).expect("valid");
        assert_eq!(parsed.success[0], TxnOp::Put { key: "k".into(), value: Bytes::from_static(&[0xff, 0]) });

        let two_targets = TxnCompare { mod_revision: Some(1), ..TxnCompare::exists("a", true) };
        let no_target = TxnCompare { key: "a".into(), ..TxnCompare::default() };
        let bad_base64 = TxnCompare { key: "a".into(), value_base64: Some("%%".into()), ..TxnCompare::default() };
        for (compare, place) in [(two_targets, "compare[0]"), (no_target, "compare[0]"), (bad_base64, "compare[0]")] {
            let refused = parse_txn(TxnRequest { compare: vec![compare], ..TxnRequest::default() });
            assert!(matches!(&refused, Err(Error::InvalidParameter(m)) if m.starts_with(place)), "{refused:?}");
        }
        let put_without_value = TxnOperation { value: None, ..TxnOperation::put("k", "") };
        let put_with_both = TxnOperation { value_base64: Some("AA==".into()), ..TxnOperation::put("k", "v") };
        let get_with_value = TxnOperation { value: Some("v".into()), ..TxnOperation::get("k") };
        let delete_without_key = TxnOperation { key: None, ..TxnOperation::delete("k") };
        let prefix_with_key = TxnOperation { key: Some("k".into()), ..TxnOperation::delete_prefix("p") };
        let get_with_prefix = TxnOperation { prefix: Some("p".into()), ..TxnOperation::get("k") };
        for op in
            [put_without_value, put_with_both, get_with_value, delete_without_key, prefix_with_key, get_with_prefix]
        {
            let refused = parse_txn(TxnRequest {
                success: vec![TxnOperation::get("fine")],
                failure: vec![TxnOperation::get("fine"), op.clone()],
                ..TxnRequest::default()
            });
            assert!(matches!(&refused, Err(Error::InvalidParameter(m)) if m.starts_with("failure[1]")), "{op:?}");
        }
    }
}
