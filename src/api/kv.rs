//! `/v1/kv`: get, put, delete and list keys.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use quorumkv_api::AckParam;
use quorumkv_api::ConsistencyParam;
use quorumkv_api::DeleteReply;
use quorumkv_api::Item;
use quorumkv_api::ListParams;
use quorumkv_api::Page;
use quorumkv_api::PutReply;
use quorumkv_api::ReadParams;
use quorumkv_api::WriteParams;

use super::ApiError;
use super::Caller;
use super::Params;
use crate::auth::Need;
use crate::error::Error;
use crate::limits;
use crate::node::Consistency;
use crate::node::Node;
use crate::protocol::Ack;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Precondition;
use crate::watch::Filter;
use quorumkv_wire::lease::LeaseRef;
use quorumkv_wire::lease::LeaseResult;
use quorumkv_wire::txn::Txn;
use quorumkv_wire::txn::TxnOp;
use quorumkv_wire::txn::TxnOpResult;

type KeyPath = Result<Path<String>, PathRejection>;

pub(super) async fn empty_key() -> ApiError {
    Error::InvalidKey("the key is empty".into()).into()
}

pub(super) async fn get(
    State(node): State<Arc<Node>>,
    key: KeyPath,
    params: Result<Params<ReadParams>, ApiError>,
    caller: Result<Caller, ApiError>,
) -> Result<Response, ApiError> {
    let key = parse_key(&node, key)?;
    let Params(params) = params?;
    let caller = caller?;
    node.authorize_or_catch_up(caller.principal(), Need::Read(&key)).await?;
    let consistency = parse_consistency(params.consistency, params.max_lag_ms)?;
    let wait = parse_wait(params.wait_revision, params.wait_ms)?;
    if let Some((after, wait)) = wait {
        // Before taking a slot: a blocking read may wait for minutes doing nothing.
        node.wait_for_change(&Filter::Key(key.clone()), after, wait).await?;
    }
    let _slot = node.admit().await?;
    let (stored, index) = node.get_indexed(&key, consistency).await?;
    // Again after the read point: a read honours every auth change committed before it.
    node.authorize(caller.principal(), Need::Read(&key))?;
    let mut response = match stored {
        Some(stored) => {
            let mut response = stored.value.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(header::ETAG, etag(stored.mod_revision));
            if let Some(lease) = node.lease_of(&key) {
                headers.insert(quorumkv_api::LEASE_HEADER, HeaderValue::from(lease));
            }
            response
        }
        // With the index too: a blocking read of a key that is absent waits for it from there.
        None => super::error_response(Error::KeyNotFound),
    };
    response.headers_mut().insert(quorumkv_api::INDEX_HEADER, HeaderValue::from(index));
    Ok(response)
}

/// `wait_revision` (a blocking read) and its `wait_ms`, within [`limits::MAX_WAIT_MS`].
fn parse_wait(wait_revision: Option<u64>, wait_ms: Option<u64>) -> Result<Option<(u64, Duration)>, Error> {
    match (wait_revision, wait_ms) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Error::InvalidParameter("wait_ms goes with wait_revision".into())),
        (Some(_), Some(ms)) if !(1..=limits::MAX_WAIT_MS).contains(&ms) => {
            Err(Error::InvalidParameter(format!("wait_ms must be between 1 and {}", limits::MAX_WAIT_MS)))
        }
        (Some(after), ms) => Ok(Some((after, Duration::from_millis(ms.unwrap_or(limits::DEFAULT_WAIT_MS))))),
    }
}

pub(super) async fn put(
    State(node): State<Arc<Node>>,
    key: KeyPath,
    params: Result<Params<WriteParams>, ApiError>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The body is read first, whatever else is wrong: answering before the client has
    // sent it makes the server close the connection under a writing client, which then
    // sees a broken pipe instead of the 4xx.
    let value = read_value(&node, &headers, body).await;
    let key = parse_key(&node, key)?;
    let Params(params) = params?;
    let ack = ack(params.ack);
    let precondition = parse_precondition(&headers)?;
    let lease = parse_lease(params.lease, params.ttl_ms)?;
    let value = value?;
    let caller = caller?;
    node.authorize_or_catch_up(caller.principal(), Need::Write(&key)).await?;
    let _slot = node.admit().await?;
    let command = match lease {
        None => Command::Put { key, value, precondition },
        // A put with a lease is the transaction it stands for, as a conditional put is.
        Some(lease) => {
            let failure =
                if precondition == Precondition::None { vec![] } else { vec![TxnOp::Get { key: key.clone() }] };
            let compare = precondition.compares(&key);
            Command::Txn(Txn { compare, success: vec![TxnOp::PutWithLease { key, value, lease }], failure })
        }
    };
    let revision = match node.write(caller.wrap(command), ack).await? {
        CommandResult::Put { revision } | CommandResult::Txn { succeeded: true, revision, .. } => revision,
        CommandResult::Txn { succeeded: false, results, .. } => {
            let current_revision = match results.first() {
                Some(TxnOpResult::Get(current)) => current.as_ref().map(|stored| stored.mod_revision),
                _ => None,
            };
            return Err(Error::PreconditionFailed { current_revision }.into());
        }
        other => return Err(write_result_error(other).into()),
    };
    let mut response = Json(PutReply { revision }).into_response();
    response.headers_mut().insert(header::ETAG, etag(revision));
    Ok(response)
}

/// `lease=ID` or `ttl_ms=N` (not both) on a put.
fn parse_lease(lease: Option<u64>, ttl_ms: Option<u64>) -> Result<Option<LeaseRef>, Error> {
    match (lease, ttl_ms) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => {
            Err(Error::InvalidParameter("use lease or ttl_ms, not both (a lease has its own TTL)".into()))
        }
        (Some(id), None) => Ok(Some(LeaseRef::Existing(id))),
        (None, Some(ttl_ms)) => {
            quorumkv_wire::lease::check_ttl(ttl_ms)?;
            Ok(Some(LeaseRef::New { ttl_ms }))
        }
    }
}

/// Refuses `lease` and `ttl_ms` where they mean nothing (a delete, a transaction's query).
pub(super) fn no_lease_params(params: &WriteParams) -> Result<(), Error> {
    if params.lease.is_some() || params.ttl_ms.is_some() {
        return Err(Error::InvalidParameter(
            "lease and ttl_ms go with a put (in a transaction: on its operation)".into(),
        ));
    }
    Ok(())
}

pub(super) async fn delete(
    State(node): State<Arc<Node>>,
    key: KeyPath,
    params: Result<Params<WriteParams>, ApiError>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
) -> Result<Json<DeleteReply>, ApiError> {
    let key = parse_key(&node, key)?;
    let Params(params) = params?;
    no_lease_params(&params)?;
    let ack = ack(params.ack);
    let precondition = parse_precondition(&headers)?;
    let caller = caller?;
    node.authorize_or_catch_up(caller.principal(), Need::Write(&key)).await?;
    let _slot = node.admit().await?;
    match node.write(caller.wrap(Command::Delete { key, precondition }), ack).await? {
        CommandResult::Delete { revision, deleted } => Ok(Json(DeleteReply { revision, deleted })),
        other => Err(write_result_error(other).into()),
    }
}

pub(super) async fn list(
    State(node): State<Arc<Node>>,
    Params(params): Params<ListParams>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let consistency = parse_consistency(params.consistency, params.max_lag_ms)?;
    let limit = match params.limit {
        None => limits::DEFAULT_LIST_LIMIT,
        Some(limit) if (1..=limits::MAX_LIST_LIMIT).contains(&limit) => limit,
        Some(_) => {
            return Err(
                Error::InvalidParameter(format!("limit must be between 1 and {}", limits::MAX_LIST_LIMIT)).into()
            )
        }
    };
    let prefix = params.prefix.unwrap_or_default();
    let start = params.start.unwrap_or_default();
    let wait = parse_wait(params.wait_revision, params.wait_ms)?;
    node.authorize_or_catch_up(caller.principal(), Need::ReadPrefix(&prefix)).await?;
    if let Some((after, wait)) = wait {
        node.wait_for_change(&Filter::Prefix(prefix.clone()), after, wait).await?;
    }
    let _slot = node.admit().await?;
    let ((page, next_start), index) = node.list_indexed(&prefix, &start, limit, consistency).await?;
    node.authorize(caller.principal(), Need::ReadPrefix(&prefix))?;
    let items = page.into_iter().map(|(key, stored)| item(key, stored)).collect();
    let mut response = Json(Page { items, next_start }).into_response();
    response.headers_mut().insert(quorumkv_api::INDEX_HEADER, HeaderValue::from(index));
    Ok(response)
}

/// The results a write can have other than success, as errors.
pub(super) fn write_result_error(result: CommandResult) -> Error {
    match result {
        CommandResult::PreconditionFailed { current_revision } => Error::PreconditionFailed { current_revision },
        CommandResult::Refused(refusal) => refusal.into(),
        CommandResult::Lease(LeaseResult::NotFound { id }) => Error::LeaseNotFound { id },
        other => Error::Internal(format!("unexpected write result {other:?}")),
    }
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn parse_key(node: &Node, key: KeyPath) -> Result<String, Error> {
    let Path(key) = key.map_err(|rejection| Error::InvalidKey(rejection.body_text()))?;
    crate::types::check_key(&key, node.config().max_key_bytes)?;
    Ok(key)
}

/// `consistency=linearizable|lease|stale` (default linearizable), and with `stale` an
/// optional `max_lag_ms` within [`limits::MAX_STALENESS_BOUND_MS`].
fn parse_consistency(consistency: Option<ConsistencyParam>, max_lag_ms: Option<u64>) -> Result<Consistency, Error> {
    let max_lag = match max_lag_ms {
        None => None,
        Some(ms) if (1..=limits::MAX_STALENESS_BOUND_MS).contains(&ms) => Some(Duration::from_millis(ms)),
        Some(_) => {
            return Err(Error::InvalidParameter(format!(
                "max_lag_ms must be between 1 and {}",
                limits::MAX_STALENESS_BOUND_MS
            )))
        }
    };
    match (consistency, max_lag) {
        (None | Some(ConsistencyParam::Linearizable), None) => Ok(Consistency::Linearizable),
        (Some(ConsistencyParam::Lease), None) => Ok(Consistency::Lease),
        (Some(ConsistencyParam::Stale), max_lag) => Ok(Consistency::Stale { max_lag }),
        (_, Some(_)) => Err(Error::InvalidParameter("max_lag_ms goes with consistency=stale".into())),
    }
}

/// `ack=quorum` (default, semi-synchronous) or `ack=all` (synchronous).
pub(super) fn ack(ack: Option<AckParam>) -> Ack {
    match ack {
        None | Some(AckParam::Quorum) => Ack::Quorum,
        Some(AckParam::All) => Ack::All,
    }
}

/// `If-Match: "<rev>"` (compare-and-set), `If-Match: *` (must exist),
/// `If-None-Match: *` (create only).
fn parse_precondition(headers: &HeaderMap) -> Result<Precondition, Error> {
    let text = |name: header::HeaderName| -> Result<Option<String>, Error> {
        let mut values = headers.get_all(&name).iter();
        let Some(value) = values.next() else { return Ok(None) };
        if values.next().is_some() {
            return Err(Error::InvalidHeader(format!("{name} given more than once")));
        }
        let value = value.to_str().map_err(|_| Error::InvalidHeader(format!("{name} is not ASCII")))?;
        Ok(Some(value.trim().to_string()))
    };
    Precondition::from_headers(text(header::IF_MATCH)?.as_deref(), text(header::IF_NONE_MATCH)?.as_deref())
}

/// Reads the request body as the value, refusing more than `--max-value-bytes`.
async fn read_value(node: &Node, headers: &HeaderMap, body: Body) -> Result<Bytes, Error> {
    super::read_body(headers, body, node.config().max_value_bytes).await
}

/// A key and its record as the API shows them: the value as text when it is UTF-8, else as
/// base64.
pub(super) fn item(key: String, stored: crate::store::StoredValue) -> Item {
    let (value, value_base64) = text_or_base64(&stored.value);
    Item { key, revision: stored.mod_revision, create_revision: stored.create_revision, value, value_base64 }
}

/// A value as the API's JSON carries it: `value` when it is UTF-8, else `value_base64`.
pub(super) fn text_or_base64(value: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(value) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(value))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    /// Goal: each conditional header form maps to its precondition; anything else is a 400
    /// (`invalid_header`), never an unconditional write.
    #[test]
    fn conditional_headers_map_to_preconditions_or_are_refused() {
        assert_eq!(parse_precondition(&HeaderMap::new()), Ok(Precondition::None));
        assert_eq!(parse_precondition(&headers(&[(header::IF_MATCH, "\"42\"")])), Ok(Precondition::ModRevision(42)));
        assert_eq!(parse_precondition(&headers(&[(header::IF_MATCH, " 7 ")])), Ok(Precondition::ModRevision(7)));
        assert_eq!(parse_precondition(&headers(&[(header::IF_MATCH, "*")])), Ok(Precondition::Exists));
        assert_eq!(parse_precondition(&headers(&[(header::IF_NONE_MATCH, "*")])), Ok(Precondition::Absent));
        for bad in [
            headers(&[(header::IF_MATCH, "\"-1\"")]),
            headers(&[(header::IF_MATCH, "W/\"3\"")]),
            headers(&[(header::IF_MATCH, "\"18446744073709551616\"")]),
            headers(&[(header::IF_NONE_MATCH, "\"3\"")]),
            headers(&[(header::IF_MATCH, "1"), (header::IF_MATCH, "2")]),
            headers(&[(header::IF_MATCH, "*"), (header::IF_NONE_MATCH, "*")]),
        ] {
            assert!(matches!(parse_precondition(&bad), Err(Error::InvalidHeader(_))), "{bad:?}");
        }
    }

    /// Goal: consistency defaults to linearizable; a staleness bound goes only with `stale`
    /// and within its limit; parameters are decoded into the API's types, unknown ones refused.
    #[test]
    fn consistency_and_staleness_bounds_are_checked() {
        use ConsistencyParam::*;
        assert_eq!(parse_consistency(None, None), Ok(Consistency::Linearizable));
        assert_eq!(parse_consistency(Some(Lease), None), Ok(Consistency::Lease));
        assert_eq!(parse_consistency(Some(Stale), None), Ok(Consistency::Stale { max_lag: None }));
        assert_eq!(
            parse_consistency(Some(Stale), Some(250)),
            Ok(Consistency::Stale { max_lag: Some(Duration::from_millis(250)) })
        );
        for (consistency, max_lag_ms) in [
            (None, Some(250)),
            (Some(Linearizable), Some(10)),
            (Some(Lease), Some(10)),
            (Some(Stale), Some(0)),
            (Some(Stale), Some(limits::MAX_STALENESS_BOUND_MS + 1)),
        ] {
            let parsed = parse_consistency(consistency, max_lag_ms);
            assert!(matches!(parsed, Err(Error::InvalidParameter(_))), "{consistency:?} {max_lag_ms:?}");
        }
        assert_eq!((ack(None), ack(Some(AckParam::All))), (Ack::Quorum, Ack::All));
    }

    /// Goal: the query extractor refuses unknown, misspelt and malformed parameters with 400.
    #[tokio::test]
    async fn query_parameters_are_typed_and_unknown_ones_refused() {
        use axum::extract::FromRequestParts;
        async fn params<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, Error> {
            let request = axum::http::Request::get(format!("/v1/kv/k?{query}")).body(()).expect("request");
            let (mut parts, ()) = request.into_parts();
            Params::<T>::from_request_parts(&mut parts, &())
                .await
                .map(|Params(params)| params)
                .map_err(|ApiError(error)| error)
        }
        let read: ReadParams = params("consistency=stale&max_lag_ms=5").await.expect("valid");
        assert_eq!((read.consistency, read.max_lag_ms), (Some(ConsistencyParam::Stale), Some(5)));
        assert_eq!(params::<WriteParams>("ack=all").await.expect("valid").ack, Some(AckParam::All));
        for bad in ["ttl=5", "ack=one", "ack=all&ack=quorum"] {
            let refused = params::<WriteParams>(bad).await;
            assert!(matches!(refused, Err(Error::InvalidParameter(_))), "{bad}: {refused:?}");
        }
        for bad in ["consistency=eventual", "max_lag_ms=soon", "max_lag_ms=-1", "limit=5"] {
            let refused = params::<ReadParams>(bad).await;
            assert!(matches!(refused, Err(Error::InvalidParameter(_))), "{bad}: {refused:?}");
        }
        assert!(params::<ListParams>("prefix=a/&limit=x").await.is_err());
    }
}
