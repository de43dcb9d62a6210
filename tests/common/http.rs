//! A minimal HTTP/1.0 client for the REST tests: one request per connection, the whole answer
//! read to the end (or, for server-sent events, line by line), over TCP or any TLS stream.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn head(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> String {
    let mut text = format!("{method} {path} HTTP/1.0\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text.push_str("host: localhost\r\n");
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        text.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    text.push_str("\r\n");
    if let Some(body) = body {
        text.push_str(body);
    }
    text
}

/// `METHOD path` on `addr` with `headers` and an optional JSON `body`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    request_over(stream, method, path, headers, body).await
}

/// [`request`] over an open stream (e.g. TLS).
pub async fn request_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    stream
        .write_all(head(method, path, headers, body).as_bytes())
        .await
        .expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse_reply(raw)
}

/// Sends `bytes` as they are (a request of the test's own making, malformed or not) and reads
/// the answer to the end of the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_reply(raw)
}

fn parse_reply(raw: Vec<u8>) -> Reply {
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Opens a server-sent-events stream: the status and headers, then a reader of its lines.
pub async fn events(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, BufReader<TcpStream>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut all = vec![("accept", "text/event-stream")];
    all.extend_from_slice(headers);
    stream
        .write_all(head("GET", path, &all, None).as_bytes())
        .await
        .expect("send");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.expect("status");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("header");
        if line.trim().is_empty() {
            break;
        }
    }
    (status, reader)
}

/// The next event's `data:` text (skipping keep-alive comments), with its `event:` name;
/// `None` at the end of the stream.
pub async fn next_event(reader: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut name = String::from("message");
    let mut data = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.expect("event line") == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if !data.is_empty() {
                return Some((name, data));
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
}
