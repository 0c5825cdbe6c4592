//! The one binary encoding of what Sentinel replicates and forwards between its own
//! processes: a format byte, then MessagePack (values in field order, so a struct costs
//! no field names). JSON is for the edges only.
//!
//! Upgrade rule: a change of any encoded type's fields gets a new format byte; decoders
//! keep reading every earlier format they may meet (docs/storage.md).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format byte of values written by this version. `0xc1` is the one byte MessagePack
/// never uses, so a value of this encoding cannot be mistaken for bare MessagePack or for
/// JSON (`{`) written before the format byte existed.
pub const FORMAT: u8 = 0xc1;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not start with a known format byte.
    #[error("unknown encoding (first byte {0:#04x}, expected {FORMAT:#04x})")]
    Format(u8),
    /// Nothing to decode.
    #[error("no bytes")]
    Empty,
    /// The body does not hold a value of the expected type.
    #[error("undecodable: {0}")]
    Body(String),
}

/// `value` in the current format.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    rmp_serde::encode::write(&mut out, value)
        .expect("in-memory values always encode as MessagePack");
    out
}

/// A value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT, body)) => decode_body(body),
        Some((&other, _)) => Err(CodecError::Format(other)),
    }
}

/// A value written as bare MessagePack, before the format byte existed.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(body).map_err(|e| CodecError::Body(e.to_string()))
}

/// Whether `bytes` start with this encoding's format byte.
pub fn is_current(bytes: &[u8]) -> bool {
    bytes.first() == Some(&FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    fn event() -> Event {
        let mut event = crate::parse_event(
            br#"{"service_name": "chat", "model": "gpt-4o", "latency_ms": 812.5,
                 "timestamp": "2026-03-01T12:00:00Z", "prompt_tokens": 12,
                 "metadata": {"region": "eu", "big": 18446744073709551615, "nested": {"a": [1, null]}}}"#,
        )
        .unwrap();
        event.errors.push("timeout".into());
        event
    }

    #[test]
    fn values_come_back_equal_and_start_with_the_format_byte() {
        let event = event();
        let bytes = encode(&event);
        assert_eq!(bytes[0], FORMAT);
        assert!(is_current(&bytes));
        assert_eq!(decode::<Event>(&bytes).unwrap(), event);
        assert_eq!(decode_body::<Event>(&bytes[1..]).unwrap(), event);
    }

    #[test]
    fn foreign_or_damaged_bytes_are_refused_not_misread() {
        assert_eq!(decode::<Event>(&[]), Err(CodecError::Empty));
        assert_eq!(decode::<Event>(b"{\"a\":1}"), Err(CodecError::Format(b'{')));
        let bytes = encode(&event());
        assert!(matches!(
            decode::<Event>(&bytes[..bytes.len() / 2]),
            Err(CodecError::Body(_))
        ));
        assert!(matches!(
            decode::<Event>(&[FORMAT, 0x01]),
            Err(CodecError::Body(_))
        ));
    }
}
