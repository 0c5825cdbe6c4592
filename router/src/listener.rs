//! The REST listener. hyper refuses a request head it cannot take (malformed: 400; URI
//! longer than 65,534 bytes: 414; head larger than its buffer or more than 100 headers:
//! 431) by itself, before any handler runs, with an empty body. The connections of this
//! listener replace those answers with the API's JSON error body, so every error the
//! REST API gives is `{code, message, details}`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::serve::Listener;
use sentinel_proto::ErrorCode;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A listener (plain TCP or TLS) whose connections answer hyper's refusals of a request
/// head in JSON.
pub struct JsonRefusals<L>(pub L);

impl<L> Listener for JsonRefusals<L>
where
    L: Listener<Addr = SocketAddr>,
    L::Io: Unpin,
{
    type Io = JsonRefusalStream<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, address) = Listener::accept(&mut self.0).await;
        let stream = JsonRefusalStream {
            inner: stream,
            pending: Vec::new(),
            sent: 0,
        };
        (stream, address)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose writes of hyper's bodiless refusals are replaced by JSON answers.
pub struct JsonRefusalStream<S> {
    inner: S,
    /// A replacement answer still to be written, and how much of it was.
    pending: Vec<u8>,
    sent: usize,
}

impl<S: AsyncWrite + Unpin> JsonRefusalStream<S> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonRefusalStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonRefusalStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some(answer) = json_refusal(buf) {
            this.pending = answer;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The JSON answer replacing `written` when it is one of hyper's refusals of a request
/// head (status 400, 414 or 431, a head and no body); `None` for anything else.
pub fn json_refusal(written: &[u8]) -> Option<Vec<u8>> {
    let head = written.strip_suffix(b"\r\n\r\n")?;
    if !head.starts_with(b"HTTP/1.") || head.windows(4).any(|w| w == b"\r\n\r\n") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let (code, message) = match status_line.get(9..12)? {
        "400" => (
            ErrorCode::InvalidRequest.name(),
            "the request line or a header is malformed",
        ),
        "414" => (
            ErrorCode::UriTooLong.name(),
            "the request URI is longer than 65534 bytes",
        ),
        "431" => (
            ErrorCode::HeadersTooLarge.name(),
            "the request head is too large (more than 100 headers, or larger than the server's buffer)",
        ),
        _ => return None,
    };
    let mut others = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            if value.trim() != "0" {
                return None;
            }
        } else if !name.eq_ignore_ascii_case("content-type") {
            others.push(line);
        }
    }
    let body = json!({"code": code, "message": message, "details": []}).to_string();
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for line in others {
        answer += line;
        answer += "\r\n";
    }
    answer += "\r\n";
    answer += &body;
    Some(answer.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_bodiless_refusals_become_json_answers() {
        let refusal = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(json_refusal(refusal).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\ncontent-type: application/json\r\n"));
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.contains("\r\ndate: Thu, 01 Jan 2026"));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], "headers_too_large");
        assert_eq!(body["details"], json!([]));
        let uri = json_refusal(b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(String::from_utf8(uri).unwrap().contains("uri_too_long"));
    }

    #[test]
    fn every_other_write_passes_unchanged() {
        for written in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 12\r\n\r\n",
            b"{\"code\": \"x\"}",
            b"",
        ] {
            assert_eq!(json_refusal(written), None, "{}", String::from_utf8_lossy(written));
        }
    }
}
