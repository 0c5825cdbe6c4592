//! Webhook sink: a signed HTTP POST of the notification JSON.

use std::ffi::OsString;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;

use super::config::{url_origin, SecretSource};
use super::{sign, AlertingError, Message, SinkError, WebhookConfig};

/// Header carrying the body's HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "X-Sentinel-Signature";
/// Header carrying the alert's stable id, for receivers that drop repeats.
pub const ALERT_ID_HEADER: &str = "X-Sentinel-Alert-Id";
/// Header carrying the Unix time (seconds) at which the request was sent.
pub const TIMESTAMP_HEADER: &str = "X-Sentinel-Timestamp";
/// Header carrying the incident id of a notification, for receivers that route by incident.
pub const INCIDENT_ID_HEADER: &str = "X-Sentinel-Incident-Id";
/// Header carrying what happened to the incident: `opened`, `escalated` or `resolved`.
pub const EVENT_HEADER: &str = "X-Sentinel-Event";

/// An HMAC key, kept out of `Debug` output.
struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads the secret of webhook `index` from its variable (looked up with `env`) or file.
fn resolve_secret(
    index: usize,
    config: &WebhookConfig,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Secret, AlertingError> {
    let bytes = match config.secret_source(index)? {
        SecretSource::Env(variable) => env(variable)
            .ok_or_else(|| AlertingError::SecretEnvMissing {
                webhook: config.name.clone(),
                variable: variable.to_owned(),
            })?
            .into_encoded_bytes(),
        SecretSource::File(path) => {
            let mut bytes = std::fs::read(path).map_err(|error| AlertingError::SecretFile {
                webhook: config.name.clone(),
                path: path.to_path_buf(),
                error,
            })?;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            bytes
        }
    };
    if bytes.is_empty() {
        return Err(AlertingError::EmptySecret {
            webhook: config.name.clone(),
        });
    }
    Ok(Secret(bytes))
}

/// One webhook endpoint with its secret.
pub(crate) struct WebhookSink {
    url: String,
    secret: Secret,
    timeout: Duration,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &url_origin(&self.url))
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Resolves the secret of (validated) webhook `index`, looking variables up with `env`.
    pub(crate) fn new(
        index: usize,
        config: &WebhookConfig,
        client: reqwest::Client,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<WebhookSink, AlertingError> {
        Ok(WebhookSink {
            url: config.url.clone(),
            secret: resolve_secret(index, config, env)?,
            timeout: Duration::from_millis(config.timeout_ms),
            client,
        })
    }

    /// Makes one signed POST of the message; only a 2xx answer counts as accepted.
    pub(crate) async fn post(&self, message: Message<'_>) -> Result<(), SinkError> {
        let sent_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut request = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(
                SIGNATURE_HEADER,
                sign(&self.secret.0, message.json.as_bytes()),
            )
            .header(ALERT_ID_HEADER, message.alert.alert_id.as_str())
            .header(TIMESTAMP_HEADER, sent_at.to_string());
        if let Some((incident_id, event)) = message.incident() {
            request = request
                .header(INCIDENT_ID_HEADER, incident_id)
                .header(EVENT_HEADER, event);
        }
        let response = request
            .body(message.json.to_owned())
            .send()
            .await
            .map_err(|error| SinkError::Http(error.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Status {
                status: status.as_u16(),
            })
        }
    }
}

/// Whether an HTTP status is worth another try: server errors, 408 and 429.
pub(crate) fn status_is_retryable(status: u16) -> bool {
    StatusCode::from_u16(status).is_ok_and(|status| {
        status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn webhook(secret_env: Option<&str>, secret_file: Option<&std::path::Path>) -> WebhookConfig {
        WebhookConfig {
            name: "ops".to_owned(),
            url: "http://127.0.0.1:9/hook".to_owned(),
            secret_env: secret_env.map(str::to_owned),
            secret_file: secret_file.map(std::path::Path::to_path_buf),
            timeout_ms: 5000,
        }
    }

    fn env_with(name: &'static str, value: &'static str) -> impl Fn(&str) -> Option<OsString> {
        move |asked: &str| (asked == name).then(|| OsString::from(value))
    }

    #[test]
    fn secret_comes_from_the_named_variable() {
        let secret = resolve_secret(
            0,
            &webhook(Some("OPS_SECRET"), None),
            env_with("OPS_SECRET", "s3cr3t"),
        )
        .unwrap();
        assert_eq!(secret.0, b"s3cr3t");
    }

    #[test]
    fn missing_or_empty_variable_is_an_error_naming_it() {
        let error = resolve_secret(
            0,
            &webhook(Some("OPS_SECRET"), None),
            env_with("OTHER", "x"),
        )
        .unwrap_err();
        assert!(
            matches!(&error, AlertingError::SecretEnvMissing { webhook, variable }
                if webhook == "ops" && variable == "OPS_SECRET"),
            "{error}"
        );
        let error = resolve_secret(
            0,
            &webhook(Some("OPS_SECRET"), None),
            env_with("OPS_SECRET", ""),
        )
        .unwrap_err();
        assert!(
            matches!(error, AlertingError::EmptySecret { .. }),
            "{error}"
        );
    }

    #[test]
    fn secret_file_loses_one_trailing_newline_only() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b" k3y \r\n").unwrap();
        let secret = resolve_secret(0, &webhook(None, Some(file.path())), |_| None).unwrap();
        assert_eq!(secret.0, b" k3y ");
    }

    #[test]
    fn unreadable_secret_file_is_an_error_naming_the_path() {
        let path = std::path::Path::new("/nonexistent/sentinel/secret");
        let error = resolve_secret(0, &webhook(None, Some(path)), |_| None).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/sentinel/secret"),
            "{error}"
        );
    }

    #[test]
    fn secret_never_appears_in_debug_output() {
        let sink = WebhookSink::new(
            0,
            &webhook(Some("OPS_SECRET"), None),
            reqwest::Client::new(),
            env_with("OPS_SECRET", "s3cr3t-value"),
        )
        .unwrap();
        let debug = format!("{sink:?}");
        for leak in [
            "s3cr3t".to_owned(),
            format!("{:?}", b"s3cr3t-value".to_vec()),
            hex::encode("s3cr3t-value"),
            "/hook".to_owned(),
        ] {
            assert!(!debug.contains(&leak), "{leak} leaked: {debug}");
        }
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn only_server_errors_timeouts_and_throttling_are_retried() {
        for status in [500, 502, 503, 504, 408, 429] {
            assert!(status_is_retryable(status), "{status}");
        }
        for status in [300, 301, 400, 401, 403, 404, 409, 410, 422] {
            assert!(!status_is_retryable(status), "{status}");
        }
    }
}
