//! The HTTP client of the CLI, `quorumkv bench`'s set-up and the tests: tries the given
//! endpoints, prefers the leader for writes, and retries only what certainly did not take
//! effect, judged from the error body's `outcome`.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::Method;
use reqwest::StatusCode;
use reqwest::Url;

use crate::limits;
use crate::ClusterStatus;
use crate::Outcome;

/// Why a request failed, split by whether it may have taken effect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Certainly not applied: an error answer, or no node could be reached.
    #[error("{0}")]
    Failed(String),
    /// May or may not have been applied (timeout or connection lost after sending, or 504).
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// A response with a final status (success or a definite error answer).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A quorumkv client over a list of endpoints.
///
/// It sticks to one endpoint (the first, or the leader after [`Client::prefer_leader`]) and
/// moves on to the next only when that one refuses a connection or answers a definite 503,
/// like etcd's client balancer: a node that is shutting down or cut off is left at once and
/// not tried again on every request.
pub struct Client {
    endpoints: Vec<Url>,
    /// Index into `endpoints` of the endpoint requests go to first.
    current: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
    /// How long one attempt may take, when not the HTTP client's own timeout
    /// ([`limits::CLIENT_REQUEST_TIMEOUT_MS`], or a caller's in [`Client::with_http`]); a
    /// blocking read gets its wait on top ([`Client::blocking_read`]).
    request_timeout: Option<Duration>,
}

/// What may be retried after a transport failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: retry on any transport failure.
    Idempotent,
    /// Writes: retry only when the request was certainly not processed.
    OnlyIfNotSent,
}

/// How a client speaks TLS to the client port: the CA it trusts (`--cacert`), and the
/// certificate it presents when the cluster requires one (`--cert`, `--key`). Only the named
/// CA is trusted: no bundled or system roots.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl ClientTls {
    /// Whether TLS was asked for (endpoints without a scheme are then `https://`).
    pub fn is_on(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some()
    }

    /// `builder` trusting the CA and presenting the certificate.
    pub fn configure(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, ClientError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| ClientError::Failed(format!("cannot read {}: {e}", path.display())))
        };
        if let Some(ca_file) = &self.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca_file)?)
                .map_err(|e| ClientError::Failed(format!("no CA certificate in {}: {e}", ca_file.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let mut pem = read(cert_file)?;
                pem.extend_from_slice(b"\n");
                pem.extend(read(key_file)?);
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| ClientError::Failed(format!("unusable client certificate or key: {e}")))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => return Err(ClientError::Failed("a client certificate needs both --cert and --key".into())),
        }
        Ok(builder)
    }
}

/// Whether a failed request certainly never reached the server's HTTP layer: the connection
/// was refused, or the server refused the TLS handshake. Under TLS 1.3 the client finishes its
/// handshake before the server has judged the client's certificate, so the server's refusal
/// (an alert such as "certificate required" or "unknown CA") arrives only when the response is
/// read, not as a connect error; rustls never passes a byte of the request to the server then.
pub fn certainly_not_sent(error: &reqwest::Error) -> bool {
    error.is_connect() || refused_by_tls(error)
}

/// Whether the request failed because one side refused the other's certificate (or no common
/// TLS version or cipher): a configuration problem, not a network one; nothing was sent.
pub fn refused_at_tls_handshake(error: &reqwest::Error) -> bool {
    refused_by_tls(error)
}

fn refused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as Alert;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        let tls = current
            .downcast_ref::<rustls::Error>()
            .or_else(|| current.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref()));
        if let Some(rustls::Error::AlertReceived(alert)) = tls {
            return matches!(
                alert,
                Alert::CertificateRequired
                    | Alert::BadCertificate
                    | Alert::UnknownCA
                    | Alert::CertificateExpired
                    | Alert::CertificateRevoked
                    | Alert::CertificateUnknown
                    | Alert::UnsupportedCertificate
                    | Alert::AccessDenied
                    | Alert::HandshakeFailure
                    | Alert::DecryptError
            );
        }
        if let Some(error) = tls {
            // This side refused the handshake (an untrusted server certificate, no common
            // version or cipher): nothing was sent. Any other TLS error may come mid-stream.
            return matches!(
                error,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::NoCertificatesPresented
            );
        }
        cause = current.source();
    }
    false
}

/// Parses a comma-separated endpoint list (`host:port` or URLs; `http://` when no scheme).
pub fn parse_endpoints(endpoints: &str) -> Result<Vec<Url>, ClientError> {
    parse_endpoints_with_scheme(endpoints, "http")
}

/// [`parse_endpoints`], with `scheme` for endpoints given without one.
pub fn parse_endpoints_with_scheme(endpoints: &str, scheme: &str) -> Result<Vec<Url>, ClientError> {
    let endpoints: Vec<Url> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let with_scheme = if e.contains("://") { e.to_string() } else { format!("{scheme}://{e}") };
            Url::parse(&with_scheme).map_err(|err| ClientError::Failed(format!("bad endpoint {e:?}: {err}")))
        })
        .collect::<Result<_, _>>()?;
    if endpoints.is_empty() {
        return Err(ClientError::Failed("no endpoints given".into()));
    }
    Ok(endpoints)
}

impl Client {
    pub fn new(endpoints: &str) -> Result<Self, ClientError> {
        Self::with_tls(endpoints, &ClientTls::default())
    }

    /// A client speaking TLS as `tls` says (plain HTTP when it is empty).
    pub fn with_tls(endpoints: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        Self::with_token(endpoints, tls, None)
    }

    /// [`Client::with_tls`], sending `Authorization: Bearer <token>` with every request (a
    /// token from [`Client::login`], for clusters with auth enabled).
    pub fn with_token(endpoints: &str, tls: &ClientTls, token: Option<&str>) -> Result<Self, ClientError> {
        let endpoints = parse_endpoints_with_scheme(endpoints, if tls.is_on() { "https" } else { "http" })?;
        if tls.is_on() && endpoints.iter().any(|endpoint| endpoint.scheme() == "http") {
            // Never plain HTTP by accident when TLS was asked for.
            return Err(ClientError::Failed("--cacert/--cert given, but an endpoint is http://".into()));
        }
        let mut builder = tls.configure(reqwest::Client::builder())?;
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Failed("the token is not a valid header value".into()))?;
            value.set_sensitive(true);
            let mut headers = HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        let http = builder
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_millis(limits::CLIENT_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(limits::CLIENT_REQUEST_TIMEOUT_MS))
            .pool_idle_timeout(Duration::from_millis(limits::CLIENT_POOL_IDLE_TIMEOUT_MS))
            .build()
            .map_err(|e| ClientError::Failed(e.to_string()))?;
        Ok(Self { endpoints, current: std::sync::atomic::AtomicUsize::new(0), http, request_timeout: None })
    }

    /// The same client with another per-attempt timeout for [`Client::request`] (a blocking
    /// read gets its wait on top; watch streams and downloads keep their own limits).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Logs in (`POST /v1/auth/token`): a token for [`Client::with_token`].
    pub async fn login(&self, name: &str, password: &str) -> Result<crate::TokenReply, ClientError> {
        let request = crate::TokenRequest { name: name.to_string(), password: password.to_string() };
        let body = serde_json::to_vec(&request).map_err(|e| ClientError::Failed(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::CONTENT_TYPE, reqwest::header::HeaderValue::from_static("application/json"));
        let segments = ["v1", "auth", "token"].map(String::from);
        // Logging in changes nothing: safe to retry.
        let answer =
            self.request(Method::POST, &segments, &[], headers, Some(Bytes::from(body)), Retry::Idempotent).await?;
        if !answer.status.is_success() {
            return Err(ClientError::Failed(format!(
                "login as {name:?}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )));
        }
        serde_json::from_slice(&answer.body).map_err(|e| ClientError::Failed(format!("unreadable token answer: {e}")))
    }

    /// `/v1/kv/<key>` with the key as one percent-encoded segment (slashes included).
    pub fn key_path(key: &str) -> Vec<String> {
        vec!["v1".into(), "kv".into(), key.into()]
    }

    /// `GET /v1/cluster` from the first endpoint that answers with a status, each tried once
    /// within [`limits::CLIENT_LEADER_LOOKUP_TIMEOUT_MS`]: no retries and no back-off, for
    /// callers that poll (`quorumkv cluster leader` in scripts).
    pub async fn cluster_status_once(&self) -> Result<ClusterStatus, ClientError> {
        let timeout = Duration::from_millis(limits::CLIENT_LEADER_LOOKUP_TIMEOUT_MS);
        let mut last_error = String::from("no endpoint");
        for endpoint in &self.endpoints {
            let Ok(url) = endpoint.join("/v1/cluster") else { continue };
            match self.http.get(url).timeout(timeout).send().await {
                Ok(response) if response.status().is_success() => match response.json::<ClusterStatus>().await {
                    Ok(status) => return Ok(status),
                    Err(error) => last_error = format!("{endpoint}: unreadable cluster status: {error}"),
                },
                Ok(response) => last_error = format!("{endpoint}: HTTP {}", response.status()),
                Err(error) => last_error = format!("{endpoint}: {error}"),
            }
        }
        Err(ClientError::Failed(last_error))
    }

    /// Moves the leader's client address to the front, when some endpoint knows it.
    pub async fn prefer_leader(&mut self) {
        let Ok(status) = self.cluster_status_once().await else { return };
        let scheme = self.endpoints.first().map_or("http", |endpoint| endpoint.scheme()).to_string();
        if let Some(Ok(url)) = status.leader_client_addr().map(|a| Url::parse(&format!("{scheme}://{a}"))) {
            self.endpoints.retain(|e| e.host_str() != url.host_str() || e.port() != url.port());
            self.endpoints.insert(0, url);
            self.current.store(0, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Streams `GET <segments>` from the first endpoint that answers 200 into `file`.
    /// Returns the bytes written.
    pub async fn download(&self, segments: &[String], file: &mut tokio::fs::File) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt;
        let mut last_error = String::from("no endpoint");
        for endpoint in &self.endpoints {
            let mut url = endpoint.clone();
            if let Ok(mut path) = url.path_segments_mut() {
                path.clear().extend(segments);
            }
            let mut response = match self
                .http
                .get(url)
                .timeout(Duration::from_millis(limits::CLIENT_DOWNLOAD_TIMEOUT_MS))
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => response,
                Ok(response) => {
                    last_error = format!("{endpoint}: {}", response.status());
                    continue;
                }
                Err(error) => {
                    last_error = format!("{endpoint}: {error}");
                    continue;
                }
            };
            let mut written = 0u64;
            while let Some(chunk) = response.chunk().await.map_err(|e| ClientError::Failed(e.to_string()))? {
                file.write_all(&chunk).await.map_err(|e| ClientError::Failed(e.to_string()))?;
                written += chunk.len() as u64;
            }
            file.flush().await.map_err(|e| ClientError::Failed(e.to_string()))?;
            return Ok(written);
        }
        Err(ClientError::Failed(last_error))
    }

    /// Sends a request, retrying within [`limits::CLIENT_MAX_ATTEMPTS`] as `retry` allows.
    /// Each attempt after a definite failure goes to the next endpoint; the client backs off
    /// only after every endpoint has failed once in a row.
    pub async fn request(
        &self,
        method: Method,
        segments: &[String],
        query: &[(&str, String)],
        headers: HeaderMap,
        body: Option<Bytes>,
        retry: Retry,
    ) -> Result<Answer, ClientError> {
        let timeout = self.request_timeout;
        self.send_request(Request { method, segments, query, headers, body, retry, timeout }).await
    }

    /// A blocking read (`GET` with `wait_revision` and `wait_ms`, see the README's "Watch and
    /// blocking reads"): waits at most `wait` for a change, so each attempt may take that long
    /// plus the request timeout (at least [`limits::BLOCKING_READ_MARGIN_MS`]) before it counts
    /// as failed. A wait longer than the client's request timeout would otherwise fail every
    /// attempt on a quiet key.
    pub async fn blocking_read(
        &self,
        segments: &[String],
        query: &[(&str, String)],
        wait_revision: u64,
        wait: Duration,
    ) -> Result<Answer, ClientError> {
        let mut query = query.to_vec();
        query.push(("wait_revision", wait_revision.to_string()));
        query.push(("wait_ms", wait.as_millis().to_string()));
        // After its wait the server still reads, perhaps through a read point: as long as any
        // request may take, and at least the margin.
        let after_wait = self.request_timeout.unwrap_or(Duration::from_millis(limits::CLIENT_REQUEST_TIMEOUT_MS));
        let timeout = wait + after_wait.max(Duration::from_millis(limits::BLOCKING_READ_MARGIN_MS));
        let request = Request {
            method: Method::GET,
            segments,
            query: &query,
            headers: HeaderMap::new(),
            body: None,
            retry: Retry::Idempotent,
            timeout: Some(timeout),
        };
        self.send_request(request).await
    }

    async fn send_request(&self, request: Request<'_>) -> Result<Answer, ClientError> {
        use std::sync::atomic::Ordering;
        let mut backoff = Backoff::new();
        let mut last_error = String::from("no attempt made");
        for attempt in 0..limits::CLIENT_MAX_ATTEMPTS {
            let index = self.current.load(Ordering::Relaxed) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            let hint = match self.attempt(endpoint, &request).await? {
                Attempt::Answered(answer) => return Ok(answer),
                Attempt::Retry { error, hint } => {
                    last_error = format!("{endpoint}: {error}");
                    hint
                }
            };
            // Leave this endpoint for the next one (unless another request already did), and
            // back off once a whole round of endpoints has failed.
            let next = (index + 1) % self.endpoints.len();
            let _ = self.current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
            if (attempt + 1) as usize % self.endpoints.len() == 0 {
                tokio::time::sleep(backoff.next_pause(hint)).await;
            }
        }
        Err(ClientError::Failed(format!("gave up after {} attempts: {last_error}", limits::CLIENT_MAX_ATTEMPTS)))
    }

    /// One try at one endpoint: an answer, a failure that is safe to retry elsewhere (with
    /// the server's `Retry-After`, if any), or an error whose outcome is unknown.
    async fn attempt(&self, endpoint: &Url, request: &Request<'_>) -> Result<Attempt, ClientError> {
        let Request { method, segments, query, headers, body, retry, timeout } = request;
        let retry = *retry;
        let retry_after = |error: String| Ok(Attempt::Retry { error, hint: None });
        let mut url = endpoint.clone();
        url.path_segments_mut()
            .map_err(|_| ClientError::Failed(format!("endpoint {endpoint} cannot be a base")))?
            .clear()
            .extend(*segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(*query);
        }
        let mut builder = self.http.request(method.clone(), url).headers(headers.clone());
        if let Some(timeout) = timeout {
            builder = builder.timeout(*timeout);
        }
        if let Some(body) = body {
            builder = builder.body(body.clone());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            // A refused connection never carried the request; a read may be retried anyway.
            Err(error) if certainly_not_sent(&error) || retry == Retry::Idempotent => {
                return retry_after(error.to_string())
            }
            Err(error) => return Err(ClientError::Unknown(format!("{endpoint}: {error}"))),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) if retry == Retry::Idempotent => return retry_after(error.to_string()),
            Err(error) => return Err(ClientError::Unknown(format!("{endpoint}: {error}"))),
        };
        let unknown = !status.is_success() && answer_outcome_unknown(status, &body);
        if unknown && retry == Retry::OnlyIfNotSent {
            return Err(ClientError::Unknown(String::from_utf8_lossy(&body).into_owned()));
        }
        let busy = status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS;
        if busy || unknown {
            // 503 and 429 are definite (nothing happened), and a read changes nothing either:
            // retrying elsewhere is safe.
            let hint = headers
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            return Ok(Attempt::Retry { error: String::from_utf8_lossy(&body).into_owned(), hint });
        }
        Ok(Attempt::Answered(Answer { status, headers, body }))
    }
}

/// A watch (`GET /v1/watch`) as a sequence of messages, reconnecting by itself: after a
/// dropped or silent connection it asks the next endpoint for the events after the last
/// revision it received whole (`Last-Event-ID`), so no event is lost or repeated. It gives up
/// after [`limits::CLIENT_MAX_ATTEMPTS`] failed connections in a row, and at once when the
/// events it needs are no longer kept (`compacted`).
pub struct Watcher<'a> {
    client: &'a Client,
    query: Vec<(&'static str, String)>,
    /// The last revision received whole (`None`: none yet; the first connection then starts
    /// where the query says).
    last_complete: Option<u64>,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    /// How far `buffer` was searched for the end of a message.
    scanned: usize,
    failures: u32,
    last_refusal: std::sync::Mutex<Option<String>>,
    /// The (revision, key) of the last event handed out: after a reconnect in the middle of a
    /// revision, its events up to this one come again and are skipped (within a revision,
    /// events come in key order, on every node).
    last_delivered: Option<(u64, String)>,
}

/// What a watch stream sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    Event(crate::WatchEvent),
    /// Every event up to this revision was sent.
    Progress(u64),
}

impl Client {
    /// Watches `key`, or every key under `prefix`, from `start_revision` (`None`: from now).
    pub fn watch(&self, key: Option<&str>, prefix: Option<&str>, start_revision: Option<u64>) -> Watcher<'_> {
        let mut query = Vec::new();
        if let Some(key) = key {
            query.push(("key", key.to_string()));
        }
        if let Some(prefix) = prefix {
            query.push(("prefix", prefix.to_string()));
        }
        if let Some(start) = start_revision {
            query.push(("start_revision", start.to_string()));
        }
        Watcher {
            client: self,
            query,
            last_complete: None,
            response: None,
            buffer: Vec::new(),
            scanned: 0,
            failures: 0,
            last_refusal: std::sync::Mutex::new(None),
            last_delivered: None,
        }
    }

    /// A client over `endpoints` (URLs) that sends its requests with `http` (a caller's own
    /// TLS, token and timeouts).
    pub fn with_http(endpoints: &str, http: reqwest::Client) -> Result<Self, ClientError> {
        let endpoints = parse_endpoints(endpoints)?;
        Ok(Self { endpoints, current: std::sync::atomic::AtomicUsize::new(0), http, request_timeout: None })
    }
}

impl Watcher<'_> {
    /// The last revision received whole (every event of it and before it); `None` before the
    /// stream said where it starts.
    pub fn last_complete(&self) -> Option<u64> {
        self.last_complete
    }

    /// The next message, reconnecting as needed.
    pub async fn next(&mut self) -> Result<WatchMessage, ClientError> {
        use std::sync::atomic::Ordering;
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(message);
            }
            if self.response.is_none() {
                if self.failures >= limits::CLIENT_MAX_ATTEMPTS {
                    let last = self.last_refusal.lock().ok().and_then(|last| last.clone());
                    let last = last.map_or_else(String::new, |last| format!("; last answer: {last}"));
                    return Err(ClientError::Failed(format!(
                        "the watch failed {} times in a row{last}",
                        self.failures
                    )));
                }
                let index = self.client.current.load(Ordering::Relaxed) % self.client.endpoints.len();
                match self.connect(&self.client.endpoints[index]).await {
                    Ok(response) => self.response = Some(response),
                    Err(Some(error)) => return Err(error),
                    Err(None) => {
                        self.failures += 1;
                        let next = (index + 1) % self.client.endpoints.len();
                        let _ = self.client.current.compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(limits::CLIENT_BACKOFF_FIRST_MS)).await;
                    }
                }
                continue;
            }
            let idle = Duration::from_millis(limits::WATCH_IDLE_TIMEOUT_MS);
            let chunk = match self.response.as_mut() {
                Some(response) => tokio::time::timeout(idle, response.chunk()).await,
                None => continue,
            };
            match chunk {
                Ok(Ok(Some(bytes))) => {
                    self.failures = 0;
                    self.buffer.extend_from_slice(&bytes);
                    if self.buffer.len() > limits::WATCH_MAX_EVENT_BYTES {
                        return Err(ClientError::Failed("a watch event larger than the client takes".into()));
                    }
                }
                // Ended, broken or silent: resume elsewhere after what arrived whole.
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => self.drop_connection(),
            }
        }
    }

    fn drop_connection(&mut self) {
        self.response = None;
        // A message cut off mid-way is sent again after the reconnect.
        self.buffer.clear();
        self.scanned = 0;
    }

    /// `Ok(response)` once the stream is open; `Err(None)` to try another endpoint;
    /// `Err(Some(error))` to stop.
    async fn connect(&self, endpoint: &Url) -> Result<reqwest::Response, Option<ClientError>> {
        let mut url = endpoint.clone();
        url.path_segments_mut()
            .map_err(|_| Some(ClientError::Failed("bad endpoint".into())))?
            .clear()
            .extend(["v1", "watch"]);
        url.query_pairs_mut().extend_pairs(&self.query);
        // A watch lasts: silence is caught by the idle timeout; after this long the stream is
        // opened again (resuming exactly where it was).
        let mut request = self.client.http.get(url).timeout(Duration::from_millis(limits::WATCH_STREAM_MAX_MS));
        if let Some(revision) = self.last_complete {
            request = request.header("last-event-id", revision.to_string());
        }
        let response = request.send().await.map_err(|_| None)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        // Busy, or without the history it needs (a node caught up by a snapshot): another
        // endpoint may serve it; when none does, the watch fails with the last answer.
        let elsewhere = [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::GONE,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::GATEWAY_TIMEOUT,
        ];
        if elsewhere.contains(&status) {
            self.last_refusal.lock().map(|mut last| *last = Some(format!("{status} {text}"))).ok();
            return Err(None);
        }
        Err(Some(ClientError::Failed(format!("{status} {text}"))))
    }

    /// The next whole message in the buffer, if any; an `error` event ends the watch.
    fn take_message(&mut self) -> Result<Option<WatchMessage>, ClientError> {
        loop {
            let from = self.scanned.saturating_sub(1);
            let Some(end) = self.buffer[from..].windows(2).position(|w| w == b"\n\n").map(|at| at + from) else {
                self.scanned = self.buffer.len();
                return Ok(None);
            };
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            self.scanned = 0;
            let text = String::from_utf8_lossy(&block);
            let (mut event, mut data, mut id) = ("message", String::new(), None);
            for line in text.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event = match value.trim() {
                        "put" => "put",
                        "delete" => "delete",
                        "progress" => "progress",
                        "error" => "error",
                        _ => "other",
                    };
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                } else if let Some(value) = line.strip_prefix("id:") {
                    id = value.trim().parse::<u64>().ok();
                }
            }
            if let Some(id) = id {
                self.last_complete = Some(id);
            }
            let unreadable = |e: serde_json::Error| ClientError::Failed(format!("unreadable watch event: {e}"));
            match event {
                "put" | "delete" => {
                    let event: crate::WatchEvent = serde_json::from_str(&data).map_err(unreadable)?;
                    let place = (event.revision, event.key.clone());
                    if self.last_delivered.as_ref().is_some_and(|delivered| place <= *delivered) {
                        continue; // sent again after a reconnect mid-revision
                    }
                    self.last_delivered = Some(place);
                    return Ok(Some(WatchMessage::Event(event)));
                }
                "progress" => {
                    let progress: crate::WatchProgress = serde_json::from_str(&data).map_err(unreadable)?;
                    return Ok(Some(WatchMessage::Progress(progress.revision)));
                }
                "error" => return Err(ClientError::Failed(format!("the watch ended: {data}"))),
                _ => {}
            }
        }
    }
}

/// Whether an error answer says the request may have taken effect. The server's error body says
/// so in `outcome` ("unknown" or "failed"), whatever the status (a 500 may be either); only an
/// answer without one (a proxy's page, say) is judged by its status: 504 is unknown.
fn answer_outcome_unknown(status: StatusCode, body: &[u8]) -> bool {
    /// Only the field that decides; any other part of the body may be missing or newer.
    #[derive(serde::Deserialize)]
    struct Stated {
        outcome: Outcome,
    }
    match serde_json::from_slice::<Stated>(body) {
        Ok(stated) => stated.outcome == Outcome::Unknown,
        Err(_) => status == StatusCode::GATEWAY_TIMEOUT,
    }
}

/// The pause after a whole round of endpoints failed: the server's `Retry-After` when it
/// gave one, else doubling from [`limits::CLIENT_BACKOFF_FIRST_MS`]; never above
/// [`limits::CLIENT_BACKOFF_MAX_MS`].
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: Duration::from_millis(limits::CLIENT_BACKOFF_FIRST_MS) }
    }

    fn next_pause(&mut self, hint: Option<Duration>) -> Duration {
        let max = Duration::from_millis(limits::CLIENT_BACKOFF_MAX_MS);
        let pause = hint.unwrap_or(self.next).min(max);
        self.next = (self.next * 2).min(max);
        pause
    }
}

/// The parts of a request, the same for every attempt.
struct Request<'a> {
    method: Method,
    segments: &'a [String],
    query: &'a [(&'a str, String)],
    headers: HeaderMap,
    body: Option<Bytes>,
    retry: Retry,
    /// For the whole attempt: sending, waiting and reading the answer (`None`: the HTTP
    /// client's own).
    timeout: Option<Duration>,
}

/// What one try at one endpoint came to.
enum Attempt {
    Answered(Answer),
    Retry { error: String, hint: Option<Duration> },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: back-off doubles up to its cap, and a server's `Retry-After` is followed but capped.
    #[test]
    fn back_off_doubles_to_its_cap_and_follows_retry_after() {
        let mut backoff = Backoff::new();
        let pauses: Vec<u64> = (0..6).map(|_| backoff.next_pause(None).as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1_000, 1_000]);
        let mut backoff = Backoff::new();
        assert_eq!(backoff.next_pause(Some(Duration::from_millis(300))), Duration::from_millis(300));
        assert_eq!(
            backoff.next_pause(Some(Duration::from_secs(5))),
            Duration::from_millis(limits::CLIENT_BACKOFF_MAX_MS)
        );
        assert_eq!(backoff.next_pause(None), Duration::from_millis(400), "a hint does not reset the doubling");
    }

    /// Goal: the outcome comes from the body when the server states it, else from the status.
    #[test]
    fn the_outcome_of_an_error_answer_comes_from_its_body() {
        let body = |outcome: &str| format!(r#"{{"error":"x","message":"m","outcome":"{outcome}"}}"#).into_bytes();
        assert!(answer_outcome_unknown(StatusCode::INTERNAL_SERVER_ERROR, &body("unknown")));
        assert!(answer_outcome_unknown(StatusCode::GATEWAY_TIMEOUT, &body("unknown")));
        assert!(!answer_outcome_unknown(StatusCode::INTERNAL_SERVER_ERROR, &body("failed")));
        assert!(!answer_outcome_unknown(StatusCode::SERVICE_UNAVAILABLE, &body("failed")));
        assert!(answer_outcome_unknown(StatusCode::GATEWAY_TIMEOUT, b"<html>gateway timeout</html>"));
        assert!(!answer_outcome_unknown(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>"));
        // A body stating an outcome this client does not know is taken as unknown: never retried.
        assert!(answer_outcome_unknown(StatusCode::CONFLICT, br#"{"outcome":"partial"}"#));
        assert!(!answer_outcome_unknown(StatusCode::CONFLICT, br#"{"outcome":"failed"}"#));
    }
}
