//! API keys: the router keeps only their SHA-256 hashes and compares in constant time.
//!
//! A client presents its key as `Authorization: Bearer <key>` or `X-API-Key: <key>`
//! (gRPC: the same names as metadata). Hash a new key with
//! `printf %s "$KEY" | sha256sum` and configure `sha256:<hex>`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a configured key hash is unusable.
#[derive(Debug, thiserror::Error)]
#[error("auth.api_keys[{index}]: expected `sha256:` and 64 hex digits")]
pub struct KeyHashError {
    /// Position of the hash in the list.
    pub index: usize,
}

/// The hashes of the keys that may call the API; none configured means the API is open.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

/// What a request carried, as far as authentication goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No key is configured, or the request carried one of the configured keys.
    Allowed,
    /// Keys are configured and the request carried none.
    Missing,
    /// The request carried a key that is not configured.
    Wrong,
}

impl ApiKeys {
    /// Reads `sha256:<hex>` hashes.
    pub fn new(hashes: &[String]) -> Result<ApiKeys, KeyHashError> {
        let hashes = hashes
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let digits = text.trim().strip_prefix("sha256:").unwrap_or(text.trim());
                let mut hash = [0u8; 32];
                hex::decode_to_slice(digits, &mut hash).map_err(|_| KeyHashError { index })?;
                Ok(hash)
            })
            .collect::<Result<_, _>>()?;
        Ok(ApiKeys { hashes })
    }

    /// Judges the key a request presented (see [`presented_key`]).
    pub fn check(&self, presented: Option<&str>) -> Verdict {
        if self.hashes.is_empty() {
            return Verdict::Allowed;
        }
        let Some(key) = presented else {
            return Verdict::Missing;
        };
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every configured hash is compared, so the time taken does not tell which matched.
        let matched = self
            .hashes
            .iter()
            .fold(subtle::Choice::from(0), |any, known| {
                any | known[..].ct_eq(&hash[..])
            });
        if bool::from(matched) {
            Verdict::Allowed
        } else {
            Verdict::Wrong
        }
    }
}

/// The key in `authorization: Bearer <key>` or `x-api-key: <key>`, read through `header`.
pub fn presented_key<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    header("authorization")
        .and_then(|value| {
            let (scheme, key) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
        })
        .or_else(|| header("x-api-key").map(str::trim))
        .filter(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(key: &str) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
    }

    #[test]
    fn only_configured_keys_pass_and_no_keys_means_open() {
        let keys = ApiKeys::new(&[hash_of("alpha"), hash_of("beta")]).unwrap();
        assert_eq!(keys.check(Some("alpha")), Verdict::Allowed);
        assert_eq!(keys.check(Some("beta")), Verdict::Allowed);
        assert_eq!(keys.check(Some("gamma")), Verdict::Wrong);
        assert_eq!(keys.check(Some("")), Verdict::Wrong);
        assert_eq!(keys.check(None), Verdict::Missing);
        assert_eq!(ApiKeys::default().check(None), Verdict::Allowed);
    }

    #[test]
    fn hashes_must_be_sha256_hex() {
        let bare = hash_of("k").trim_start_matches("sha256:").to_owned();
        assert!(ApiKeys::new(&[bare]).is_ok());
        let err = ApiKeys::new(&[hash_of("k"), "sha256:xyz".into()]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains("auth.api_keys[1]"));
    }

    #[test]
    fn the_key_comes_from_a_bearer_token_or_the_api_key_header() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        };
        assert_eq!(
            presented_key(headers(&[("authorization", "Bearer k1")])),
            Some("k1")
        );
        assert_eq!(
            presented_key(headers(&[("authorization", "bearer  k1 ")])),
            Some("k1")
        );
        assert_eq!(presented_key(headers(&[("x-api-key", "k2")])), Some("k2"));
        assert_eq!(
            presented_key(headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(presented_key(headers(&[("x-api-key", " ")])), None);
        assert_eq!(presented_key(headers(&[])), None);
    }
}
