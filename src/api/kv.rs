//! `/v1/kv`: get, put, delete and list keys.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use serde_json::json;

use super::error_response;
use crate::error::Error;
use crate::limits;
use crate::node::Ack;
use crate::node::Consistency;
use crate::node::Node;
use crate::types::Command;
use crate::types::CommandResult;
use crate::types::Precondition;

type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;
type KeyPath = Result<Path<String>, PathRejection>;

pub(super) async fn empty_key() -> Response {
    error_response(Error::InvalidKey("the key is empty".into()))
}

pub(super) async fn get(State(node): State<Arc<Node>>, key: KeyPath, query: QueryPairs) -> Response {
    let run = async {
        let key = parse_key(&node, key)?;
        let params = parse_query(query, &["consistency", "max_lag_ms"])?;
        let consistency = parse_consistency(&params)?;
        let _slot = node.admit().await?;
        node.get(&key, consistency).await?.ok_or(Error::KeyNotFound)
    };
    match run.await {
        Ok(stored) => {
            let mut response = (stored.value).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            headers.insert(header::ETAG, etag(stored.mod_revision));
            response
        }
        Err(error) => error_response(error),
    }
}

pub(super) async fn put(
    State(node): State<Arc<Node>>,
    key: KeyPath,
    query: QueryPairs,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let run = async {
        // The body is read first, whatever else is wrong: answering before the client has
        // sent it makes the server close the connection under a writing client, which then
        // sees a broken pipe instead of the 4xx.
        let value = read_value(&node, &headers, body).await;
        let key = parse_key(&node, key)?;
        let ack = parse_ack(&parse_query(query, &["ack"])?)?;
        let precondition = parse_precondition(&headers)?;
        let value = value?;
        let _slot = node.admit().await?;
        node.write(Command::Put { key, value, precondition }, ack).await
    };
    match run.await {
        Ok(CommandResult::Put { revision }) => {
            let mut response = Json(json!({ "revision": revision })).into_response();
            response.headers_mut().insert(header::ETAG, etag(revision));
            response
        }
        Ok(other) => write_result_error(other),
        Err(error) => error_response(error),
    }
}

pub(super) async fn delete(
    State(node): State<Arc<Node>>,
    key: KeyPath,
    query: QueryPairs,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let key = parse_key(&node, key)?;
        let ack = parse_ack(&parse_query(query, &["ack"])?)?;
        let precondition = parse_precondition(&headers)?;
        let _slot = node.admit().await?;
        node.write(Command::Delete { key, precondition }, ack).await
    };
    match run.await {
        Ok(CommandResult::Delete { revision, deleted }) => {
            Json(json!({ "revision": revision, "deleted": deleted })).into_response()
        }
        Ok(other) => write_result_error(other),
        Err(error) => error_response(error),
    }
}

pub(super) async fn list(State(node): State<Arc<Node>>, query: QueryPairs) -> Response {
    let run = async {
        let params = parse_query(query, &["prefix", "start", "limit", "consistency", "max_lag_ms"])?;
        let consistency = parse_consistency(&params)?;
        let prefix = param(&params, "prefix").unwrap_or("");
        let start = param(&params, "start").unwrap_or("");
        let limit = match param(&params, "limit") {
            None => limits::DEFAULT_LIST_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(limit) if (1..=limits::MAX_LIST_LIMIT).contains(&limit) => limit,
                _ => {
                    return Err(Error::InvalidParameter(format!(
                        "limit must be between 1 and {}",
                        limits::MAX_LIST_LIMIT
                    )))
                }
            },
        };
        let _slot = node.admit().await?;
        node.list(prefix, start, limit, consistency).await
    };
    match run.await {
        Ok((page, next_start)) => {
            let items: Vec<serde_json::Value> = page
                .into_iter()
                .map(|(key, stored)| {
                    let mut item = json!({
                        "key": key,
                        "revision": stored.mod_revision,
                        "create_revision": stored.create_revision,
                    });
                    match std::str::from_utf8(&stored.value) {
                        Ok(text) => item["value"] = json!(text),
                        Err(_) => {
                            item["value_base64"] =
                                json!(base64::engine::general_purpose::STANDARD.encode(&stored.value))
                        }
                    }
                    item
                })
                .collect();
            Json(json!({ "items": items, "next_start": next_start })).into_response()
        }
        Err(error) => error_response(error),
    }
}

/// The results a write can have other than success, as errors.
fn write_result_error(result: CommandResult) -> Response {
    match result {
        CommandResult::PreconditionFailed { current_revision } => {
            error_response(Error::PreconditionFailed { current_revision })
        }
        other => error_response(Error::Internal(format!("unexpected write result {other:?}"))),
    }
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn parse_key(node: &Node, key: KeyPath) -> Result<String, Error> {
    let Path(key) = key.map_err(|rejection| Error::InvalidKey(rejection.body_text()))?;
    let limit = node.config().max_key_bytes;
    if key.is_empty() {
        return Err(Error::InvalidKey("the key is empty".into()));
    }
    if key.len() > limit {
        return Err(Error::KeyTooLarge { size: key.len(), limit });
    }
    if key.chars().any(char::is_control) {
        return Err(Error::InvalidKey("the key contains control characters".into()));
    }
    Ok(key)
}

fn parse_query(query: QueryPairs, allowed: &[&str]) -> Result<Vec<(String, String)>, Error> {
    let Query(params) = query.map_err(|rejection| Error::InvalidParameter(rejection.body_text()))?;
    for (name, _) in &params {
        if !allowed.contains(&name.as_str()) {
            return Err(Error::InvalidParameter(format!("unknown query parameter {name:?}")));
        }
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// `consistency=linearizable|lease|stale`, and with `stale` an optional `max_lag_ms`.
fn parse_consistency(params: &[(String, String)]) -> Result<Consistency, Error> {
    let max_lag = match param(params, "max_lag_ms") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if (1..=limits::MAX_STALENESS_BOUND_MS).contains(&ms) => Some(Duration::from_millis(ms)),
            _ => {
                return Err(Error::InvalidParameter(format!(
                    "max_lag_ms must be between 1 and {}",
                    limits::MAX_STALENESS_BOUND_MS
                )))
            }
        },
    };
    let consistency = match param(params, "consistency") {
        None | Some("linearizable") => Consistency::Linearizable,
        Some("lease") => Consistency::Lease,
        Some("stale") => Consistency::Stale { max_lag },
        Some(other) => {
            return Err(Error::InvalidParameter(format!(
                "consistency must be linearizable, lease or stale, not {other:?}"
            )))
        }
    };
    if max_lag.is_some() && !matches!(consistency, Consistency::Stale { .. }) {
        return Err(Error::InvalidParameter("max_lag_ms goes with consistency=stale".into()));
    }
    Ok(consistency)
}

/// `ack=quorum` (default, semi-synchronous) or `ack=all` (synchronous).
fn parse_ack(params: &[(String, String)]) -> Result<Ack, Error> {
    match param(params, "ack") {
        None | Some("quorum") => Ok(Ack::Quorum),
        Some("all") => Ok(Ack::All),
        Some(other) => Err(Error::InvalidParameter(format!("ack must be quorum or all, not {other:?}"))),
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
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (None, None) => Ok(Precondition::None),
        (Some(_), Some(_)) => Err(Error::InvalidHeader("use If-Match or If-None-Match, not both".into())),
        (None, Some(value)) if value == "*" => Ok(Precondition::Absent),
        (None, Some(value)) => Err(Error::InvalidHeader(format!("If-None-Match supports only *, got {value:?}"))),
        (Some(value), None) if value == "*" => Ok(Precondition::Exists),
        (Some(value), None) => {
            let digits = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(&value);
            digits.parse::<u64>().map(Precondition::ModRevision).map_err(|_| {
                Error::InvalidHeader(format!("If-Match must be a revision such as \"42\" or *, got {value:?}"))
            })
        }
    }
}

/// Reads the request body as the value, refusing more than `--max-value-bytes`.
async fn read_value(node: &Node, headers: &HeaderMap, body: Body) -> Result<Bytes, Error> {
    let limit = node.config().max_value_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    match declared {
        // Far over the limit: refuse without reading; the connection is closed after the 413.
        Some(size) if size > limit + limits::OVERSIZE_BODY_DRAIN_BYTES => Err(Error::ValueTooLarge { size, limit }),
        _ => {
            // A whole-body deadline: a client trickling its body must not hold on for ever.
            let read = axum::body::to_bytes(body, limit + limits::OVERSIZE_BODY_DRAIN_BYTES);
            let deadline = Duration::from_millis(limits::BODY_READ_TIMEOUT_MS);
            let read = tokio::time::timeout(deadline, read)
                .await
                .map_err(|_| Error::RequestTimeout { limit_ms: limits::BODY_READ_TIMEOUT_MS })?;
            let bytes = read.map_err(|error| {
                // Over the limit is the client's value; anything else is a broken upload.
                if error.into_inner().downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    Error::ValueTooLarge { size: declared.unwrap_or(limit + 1), limit }
                } else {
                    Error::InvalidParameter("the request body could not be read".into())
                }
            })?;
            if bytes.len() > limit {
                return Err(Error::ValueTooLarge { size: bytes.len(), limit });
            }
            Ok(bytes)
        }
    }
}
