//! `docs/configuration.md` against the configuration types: every key of the reference is
//! a key `sentinel node` or `sentinel router` accepts and every key they accept is in the
//! reference, each with its true type, default and environment variable.
//!
//! The keys of a program are the leaves of its configuration serialized twice: with only
//! the required keys set (`minimal`), and with the optional sections and one element of
//! every list of sections present as well (`full`), so that the keys inside them show too.
//! A key inside a list element is written `list[]`. An object, list or map that is empty
//! is a key of its own.

use std::collections::{BTreeMap, BTreeSet};

use sentinel_node::NodeConfig;
use sentinel_router::RouterConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// The reference, relative to this crate.
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

/// Header of the tables that list keys.
const KEY_TABLE_HEADER: &str = "| key | type | default | environment variable | meaning |";

/// The program a part of the reference describes, from its `## ` heading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Node,
    Router,
    Both,
}

impl Part {
    fn of_heading(heading: &str) -> Option<Part> {
        [
            ("## Node", Part::Node),
            ("## Router", Part::Router),
            ("## Both", Part::Both),
        ]
        .into_iter()
        .find(|(prefix, _)| heading.starts_with(prefix))
        .map(|(_, part)| part)
    }

    fn covers(self, program: Part) -> bool {
        self == program || self == Part::Both
    }
}

/// One row of a key table.
#[derive(Debug)]
struct Row {
    line: usize,
    ty: String,
    default: String,
    env: String,
}

/// The rows of `program` (its own part and the part both share), by key.
fn reference(program: Part) -> BTreeMap<String, Row> {
    let text = std::fs::read_to_string(REFERENCE).expect("docs/configuration.md is readable");
    let mut rows = BTreeMap::new();
    let mut part = None;
    let mut in_table = false;
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.starts_with("## ") {
            part = Part::of_heading(line);
        }
        if line.trim() == KEY_TABLE_HEADER {
            assert!(
                part.is_some(),
                "line {line_no}: a key table outside the node, router and both parts"
            );
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || line.starts_with("| ---") {
            continue;
        }
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(
            cells.len(),
            5,
            "line {line_no}: a key row has five cells: {line}"
        );
        let key = code_span(cells[0])
            .unwrap_or_else(|| panic!("line {line_no}: the key is one code span: {line}"));
        if !part.is_some_and(|p| p.covers(program)) {
            continue;
        }
        let row = Row {
            line: line_no,
            ty: cells[1].to_owned(),
            default: cells[2].to_owned(),
            env: cells[3].to_owned(),
        };
        if let Some(first) = rows.insert(key.to_owned(), row) {
            panic!(
                "line {line_no}: `{key}` is already listed on line {}",
                first.line
            );
        }
    }
    rows
}

/// The text of a cell that is exactly one code span.
fn code_span(cell: &str) -> Option<&str> {
    let inner = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!inner.contains('`')).then_some(inner)
}

/// Loads a configuration from the environment only, one `SENTINEL_<SECTION>` variable per
/// section of `sections` (JSON is YAML) followed by `extra`, and serializes it.
fn load<T: DeserializeOwned + Serialize>(
    sections: &Value,
    extra: &[(String, String)],
) -> Result<Value, String> {
    let mut env: Vec<(String, String)> = sections
        .as_object()
        .expect("sections are an object")
        .iter()
        .map(|(section, value)| {
            (
                format!("SENTINEL_{}", section.to_uppercase()),
                value.to_string(),
            )
        })
        .collect();
    env.extend_from_slice(extra);
    let config: T = sentinel_config::load(None, env).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(config).expect("configurations serialize"))
}

/// The keys under `path` with their values.
fn leaves(value: &Value, path: &str, out: &mut BTreeMap<String, Value>) {
    let join = |key: &str| match path {
        "" => key.to_owned(),
        _ => format!("{path}.{key}"),
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                leaves(value, &join(key), out);
            }
        }
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            leaves(&items[0], &format!("{path}[]"), out);
        }
        _ => {
            out.insert(path.to_owned(), value.clone());
        }
    }
}

/// The value at a key path (`list[]` is the list's first element).
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |value, segment| match segment.strip_suffix("[]") {
            Some(list) => value.get(list)?.get(0),
            None => value.get(segment),
        })
}

/// Removes the key at `path` from `value`.
fn remove(value: &mut Value, path: &str) {
    let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut at = value;
    for segment in parent.split('.').filter(|s| !s.is_empty()) {
        at = match segment.strip_suffix("[]") {
            Some(list) => &mut at[list][0],
            None => &mut at[segment],
        };
    }
    at.as_object_mut().expect("a section").remove(key);
}

/// A value as the reference writes it in a default's code span.
fn render(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", render(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        other => other.to_string(),
    }
}

/// Whether a value has the type the reference names.
fn has_type(ty: &str, value: &Value) -> Result<bool, String> {
    let (base, optional) = match ty.strip_suffix(" or none") {
        Some(base) => (base, true),
        None => (ty, false),
    };
    if value.is_null() {
        return Ok(optional);
    }
    Ok(match base {
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_f64(),
        "boolean" => value.is_boolean(),
        "string" | "address" | "path" | "URL" => value.is_string(),
        "list of strings" => value
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_string)),
        "list of sections" => value
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_object)),
        "map of strings" => value
            .as_object()
            .is_some_and(|map| map.values().all(Value::is_string)),
        "section" => value.is_object(),
        _ => return Err(format!("unknown type `{ty}`")),
    })
}

/// The environment variable of a key outside lists.
fn variable(key: &str) -> String {
    format!("SENTINEL_{}", key.to_uppercase().replace('.', "__"))
}

/// Every disagreement between the reference rows of `program` and configuration type `T`,
/// given the sections holding only its required keys (`minimal`) and the sections that
/// also bring in every optional section and one element of every list of sections (`full`;
/// its keys are the required ones).
fn problems<T: DeserializeOwned + Serialize>(
    program: Part,
    minimal: &Value,
    full: &Value,
) -> Vec<String> {
    let rows = reference(program);
    let minimal_config = load::<T>(minimal, &[]).expect("the minimal configuration loads");
    let full_config = load::<T>(full, &[]).expect("the full configuration loads");
    let mut keys = BTreeMap::new();
    leaves(&full_config, "", &mut keys);
    let full_keys: BTreeSet<String> = keys.keys().cloned().collect();
    leaves(&minimal_config, "", &mut keys);
    // Defaults come from the minimal configuration, inside optional sections and lists
    // from the full one.
    let mut defaults = BTreeMap::new();
    leaves(&minimal_config, "", &mut defaults);
    let mut required = BTreeMap::new();
    leaves(full, "", &mut required);
    let required: BTreeSet<String> = required
        .into_iter()
        .filter(|(_, value)| value != &json!({}))
        .map(|(key, _)| key)
        .collect();

    let mut problems = Vec::new();
    for key in keys.keys().filter(|key| !rows.contains_key(*key)) {
        problems.push(format!("`{key}` is accepted but not in the reference"));
    }
    for (key, row) in &rows {
        let line = row.line;
        if !keys.contains_key(key) {
            problems.push(format!("line {line}: `{key}` is not a configuration key"));
            continue;
        }
        let typed = if full_keys.contains(key) {
            at(&full_config, key)
        } else {
            at(&minimal_config, key)
        }
        .filter(|value| !value.is_null())
        .or_else(|| at(&minimal_config, key))
        .unwrap_or(&Value::Null);
        match has_type(&row.ty, typed) {
            Ok(true) => {}
            Ok(false) => problems.push(format!(
                "line {line}: `{key}` is {typed}, not of type `{}`",
                row.ty
            )),
            Err(problem) => problems.push(format!("line {line}: `{key}`: {problem}")),
        }
        let in_list = key.contains("[]");
        let expected_env = variable(key);
        match code_span(row.env.split(',').next().unwrap_or_default()) {
            _ if in_list && row.env == "—" => {}
            _ if in_list => problems.push(format!(
                "line {line}: `{key}` is set with its list; its variable cell is `—`"
            )),
            Some(env) if env == expected_env => {}
            _ => problems.push(format!(
                "line {line}: the variable of `{key}` is `{expected_env}`, first in its cell"
            )),
        }
        let default = defaults
            .get(key)
            .or_else(|| at(&full_config, key))
            .unwrap_or(&Value::Null);
        if required.contains(key) {
            if row.default != "required" {
                problems.push(format!("line {line}: `{key}` is required"));
            }
        } else if row.default.starts_with("none") {
            if !default.is_null() {
                problems.push(format!(
                    "line {line}: `{key}` defaults to `{}`, not none",
                    render(default)
                ));
            }
        } else if let Some(documented) = code_span(&row.default) {
            if documented != render(default) {
                problems.push(format!(
                    "line {line}: `{key}` defaults to `{}`, not `{documented}`",
                    render(default)
                ));
            } else if !in_list {
                // The documented default, given in the key's variable, loads as the default.
                let set = [(expected_env.clone(), documented.to_owned())];
                match load::<T>(full, &set) {
                    Ok(config) if at(&config, key) == Some(default) => {}
                    Ok(config) => problems.push(format!(
                        "line {line}: {expected_env}={documented} gives {:?}",
                        at(&config, key)
                    )),
                    Err(e) => problems.push(format!(
                        "line {line}: {expected_env}={documented} does not load: {e}"
                    )),
                }
            }
        } else {
            problems.push(format!(
                "line {line}: the default of `{key}` is `required`, `none…` or one code span"
            ));
        }
    }
    // The keys the full configuration sets are truly required: without any one of them
    // the configuration does not load.
    for key in &required {
        let mut without = full.clone();
        remove(&mut without, key);
        if load::<T>(&without, &[]).is_ok() {
            problems.push(format!("`{key}` loads without a value: it is not required"));
        }
    }
    problems
}

fn assert_no_problems(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "docs/configuration.md disagrees with the configuration types:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_node_reference_lists_exactly_the_keys_a_node_accepts() {
    let minimal = json!({"node": {"id": 0, "data_dir": "/var/lib/sentinel"}});
    let full = json!({
        "node": {"id": 0, "data_dir": "/var/lib/sentinel"},
        "ingest": {"redaction": {"extra_patterns": [{"name": "employee_id", "regex": "EMP-[0-9]{6}"}]}},
        "alerting": {
            "rabbitmq": {"url": "amqp://rabbitmq:5672/%2f"},
            "webhooks": [{"name": "oncall", "url": "https://hooks.example.com/sentinel"}],
        },
        "export": {},
        "security": {"tls": {"cert_file": "/etc/sentinel/tls/tls.crt", "key_file": "/etc/sentinel/tls/tls.key", "ca_file": "/etc/sentinel/tls/ca.crt"}},
    });
    assert_no_problems(problems::<NodeConfig>(Part::Node, &minimal, &full));
}

#[test]
fn the_router_reference_lists_exactly_the_keys_a_router_accepts() {
    let minimal = json!({"router": {"seeds": ["sentinel-0.sentinel:7400"]}});
    let full = json!({
        "router": {"seeds": ["sentinel-0.sentinel:7400"]},
        "ingest": {"redaction": {"extra_patterns": [{"name": "employee_id", "regex": "EMP-[0-9]{6}"}]}},
        "security": {"tls": {"cert_file": "/etc/sentinel/tls/tls.crt", "key_file": "/etc/sentinel/tls/tls.key", "ca_file": "/etc/sentinel/tls/ca.crt"}},
        "http": {"tls": {"cert_file": "/etc/sentinel/public/tls.crt", "key_file": "/etc/sentinel/public/tls.key"}},
        "grpc": {"tls": {"cert_file": "/etc/sentinel/public/tls.crt", "key_file": "/etc/sentinel/public/tls.key"}},
    });
    assert_no_problems(problems::<RouterConfig>(Part::Router, &minimal, &full));
}

/// A router configuration with one key the reference lacks and without most it lists.
#[derive(Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WithAColour {
    router: sentinel_router::config::RouterSection,
    #[serde(default)]
    colour: String,
}

#[test]
fn keys_missing_from_either_side_are_found() {
    let mut keys = BTreeMap::new();
    leaves(
        &json!({"a": {"b": 1, "c": [], "d": [{"e": null}], "f": {}}}),
        "",
        &mut keys,
    );
    let keys: Vec<&str> = keys.keys().map(String::as_str).collect();
    assert_eq!(keys, ["a.b", "a.c", "a.d[].e", "a.f"]);
    let sections = json!({"router": {"seeds": ["a:1"]}});
    let problems = problems::<WithAColour>(Part::Router, &sections, &sections);
    for expected in [
        "`colour` is accepted but not in the reference",
        "`http.listen` is not a configuration key",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{expected}: {problems:?}"
        );
    }
}
