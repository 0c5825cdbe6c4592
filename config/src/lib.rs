//! Sentinel's configuration loader: one YAML file, every key overridable by environment
//! variable, read into any deserializable type.
//!
//! `SENTINEL_<SECTION>__<KEY>` overrides `section.key` (a double underscore separates
//! levels, so keys keep their single underscores): `SENTINEL_NODE__DATA_DIR=/data`,
//! `SENTINEL_INGEST__VALIDATION__MAX_TOKENS=5000`. Values are read as YAML scalars, so
//! lists can be given inline: `SENTINEL_ROUTER__SEEDS='[a:7400, b:7400]'`. A whole
//! section is set by `SENTINEL_<SECTION>` with a YAML mapping as its value, and turned
//! off (an optional section) with `null` or `~`. The original
//! single-process Sentinel's `SENTINEL_LOG_LEVEL` and `SENTINEL_LOG_JSON` are aliases of
//! `log.level` and `log.format`; any other `SENTINEL_*` variable is not configuration and
//! is ignored (see [`ignored_variables`]).
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
/// The original Sentinel's variables (after [`ENV_PREFIX`]) and the keys they set.
const ALIASES: [(&str, &str); 2] = [("LOG_LEVEL", "log.level"), ("LOG_JSON", "log.format")];

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

/// What one environment variable is to a server's configuration.
#[derive(Debug, PartialEq)]
enum Variable {
    /// Not Sentinel's, or the command-line client's.
    Other,
    /// Sets the key at `path` (lower case, one part per level) to `value`; `alias` when
    /// the variable is one of [`ALIASES`].
    Key {
        path: Vec<String>,
        value: Value,
        alias: bool,
    },
    /// A `SENTINEL_*` variable that is not configuration.
    Ignored,
}

impl Variable {
    /// Reads the variable `name` set to `value`.
    fn of(name: &str, value: &str) -> Result<Variable, ConfigError> {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            return Ok(Variable::Other);
        };
        if CLIENT_VARIABLES.contains(&rest) {
            return Ok(Variable::Other);
        }
        let problem = |problem: &str| ConfigError::Override {
            variable: name.to_owned(),
            problem: problem.to_owned(),
        };
        let value_of = |value: &str| -> Value {
            serde_yaml::from_str(value).unwrap_or(Value::String(value.to_owned()))
        };
        if let Some((_, key)) = ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(rest)) {
            let value = match *key {
                "log.format" => {
                    log_format_of_flag(value).ok_or_else(|| problem("expected true or false"))?
                }
                _ => log_level(value),
            };
            return Ok(Variable::Key {
                path: key.split('.').map(str::to_owned).collect(),
                value: Value::String(value.to_owned()),
                alias: true,
            });
        }
        let section_off = matches!(value.trim(), "null" | "~");
        let value = value_of(value);
        if !rest.contains("__") && !value.is_mapping() && !section_off {
            return Ok(Variable::Ignored);
        }
        let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(problem("expected SENTINEL_<SECTION>__<KEY>"));
        }
        Ok(Variable::Key {
            path,
            value,
            alias: false,
        })
    }
}

/// `SENTINEL_LOG_JSON`'s value as a log format, if it is a flag.
fn log_format_of_flag(flag: &str) -> Option<&'static str> {
    match flag.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some("json"),
        "false" | "0" | "no" | "off" | "" => Some("text"),
        _ => None,
    }
}

/// `SENTINEL_LOG_LEVEL`'s value as a tracing filter: level names of other logging
/// libraries (`WARNING`, `CRITICAL`, `FATAL`) become tracing's.
fn log_level(level: &str) -> &str {
    match level.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn",
        "critical" | "fatal" => "error",
        _ => level,
    }
}

/// Reads `path` (when given), applies the `SENTINEL_*` overrides found in `env` (the
/// aliases first, so `SENTINEL_<SECTION>__<KEY>` wins over them), and deserializes the
/// result. Variables that are not configuration are skipped: see [`ignored_variables`].
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
    let mut keys = Vec::new();
    for (name, value) in env {
        if let Variable::Key { path, value, alias } = Variable::of(name.as_ref(), value.as_ref())? {
            keys.push((!alias, name.as_ref().to_owned(), path, value));
        }
    }
    keys.sort_by_key(|(direct, ..)| *direct);
    for (_, name, path, value) in keys {
        override_key(&mut root, &name, &path, value)?;
    }
    serde_path_to_error::deserialize(root).map_err(|e| ConfigError::Invalid {
        key: e.path().to_string(),
        source: e.into_inner(),
    })
}

/// The `SENTINEL_*` variables of `env` that are not configuration (neither
/// `SENTINEL_<SECTION>__<KEY>`, a whole section, an alias nor the client's), sorted: a
/// server warns about them once and runs on.
pub fn ignored_variables(
    env: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>)>,
) -> Vec<String> {
    let mut ignored: Vec<String> = env
        .into_iter()
        .filter(|(name, value)| {
            matches!(
                Variable::of(name.as_ref(), value.as_ref()),
                Ok(Variable::Ignored)
            )
        })
        .map(|(name, _)| name.as_ref().to_owned())
        .collect();
    ignored.sort();
    ignored
}

/// Sets the key at `path` to `value`; `variable` names the variable in errors.
fn override_key(
    root: &mut Value,
    variable: &str,
    path: &[String],
    value: Value,
) -> Result<(), ConfigError> {
    let problem = |problem: String| ConfigError::Override {
        variable: variable.to_owned(),
        problem,
    };
    let mut at = root;
    for part in &path[..path.len() - 1] {
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
    map.insert(Value::String(path[path.len() - 1].clone()), value);
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
        #[serde(default)]
        extra: Option<Limits>,
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
    fn the_original_log_variables_are_aliases_the_double_underscore_form_wins() {
        let sample: Sample = load(
            None,
            [
                ("SENTINEL_SERVER__NAME", "b"),
                ("SENTINEL_LOG_LEVEL", "WARNING"),
                ("SENTINEL_LOG_JSON", "true"),
            ],
        )
        .unwrap();
        assert_eq!(sample.log.level, "warn");
        assert_eq!(sample.log.format, LogFormat::Json);
        for env in [
            [("SENTINEL_LOG__FORMAT", "text"), ("SENTINEL_LOG_JSON", "1")],
            [("SENTINEL_LOG_JSON", "1"), ("SENTINEL_LOG__FORMAT", "text")],
        ] {
            let sample: Sample = load(
                None,
                [("SENTINEL_SERVER__NAME", "b")].into_iter().chain(env),
            )
            .unwrap();
            assert_eq!(sample.log.format, LogFormat::Text, "{env:?}");
        }
        let sample: Sample = load(
            None,
            [
                ("SENTINEL_SERVER__NAME", "b"),
                ("SENTINEL_LOG_LEVEL", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(sample.log.level, "debug");
        let err = load::<Sample>(
            None,
            [
                ("SENTINEL_SERVER__NAME", "b"),
                ("SENTINEL_LOG_JSON", "maybe"),
            ],
        )
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::Override { variable, .. } if variable == "SENTINEL_LOG_JSON"),
            "{err}"
        );
    }

    #[test]
    fn other_single_underscore_variables_are_ignored_and_listed() {
        let env = [
            ("SENTINEL_SERVER__NAME", "b"),
            ("SENTINEL_TOPIC", "llm-telemetry"),
            ("SENTINEL_BROKERS", "localhost:9092"),
            ("SENTINEL_KAFKA_BROKERS", "localhost:9092"),
            ("SENTINEL_LOG_LEVEL", "info"),
            ("SENTINEL_ENDPOINT", "http://127.0.0.1:7500"),
            ("HOME", "/root"),
        ];
        let sample: Sample = load(None, env).unwrap();
        assert_eq!(sample.server.name, "b");
        assert_eq!(
            ignored_variables(env),
            [
                "SENTINEL_BROKERS",
                "SENTINEL_KAFKA_BROKERS",
                "SENTINEL_TOPIC"
            ]
        );
    }

    #[test]
    fn a_whole_section_is_set_by_a_mapping() {
        let env = [("SENTINEL_SERVER", "{name: c, port: 9}")];
        let sample: Sample = load(None, env).unwrap();
        assert_eq!((sample.server.name.as_str(), sample.server.port), ("c", 9));
        assert!(ignored_variables(env).is_empty());
    }

    #[test]
    fn an_optional_section_is_turned_off_by_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample.yaml");
        std::fs::write(&path, "server:\n  name: a\nextra:\n  max_items: 3\n").unwrap();
        let on: Sample = load(Some(&path), [("HOME", "/root")]).unwrap();
        assert_eq!(on.extra.map(|e| e.max_items), Some(3));
        for off in ["null", "~"] {
            let env = [("SENTINEL_EXTRA", off)];
            let sample: Sample = load(Some(&path), env).unwrap();
            assert!(sample.extra.is_none(), "SENTINEL_EXTRA={off}");
            assert!(ignored_variables(env).is_empty());
        }
        // Another empty-looking value is not configuration.
        assert_eq!(
            ignored_variables([("SENTINEL_EXTRA", "")]),
            ["SENTINEL_EXTRA"]
        );
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
