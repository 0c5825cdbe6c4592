//! Request bodies of the ingestion routes: gzip decoding within a size limit, and
//! splitting into JSON documents. A body is one JSON value (an event, an OTLP request,
//! or an array of them) or NDJSON (one document per line): it is read as one value when
//! it parses as one; otherwise, when its first line is a JSON value on its own, as NDJSON,
//! so each bad line is reported on its own. `application/x-ndjson` always means NDJSON.

use std::borrow::Cow;
use std::io::Read;

use serde_json::Value;
use thiserror::Error;

/// Why a body could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    /// The body, or what it decodes to, exceeds the limit.
    #[error("the body exceeds {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The `Content-Encoding` is neither gzip nor identity.
    #[error("content encoding `{0}` is not supported (use gzip or none)")]
    UnsupportedEncoding(String),
    /// The gzip stream is corrupt.
    #[error("the gzip body is corrupt: {0}")]
    Gzip(String),
    /// The body holds nothing but whitespace.
    #[error("the body holds no events")]
    Empty,
}

/// How a body was laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One JSON value.
    Single,
    /// A JSON array of documents.
    Array,
    /// One document per line.
    Ndjson,
}

/// One document of a body: a JSON value, or why its text is not JSON.
pub type Document = Result<Value, String>;

/// The body decoded as `encoding` (a `Content-Encoding` value) says, at most `limit` bytes.
pub fn decode<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, [u8]>, BodyError> {
    match encoding.map(str::trim) {
        None | Some("") => Ok(Cow::Borrowed(body)),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(Cow::Borrowed(body)),
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            let mut decoded = Vec::new();
            flate2::read::MultiGzDecoder::new(body)
                .take(limit as u64 + 1)
                .read_to_end(&mut decoded)
                .map_err(|e| BodyError::Gzip(e.to_string()))?;
            if decoded.len() > limit {
                return Err(BodyError::TooLarge { limit });
            }
            Ok(Cow::Owned(decoded))
        }
        Some(other) => Err(BodyError::UnsupportedEncoding(other.to_owned())),
    }
}

/// The documents of a body, with its layout; `ndjson` forces NDJSON.
pub fn split(body: &[u8], ndjson: bool) -> Result<(Layout, Vec<Document>), BodyError> {
    let mut lines = body
        .split(|b| *b == b'\n')
        .map(|line| line.trim_ascii())
        .filter(|line| !line.is_empty());
    let Some(first) = lines.next() else {
        return Err(BodyError::Empty);
    };
    if !ndjson {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Array(items)) => {
                return Ok((Layout::Array, items.into_iter().map(Ok).collect()))
            }
            Ok(value) => return Ok((Layout::Single, vec![Ok(value)])),
            Err(e) => {
                let more_lines = lines.next().is_some();
                if !more_lines || serde_json::from_slice::<Value>(first).is_err() {
                    return Ok((Layout::Single, vec![Err(malformed(&e))]));
                }
            }
        }
    }
    let documents = body
        .split(|b| *b == b'\n')
        .map(|line| line.trim_ascii())
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice::<Value>(line).map_err(|e| malformed(&e)))
        .collect();
    Ok((Layout::Ndjson, documents))
}

fn malformed(error: &serde_json::Error) -> String {
    sentinel_core::EventError::Json(error.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn single_array_and_ndjson_are_told_apart() {
        let (layout, docs) = split(b"  {\"a\": 1}\n", false).unwrap();
        assert_eq!((layout, docs.len()), (Layout::Single, 1));
        let (layout, docs) = split(b"{\n  \"a\": 1\n}\n", false).unwrap();
        assert_eq!((layout, docs.len()), (Layout::Single, 1));
        let (layout, docs) = split(b"[{\"a\": 1}, {\"a\": 2}, 3]", false).unwrap();
        assert_eq!((layout, docs.len()), (Layout::Array, 3));
        let (layout, docs) = split(b"{\"a\": 1}\r\n\n{\"a\": 2}\n{\"a\": 3}", false).unwrap();
        assert_eq!((layout, docs.len()), (Layout::Ndjson, 3));
        assert!(docs.iter().all(Result::is_ok));
    }

    #[test]
    fn a_bad_ndjson_line_is_one_bad_document() {
        let (layout, docs) = split(b"{\"a\": 1}\n{oops\n{\"a\": 3}\n", false).unwrap();
        assert_eq!(layout, Layout::Ndjson);
        assert!(docs[0].is_ok() && docs[2].is_ok());
        assert!(docs[1].as_ref().unwrap_err().contains("malformed JSON"));
        let (layout, docs) = split(b"{\n \"a\": 1,\n}\n", false).unwrap();
        assert_eq!((layout, docs.len()), (Layout::Single, 1));
        assert!(docs[0].is_err());
        let (layout, docs) = split(b"{\"a\": 1}", true).unwrap();
        assert_eq!((layout, docs.len()), (Layout::Ndjson, 1));
        assert_eq!(split(b" \n\t\n", false).unwrap_err(), BodyError::Empty);
    }

    #[test]
    fn gzip_is_decoded_within_the_limit() {
        let body = br#"{"service_name": "chat"}"#;
        let packed = gzip(body);
        assert_eq!(&*decode(Some("gzip"), &packed, 1024).unwrap(), body);
        assert_eq!(&*decode(Some("x-gzip"), &packed, 1024).unwrap(), body);
        assert_eq!(&*decode(None, body, 1024).unwrap(), body);
        assert_eq!(&*decode(Some("identity"), body, 1024).unwrap(), body);
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert_eq!(
            decode(Some("gzip"), &bomb, 4096).unwrap_err(),
            BodyError::TooLarge { limit: 4096 }
        );
        assert!(matches!(
            decode(Some("gzip"), b"not gzip", 1024),
            Err(BodyError::Gzip(_))
        ));
        assert!(matches!(
            decode(Some("br"), body, 1024),
            Err(BodyError::UnsupportedEncoding(_))
        ));
    }
}
