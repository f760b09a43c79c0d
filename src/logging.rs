//! Structured logs with the node id on every line, filtered by `--log` / `QUORUMKV_LOG`.

use std::fmt;

use tracing::Event;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::FormatEvent;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Prefixes every event with `node=<id>`, including events from openraft's own tasks.
struct WithNodeId<F> {
    node_id: u64,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for WithNodeId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "node={} ", self.node_id)?;
        self.inner.format_event(context, writer, event)
    }
}

/// Logs of the whole process go to standard error.
pub fn init(node_id: u64, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = WithNodeId { node_id, inner: tracing_subscriber::fmt::format().with_ansi(false) };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).event_format(format).try_init();
}

/// The same logs for one node among several in one process (tests), written to `file`: install
/// it on every thread of that node's runtime (`tracing::dispatcher::set_default`).
pub fn node_dispatch(node_id: u64, filter: &str, file: std::fs::File) -> tracing::Dispatch {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let format = WithNodeId { node_id, inner: tracing_subscriber::fmt::format().with_ansi(false) };
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(format)
        .with_writer(std::sync::Mutex::new(file))
        .finish();
    tracing::Dispatch::new(subscriber)
}
