//! Sentinel's configuration loader: one YAML file, every key overridable by environment
//! variable, read into any deserializable type.
//!
//! `SENTINEL_<SECTION>__<KEY>` overrides `section.key` (a double underscore separates
//! levels, so keys keep their single underscores): `SENTINEL_NODE__DATA_DIR=/data`,
//! `SENTINEL_INGEST__VALIDATION__MAX_TOKENS=5000`. Values are read as YAML scalars, so
//! lists can be given inline: `SENTINEL_ROUTER__SEEDS='[a:7400, b:7400]'`.
//!
//! It also holds the [`LogSection`] every Sentinel process is configured with.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};
use thiserror::Error;

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SENTINEL_";
/// Variables (after [`ENV_PREFIX`]) the command-line client reads, which servers ignore.
pub const CLIENT_VARIABLES: [&str; 2] = ["ENDPOINT", "API_KEY"];

/// Why a configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("configuration file {}: {source}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: serde_yaml::Error,
    },
    /// An environment variable does not name a key that can be set.
    #[error("environment variable {variable}: {problem}")]
    Override {
        /// The variable.
        variable: String,
        /// What is wrong.
        problem: String,
    },
    /// A key is missing, unknown or ill-typed.
    #[error("configuration key {key}: {source}")]
    Invalid {
        /// Path of the key, e.g. `node.id` (`.` for the whole configuration).
        key: String,
        /// What is wrong with it.
        source: serde_yaml::Error,
    },
}

/// Reads `path` (when given), applies the `SENTINEL_*` overrides found in `env` (all but
/// [`CLIENT_VARIABLES`]), and deserializes the result.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>)>,
) -> Result<T, ConfigError> {
    let mut root = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
                path: path.to_owned(),
                source,
            })?
        }
        None => Value::Null,
    };
    if root.is_null() {
        root = Value::Mapping(Mapping::new());
    }
    for (name, value) in env {
        let key = name.as_ref().strip_prefix(ENV_PREFIX);
        if let Some(rest) = key.filter(|rest| !CLIENT_VARIABLES.contains(rest)) {
            override_key(&mut root, rest, value.as_ref())?;
        }
    }
    serde_path_to_error::deserialize(root).map_err(|e| ConfigError::Invalid {
        key: e.path().to_string(),
        source: e.into_inner(),
    })
}

/// Sets the key named by `SECTION__KEY` (case-insensitive) to `value` read as YAML.
fn override_key(root: &mut Value, path: &str, value: &str) -> Result<(), ConfigError> {
    let problem = |problem: String| ConfigError::Override {
        variable: format!("{ENV_PREFIX}{path}"),
        problem,
    };
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(String::is_empty) {
        return Err(problem("expected SENTINEL_<SECTION>__<KEY>".into()));
    }
    let parsed: Value = serde_yaml::from_str(value).unwrap_or(Value::String(value.to_owned()));
    let mut at = root;
    for part in &parts[..parts.len() - 1] {
        let map = at
            .as_mapping_mut()
            .ok_or_else(|| problem(format!("`{part}` is not a section")))?;
        at = map
            .entry(Value::String(part.clone()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    let map = at
        .as_mapping_mut()
        .ok_or_else(|| problem("the parent is not a section".into()))?;
    map.insert(Value::String(parts[parts.len() - 1].clone()), parsed);
    Ok(())
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,openraft=warn`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info,openraft=warn".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        server: Server,
        #[serde(default)]
        log: LogSection,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Server {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        peers: Vec<String>,
        #[serde(default)]
        limits: Limits,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Limits {
        max_items: u32,
    }

    #[test]
    fn environment_overrides_the_file_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.yaml");
        std::fs::write(&path, "server:\n  name: a\n  port: 1\n").unwrap();
        let sample: Sample = load(
            Some(&path),
            [
                ("SENTINEL_SERVER__PORT", "8080"),
                ("SENTINEL_SERVER__PEERS", "[x:1, y:2]"),
                ("SENTINEL_SERVER__LIMITS__MAX_ITEMS", "7"),
                ("SENTINEL_LOG__FORMAT", "json"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(sample.server.name, "a");
        assert_eq!(sample.server.port, 8080);
        assert_eq!(sample.server.peers, ["x:1", "y:2"]);
        assert_eq!(sample.server.limits.max_items, 7);
        assert_eq!(sample.log.format, LogFormat::Json);
        assert_eq!(sample.log.level, "info,openraft=warn");
    }

    #[test]
    fn without_a_file_the_environment_is_the_whole_configuration() {
        let sample: Sample = load(None, [("SENTINEL_SERVER__NAME", "b")]).unwrap();
        assert_eq!(sample.server.name, "b");
        assert_eq!(sample.server.port, 0);
    }

    #[test]
    fn the_clients_variables_are_not_configuration() {
        let sample: Sample = load(
            None,
            [
                ("SENTINEL_SERVER__NAME", "b"),
                ("SENTINEL_ENDPOINT", "http://127.0.0.1:7500"),
                ("SENTINEL_API_KEY", "secret"),
            ],
        )
        .unwrap();
        assert_eq!(sample.server.name, "b");
    }

    #[test]
    fn errors_name_the_key_file_or_variable() {
        let err = load::<Sample>(
            None,
            [
                ("SENTINEL_SERVER__NAME", "b"),
                ("SENTINEL_SERVER__COLOUR", "red"),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }));
        assert!(err.to_string().contains("colour"), "{err}");
        let err = load::<Sample>(
            None,
            [
                ("SENTINEL_SERVER__NAME", "b"),
                ("SENTINEL_SERVER__PORT", "many"),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "server.port"),
            "{err}"
        );
        let err = load::<Sample>(None, [("SENTINEL_SERVER____NAME", "b")]).unwrap_err();
        assert!(
            matches!(&err, ConfigError::Override { variable, .. } if variable == "SENTINEL_SERVER____NAME")
        );
        let err = load::<Sample>(
            None,
            [
                ("SENTINEL_SERVER__NAME", "b"),
                ("SENTINEL_SERVER__NAME__FIRST", "c"),
            ],
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Override { .. }), "{err}");
        let missing = Path::new("/nonexistent/sentinel.yaml");
        let err = load::<Sample>(Some(missing), std::iter::empty::<(&str, &str)>()).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/sentinel.yaml"));
    }

    #[test]
    fn a_file_that_is_not_yaml_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, "server: [unclosed\n").unwrap();
        let err = load::<Sample>(Some(&path), std::iter::empty::<(&str, &str)>()).unwrap_err();
        assert!(matches!(err, ConfigError::Yaml { .. }), "{err}");
    }
}
