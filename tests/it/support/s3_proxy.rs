//! An HTTP proxy in front of Garage that answers chosen S3 requests with a transient error (`503
//! SlowDown`, as S3 does under load), never answers them (a store that hangs), stops reading
//! their body partway and never answers (a store whose disk is full), or refuses a chunked one
//! with `411` (as AWS S3 and MinIO do: the one AWS behaviour the tests stand in for), and forwards every
//! other request untouched (same `Host`, so SigV4 signatures still verify), counting the bytes GETs
//! fetch: what the retry, timeout and range tests point `MEDIA_S3_ENDPOINT` at.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::app::s3_env;

/// Which requests fail: those whose method and path-and-query `matches` accepts, the first
/// `times` of them, and how.
pub struct Fault {
    pub matches: fn(&str, &str) -> bool,
    pub times: usize,
    pub answer: Answer,
}

/// How a failing request is answered.
#[derive(Clone, Copy)]
pub enum Answer {
    /// Read to its end, then `503 SlowDown`.
    SlowDown,
    /// Read to its end, then never answered.
    Never,
    /// Read until at least this many body bytes came, then neither read further nor answered.
    StopReadingAfter(usize),
    /// A request without a `Content-Length` (a chunked body) read to its end, then answered `411
    /// MissingContentLength`, as AWS S3 and MinIO answer a chunked `PutObject`; others forwarded.
    /// (Answering before the body, as AWS may, left the proxy's connection to be reused half-read:
    /// a later request on it failed now and then, a race of this proxy's, see the session 26 note.)
    LengthRequired,
    /// Read to its end, then `400 RequestTimeout`, as S3 answers a body left idle too long (a slow
    /// client's upload streamed through).
    RequestTimeout,
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    fault: Fault,
    failed: AtomicUsize,
    seen: Mutex<Vec<String>>,
    served: Arc<AtomicU64>,
}

/// A running proxy; stops with the test's runtime.
pub struct S3Proxy {
    pub endpoint: String,
    shared: Arc<Shared>,
}

impl S3Proxy {
    pub async fn start(fault: Fault) -> Self {
        let shared = Arc::new(Shared {
            upstream: s3_env().endpoint.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder().no_proxy().build().expect("http client"),
            fault,
            failed: AtomicUsize::new(0),
            seen: Mutex::default(),
            served: Arc::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new().fallback(forward).with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, shared }
    }

    /// Requests answered with the fault.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Body bytes of every answer to a GET so far (what readers fetched from S3).
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    /// `METHOD path?query` of every request, in arrival order.
    pub fn seen(&self) -> Vec<String> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The requests of S3 operation `wanted` (`PutObject`, `UploadPart`, …) seen so far.
    pub fn requests(&self, wanted: &str) -> usize {
        self.seen().iter().filter(|request| operation(request) == wanted).count()
    }
}

/// The S3 operation of a request the proxy saw (`PUT /bucket/key?x-id=PutObject`, …).
pub fn operation(request: &str) -> String {
    let query: Vec<&str> = request.split(['?', '&']).skip(1).collect();
    if let Some(id) = query.iter().find_map(|p| p.strip_prefix("x-id=")) {
        return id.to_owned();
    }
    let method = request.split(' ').next().unwrap_or_default();
    match (method, query.contains(&"uploads"), query.iter().any(|p| p.starts_with("uploadId="))) {
        ("POST", true, _) => "CreateMultipartUpload".into(),
        ("POST", _, true) => "CompleteMultipartUpload".into(),
        ("DELETE", _, true) => "AbortMultipartUpload".into(),
        _ => request.to_owned(),
    }
}

/// Reads `body` until `wanted` bytes came, then holds the rest unread (the sender's writes stall)
/// and never answers.
async fn stop_reading_after(body: Body, wanted: usize) -> Response {
    let mut body = body.into_data_stream();
    let mut read = 0;
    while read < wanted {
        match body.next().await {
            Some(Ok(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
    std::future::pending().await
}

const HOP_BY_HOP: [&str; 5] = ["connection", "keep-alive", "transfer-encoding", "te", "upgrade"];

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    shared.seen.lock().unwrap().push(format!("{} {target}", parts.method));
    let without_length = !parts.headers.contains_key(axum::http::header::CONTENT_LENGTH);
    let refusable = !matches!(shared.fault.answer, Answer::LengthRequired) || without_length;
    let fail = (shared.fault.matches)(parts.method.as_str(), &target)
        && refusable
        && shared
            .failed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < shared.fault.times).then_some(n + 1))
            .is_ok();
    if fail {
        if let Answer::LengthRequired = shared.fault.answer {
            let _ = axum::body::to_bytes(body, usize::MAX).await;
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>MissingContentLength</Code>\
                       <Message>You must provide the Content-Length HTTP header.</Message></Error>";
            return (StatusCode::LENGTH_REQUIRED, [("content-type", "application/xml")], xml).into_response();
        }
        if let Answer::StopReadingAfter(wanted) = shared.fault.answer {
            return stop_reading_after(body, wanted).await;
        }
        // Read the request to its end first, as S3 does, so the client sees the answer.
        let _ = axum::body::to_bytes(body, usize::MAX).await;
        if let Answer::Never = shared.fault.answer {
            std::future::pending::<()>().await;
        }
        if let Answer::RequestTimeout = shared.fault.answer {
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>RequestTimeout</Code><Message>Your socket \
                       connection to the server was not read from or written to within the timeout period.</Message></Error>";
            return (StatusCode::BAD_REQUEST, [("content-type", "application/xml")], xml).into_response();
        }
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                   <Message>Please reduce your request rate.</Message></Error>";
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/xml")], xml).into_response();
    }
    let counted = (parts.method == axum::http::Method::GET).then(|| shared.served.clone());
    let mut out = shared.http.request(parts.method, format!("{}{target}", shared.upstream));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            out = out.header(name, value);
        }
    }
    let out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    match out.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    response = response.header(HeaderName::from_bytes(name.as_ref()).expect("name"), value.as_bytes());
                }
            }
            let body = answer.bytes_stream().map(move |chunk| {
                if let (Ok(chunk), Some(served)) = (&chunk, &counted) {
                    served.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                chunk.map_err(std::io::Error::other)
            });
            response.body(Body::from_stream(body)).expect("response")
        }
        Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
    }
}
