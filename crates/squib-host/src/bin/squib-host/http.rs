//! The control API's HTTP/1.1: one request per connection, bounded head and body, JSON.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Largest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// Largest request body accepted.
const MAX_BODY: usize = 64 << 10;
/// How long a client may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// A parsed request.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: Vec<u8>,
}

/// A response: status, JSON or text body.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

impl Response {
    pub(crate) fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    pub(crate) fn text(status: u16, body: String) -> Self {
        Self {
            status,
            content_type: platform_primitives::prom::CONTENT_TYPE,
            body: body.into_bytes(),
        }
    }

    /// A 4xx or 5xx with `{"error": …, "field": …}`.
    pub(crate) fn error(status: u16, message: impl Into<String>, field: Option<&str>) -> Self {
        let mut v = json!({ "error": message.into() });
        if let Some(f) = field {
            v["field"] = json!(f);
        }
        Self::json(status, &v)
    }

    pub(crate) fn no_content() -> Self {
        Self {
            status: 204,
            content_type: "application/json",
            body: Vec::new(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Reads one request within the deadline; `Err` carries the response to send instead.
pub(crate) fn read_request(conn: &mut UnixStream) -> Result<Request, Response> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut raw = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if raw.len() > MAX_HEAD {
            return Err(Response::error(413, "request head too large", None));
        }
        let n = read_by(conn, &mut buf, deadline)?;
        if n == 0 {
            return Err(Response::error(400, "connection closed mid-request", None));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| Response::error(400, "request head is not UTF-8", None))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path, version) = (first.next(), first.next(), first.next());
    let (Some(method), Some(path), Some(version)) = (method, path, version) else {
        return Err(Response::error(400, "malformed request line", None));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::error(400, "only HTTP/1.x is spoken here", None));
    }
    let mut length = 0usize;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            return Err(Response::error(
                400,
                format!("malformed header {line:?}"),
                None,
            ));
        };
        if k.trim().eq_ignore_ascii_case("content-length") {
            length = v
                .trim()
                .parse()
                .map_err(|_| Response::error(400, "bad Content-Length", None))?;
        }
        if k.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err(Response::error(
                400,
                "chunked bodies are not accepted",
                None,
            ));
        }
    }
    if length > MAX_BODY {
        return Err(Response::error(
            413,
            format!("body over {MAX_BODY} bytes"),
            None,
        ));
    }
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < length {
        let n = read_by(conn, &mut buf, deadline)?;
        if n == 0 {
            return Err(Response::error(400, "connection closed mid-body", None));
        }
        body.extend_from_slice(&buf[..n]);
    }
    body.truncate(length);
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        body,
    })
}

fn read_by(conn: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> Result<usize, Response> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Response::error(408, "request not received in time", None));
    }
    let _ = conn.set_read_timeout(Some(left));
    match conn.read(buf) {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(Response::error(408, "request not received in time", None))
        }
        Err(e) => Err(Response::error(400, format!("read failed: {e}"), None)),
    }
}

/// Writes `resp` and closes the connection (with a deadline: a client that stops reading
/// cannot hold the thread).
pub(crate) fn write_response(conn: &mut UnixStream, resp: &Response) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&resp.body);
    let _ = conn.shutdown(std::net::Shutdown::Write);
}
