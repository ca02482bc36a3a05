//! Raw TCP clients for the connection-limit tests: connections from a chosen loopback address (all
//! of 127.0.0.0/8 is loopback on Linux, so 127.0.0.2 is "another client" of a service on
//! 127.0.0.1), one request written by hand, and waits for the server to close.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Longest wait for an event the test expects (a close, an answer): a guard against hanging
/// forever when the behaviour is missing, not a speed target.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// A TCP connection from `from` (port chosen by the kernel) to the service on `port` of 127.0.0.1.
pub async fn connect_from(from: IpAddr, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap()
}

/// Reads until the server closes the connection; returns what was read before. A reset counts as
/// a close. Panics if nothing closes it within [`HANG_GUARD`].
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(HANG_GUARD, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server did not close the connection within {HANG_GUARD:?}");
    seen
}

/// Sends `GET path` on `stream` (keep-alive) and reads one whole response; returns its status and
/// body. The service answers these with a `content-length`.
pub async fn get_on(stream: &mut TcpStream, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: media-api\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(HANG_GUARD, read_response(stream)).await;
    answer.unwrap_or_else(|_| panic!("no answer to GET {path} within {HANG_GUARD:?}"))
}

async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed mid-response: {}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a content-length");
        if data.len() >= end + 4 + length {
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            return (status, String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned());
        }
    }
}

/// `/metrics` of the app at `base` as text.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap()
}
