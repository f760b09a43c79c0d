//! `GET /v1/watch`: a Server-Sent Events stream of a key's or a prefix's changes (see
//! `crate::watch`). Each change is an event `put` or `delete` whose data is a
//! [`quorumkv_api::WatchEvent`]; the last event of each revision carries `id: <revision>`, so a
//! reconnecting client's `Last-Event-ID` resumes right after it. An idle stream gets a
//! `progress` event (with its `id`) every few seconds. A stream that cannot go on without a
//! gap ends with an `error` event holding the error body (`compacted`, with the oldest
//! revision kept).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::sse::Sse;
use quorumkv_api::WatchEvent;
use quorumkv_api::WatchEventKind;
use quorumkv_api::WatchParams;
use quorumkv_api::WatchProgress;

use super::ApiError;
use super::Caller;
use super::Params;
use crate::error::Error;
use crate::node::Node;
use crate::store::events::EventRecord;
use crate::watch::Filter;
use crate::watch::WatchItem;

pub(super) async fn watch(
    State(node): State<Arc<Node>>,
    params: Result<Params<WatchParams>, ApiError>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
) -> Result<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Params(params) = params?;
    let filter = match (params.key, params.prefix) {
        (Some(key), None) => {
            crate::types::check_key(&key, node.config().max_key_bytes)?;
            Filter::Key(key)
        }
        (None, Some(prefix)) => Filter::Prefix(prefix),
        _ => return Err(Error::InvalidParameter("give key or prefix (prefix= follows every key)".into()).into()),
    };
    let caller = caller?;
    node.authorize_or_catch_up(caller.principal(), filter.need()).await?;
    // A reconnecting client resumes after the last revision it got whole.
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| Error::InvalidHeader("Last-Event-ID is not ASCII".into()))?;
            let revision = text.trim().parse::<u64>().map_err(|_| {
                Error::InvalidHeader(format!("Last-Event-ID must be a revision from this stream, got {text:?}"))
            })?;
            Some(revision.saturating_add(1))
        }
    };
    let start = node.watch_start(resume.or(params.start_revision))?;
    let slot = node.watchers.clone().try_acquire_owned().map_err(|_| Error::Overloaded)?;
    let items = node.watch(filter, start, caller.principal().cloned(), slot);
    let events = futures::stream::unfold(Some(items), |items| async move {
        let mut items = items?;
        let item = items.recv().await?;
        let ends = matches!(item, WatchItem::End(_));
        Some((Ok(sse_event(item)), (!ends).then_some(items)))
    });
    Ok(Sse::new(events))
}

fn sse_event(item: WatchItem) -> Event {
    match item {
        WatchItem::Event { revision, complete, record } => {
            let (kind, name) =
                if record.put.is_some() { (WatchEventKind::Put, "put") } else { (WatchEventKind::Delete, "delete") };
            let event = Event::default().event(name).json_data(watch_event(revision, kind, record)).unwrap_or_default();
            if complete {
                event.id(revision.to_string())
            } else {
                event
            }
        }
        WatchItem::Progress(revision) => Event::default()
            .event("progress")
            .id(revision.to_string())
            .json_data(WatchProgress { revision })
            .unwrap_or_default(),
        WatchItem::End(error) => {
            let response_body = super::error_body(&error);
            Event::default().event("error").json_data(response_body).unwrap_or_default()
        }
    }
}

fn watch_event(revision: u64, kind: WatchEventKind, record: EventRecord) -> WatchEvent {
    let (create_revision, value, value_base64) = match record.put {
        None => (None, None, None),
        Some(put) => {
            let item = super::kv::item(
                String::new(),
                crate::store::StoredValue {
                    create_revision: put.create_revision,
                    mod_revision: revision,
                    value: put.value,
                },
            );
            (Some(put.create_revision), item.value, item.value_base64)
        }
    };
    WatchEvent { revision, kind, key: record.key, create_revision, value, value_base64 }
}
