//! Request bodies of the ingestion routes: gzip decoding within a size limit, and
//! walking their JSON documents one at a time. A body is one JSON value (an event, an OTLP request,
//! or an array of them) or NDJSON (one document per line): it is read as one value when
//! it parses as one; otherwise, when its first line is a JSON value on its own, as NDJSON,
//! so each bad line is reported on its own. `application/x-ndjson` always means NDJSON.

use std::borrow::Cow;
use std::io::Read;

use serde::de::{Deserializer as _, IgnoredAny, SeqAccess, Visitor};
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
    /// The body holds more events than one request may.
    #[error("the body holds more than {limit} events; send at most {limit} per request")]
    TooManyEvents {
        /// The most events one request may hold (`ingest.max_events_per_request`).
        limit: usize,
    },
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
pub type JsonDocument = Result<Value, String>;

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

/// Hands each document of a body to `visit`, in order, and tells the body's layout;
/// `ndjson` forces NDJSON. The documents are parsed one at a time (an array's elements
/// as the array is read), so a body is never held as one parsed tree of all its events;
/// an error from `visit` stops the walk and is returned.
pub fn for_each_document(
    body: &[u8],
    ndjson: bool,
    mut visit: impl FnMut(JsonDocument) -> Result<(), BodyError>,
) -> Result<Layout, BodyError> {
    let mut lines = non_empty_lines(body);
    let Some(first) = lines.next() else {
        return Err(BodyError::Empty);
    };
    if !ndjson {
        match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) if first.starts_with(b"[") => {
                for_each_element(body, &mut visit)?;
                return Ok(Layout::Array);
            }
            Ok(_) => {
                visit(serde_json::from_slice(body).map_err(|e| malformed(&e)))?;
                return Ok(Layout::Single);
            }
            Err(e) => {
                let more_lines = lines.next().is_some();
                if !more_lines || serde_json::from_slice::<IgnoredAny>(first).is_err() {
                    visit(Err(malformed(&e)))?;
                    return Ok(Layout::Single);
                }
            }
        }
    }
    for line in non_empty_lines(body) {
        visit(serde_json::from_slice::<Value>(line).map_err(|e| malformed(&e)))?;
    }
    Ok(Layout::Ndjson)
}

/// The lines of a body that hold more than whitespace, trimmed.
fn non_empty_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == b'\n')
        .map(|line| line.trim_ascii())
        .filter(|line| !line.is_empty())
}

/// Hands each element of the JSON array `body` (already known to be valid JSON) to
/// `visit` as soon as it is parsed.
fn for_each_element(
    body: &[u8],
    visit: &mut dyn FnMut(JsonDocument) -> Result<(), BodyError>,
) -> Result<(), BodyError> {
    /// Parses elements one by one, keeping why `visit` stopped the walk.
    struct Elements<'v> {
        visit: &'v mut dyn FnMut(JsonDocument) -> Result<(), BodyError>,
        stopped: Option<BodyError>,
    }
    impl<'de> Visitor<'de> for &mut Elements<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut elements: A) -> Result<(), A::Error> {
            while let Some(element) = elements.next_element::<Value>()? {
                if let Err(stop) = (self.visit)(Ok(element)) {
                    self.stopped = Some(stop);
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }
    let mut elements = Elements {
        visit,
        stopped: None,
    };
    let parsed = serde_json::Deserializer::from_slice(body).deserialize_seq(&mut elements);
    match (elements.stopped, parsed) {
        (Some(stop), _) => Err(stop),
        (None, Ok(())) => Ok(()),
        (None, Err(e)) => (elements.visit)(Err(malformed(&e))),
    }
}

fn malformed(error: &serde_json::Error) -> String {
    sentinel_core::EventError::Json(error.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Every document of a body, with its layout.
    fn split(body: &[u8], ndjson: bool) -> Result<(Layout, Vec<JsonDocument>), BodyError> {
        let mut documents = Vec::new();
        let layout = for_each_document(body, ndjson, |document| {
            documents.push(document);
            Ok(())
        })?;
        Ok((layout, documents))
    }

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
    fn a_walk_stops_at_the_first_refusal_without_reading_further() {
        let mut seen = 0;
        let malformed = for_each_document(b"[1, 2, 3, {oops", false, |_| Ok(()));
        assert_eq!(
            malformed,
            Ok(Layout::Single),
            "a malformed body is one bad document"
        );
        let stopped = for_each_document(b"[1, 2, 3, 4]", false, |_| {
            seen += 1;
            if seen == 2 {
                Err(BodyError::TooManyEvents { limit: 1 })
            } else {
                Ok(())
            }
        });
        assert_eq!(stopped, Err(BodyError::TooManyEvents { limit: 1 }));
        assert_eq!(seen, 2);
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
