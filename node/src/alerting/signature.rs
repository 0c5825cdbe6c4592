//! The `X-Sentinel-Signature` header: HMAC-SHA256 of the request body.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of the header value, naming the algorithm.
const SCHEME: &str = "sha256=";

fn mac(secret: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac
}

/// The `X-Sentinel-Signature` value for `body`: `sha256=` and the lowercase hex HMAC-SHA256.
///
/// ```
/// use sentinel_node::alerting::{sign, verify};
///
/// let body = br#"{"alert_id":"6f1c0d2e-7a3b-4c59-9e8d-1b2a3c4d5e6f"}"#;
/// let header = sign(b"whsec_example", body);
/// assert_eq!(
///     header,
///     "sha256=67681a43844a7ba25a3eb1b61eededc56c9f8fb4df43076add0a6c69dabc620e"
/// );
/// assert!(verify(b"whsec_example", body, &header));
/// ```
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!(
        "{SCHEME}{}",
        hex::encode(mac(secret, body).finalize().into_bytes())
    )
}

/// Whether `header` is a valid signature of `body` under `secret`, compared in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(digest) = header.trim().strip_prefix(SCHEME) else {
        return false;
    };
    match hex::decode(digest) {
        Ok(digest) => mac(secret, body).verify_slice(&digest).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_known_answer() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verifies_its_own_signatures_and_uppercase_hex() {
        let header = sign(b"secret", b"body");
        assert!(verify(b"secret", b"body", &header));
        assert!(verify(
            b"secret",
            b"body",
            &header.to_uppercase().replace("SHA256=", "sha256=")
        ));
    }

    /// The worked example of `docs/alerting.md` stays true: its body is a notification
    /// exactly as a node serializes it, its pretty-printed payload is the same
    /// notification, and its headers are what a node sends.
    #[test]
    fn the_documented_worked_example_is_what_a_node_sends() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/alerting.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let line = |prefix: &str| {
            doc.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("docs/alerting.md has no line starting {prefix}"))
        };
        let body = format!("{{\"alert_id\":{}", line("{\"alert_id\":"));
        let secret = line("secret='").trim_end_matches('\'');
        let notification: sentinel_core::Notification = serde_json::from_str(&body).unwrap();
        assert_eq!(serde_json::to_string(&notification).unwrap(), body);
        assert_eq!(line("X-Sentinel-Alert-Id: "), notification.alert.alert_id);
        assert_eq!(
            line("X-Sentinel-Incident-Id: "),
            notification.incident.incident_id
        );
        assert_eq!(line("X-Sentinel-Event: "), notification.event.name());
        assert_eq!(
            line("X-Sentinel-Signature: "),
            sign(secret.as_bytes(), body.as_bytes())
        );
        assert!(doc.contains(&format!("{} bytes", body.len())));
        let pretty = doc
            .split("```json\n")
            .nth(1)
            .and_then(|block| block.split("```").next())
            .expect("a json block");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(pretty).unwrap(),
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        );
    }

    #[test]
    fn rejects_other_bodies_secrets_and_malformed_headers() {
        let header = sign(b"secret", b"body");
        assert!(!verify(b"secret", b"body!", &header));
        assert!(!verify(b"other", b"body", &header));
        assert!(!verify(b"secret", b"body", &header["sha256=".len()..]));
        assert!(!verify(b"secret", b"body", "sha256=zz"));
        assert!(!verify(b"secret", b"body", &header[..header.len() - 2]));
        assert!(!verify(b"secret", b"body", "sha1=00"));
    }
}
