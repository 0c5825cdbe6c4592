//! What the query commands print for people: aligned tables of the router's answers.

use std::fmt;

use sentinel_core::validate::is_unprintable;
use sentinel_proto::json::EXACT_INTEGERS;
use serde_json::Value;

/// Columns of `anomalies`.
const ANOMALY_COLUMNS: [&str; 8] = [
    "TIME", "SEVERITY", "TYPE", "SERVICE", "MODEL", "METRIC", "VALUE", "BASELINE",
];
/// Widths of the `anomalies --follow` columns, fixed as rows come one at a time (a longer
/// cell pushes the rest of its row right).
const FOLLOW_WIDTHS: [usize; 8] = [24, 8, 22, 14, 14, 17, 10, 10];

/// Columns of text aligned under their headers.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and no rows.
    fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The width of each column: its widest cell or header.
    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        widths
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        f.write_str(&line(&self.headers, &widths))?;
        for row in &self.rows {
            write!(f, "\n{}", line(row, &widths))?;
        }
        Ok(())
    }
}

/// One row: each cell padded to its column's width, two spaces apart, no trailing spaces.
fn line(cells: &[impl AsRef<str>], widths: &[usize]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(widths)
        .map(|(cell, width)| format!("{:<width$}", cell.as_ref()))
        .collect();
    padded.join("  ").trim_end().to_owned()
}

/// A number for people: whole numbers without decimals, others with at most three.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() <= EXACT_INTEGERS {
        return format!("{n:.0}");
    }
    let text = format!("{n:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A JSON value as a table cell: strings [`escaped`], numbers for people, `-` for null.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => escaped(s),
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), number),
        other => escaped(&other.to_string()),
    }
}

/// A time in ms since the Unix epoch as an RFC 3339 cell (`-` when absent).
fn time_cell(ms: &Value) -> String {
    ms.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_owned(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
}

/// A share (0 to 1) as a percentage cell.
fn percent_cell(share: &Value) -> String {
    share.as_f64().map_or_else(
        || "-".to_owned(),
        |share| format!("{}%", number(share * 100.0)),
    )
}

/// Who did something, when and why (`-` when nobody did).
fn actor_cell(actor: &Value) -> String {
    if actor.is_null() {
        return "-".to_owned();
    }
    let mut text = format!("{} at {}", cell(&actor["by"]), time_cell(&actor["at_ms"]));
    if let Some(comment) = actor["comment"].as_str().filter(|c| !c.is_empty()) {
        text += &format!(" ({})", escaped(comment));
    }
    text
}

/// Incidents, one row each.
pub fn incidents_table(incidents: &[Value]) -> Table {
    let mut table = Table::new(&[
        "OPENED", "STATUS", "SEVERITY", "TYPE", "SERVICE", "MODEL", "AFFECTED", "CALLS", "ACK",
        "ID",
    ]);
    for incident in incidents {
        let acknowledged = match &incident["acknowledged"] {
            Value::Null => "-".to_owned(),
            actor => cell(&actor["by"]),
        };
        table.push(vec![
            time_cell(&incident["opened_at_ms"]),
            cell(&incident["status"]),
            cell(&incident["severity"]),
            cell(&incident["anomaly_type"]),
            cell(&incident["service_name"]),
            cell(&incident["model"]),
            percent_cell(&incident["affected_share"]),
            cell(&incident["calls"]),
            acknowledged,
            cell(&incident["incident_id"]),
        ]);
    }
    table
}

/// One incident: its fields one per line, then its signals.
pub fn incident_details(incident: &Value) -> String {
    let fields = [
        ("id", cell(&incident["incident_id"])),
        ("status", cell(&incident["status"])),
        ("severity", cell(&incident["severity"])),
        ("type", cell(&incident["anomaly_type"])),
        ("service", cell(&incident["service_name"])),
        ("model", cell(&incident["model"])),
        ("opened", time_cell(&incident["opened_at_ms"])),
        ("updated", time_cell(&incident["updated_at_ms"])),
        ("resolved", time_cell(&incident["resolved_at_ms"])),
        ("resolution", cell(&incident["resolution"])),
        (
            "calls",
            format!(
                "{} ({} affected; {} of recent calls)",
                cell(&incident["calls"]),
                cell(&incident["affected_calls"]),
                percent_cell(&incident["affected_share"])
            ),
        ),
        (
            "excess cost",
            format!("{} USD", cell(&incident["excess_cost_usd"])),
        ),
        ("anomalies", cell(&incident["anomalies"])),
        ("acknowledged", actor_cell(&incident["acknowledged"])),
        ("resolved by", actor_cell(&incident["resolved_by"])),
        ("silenced by", cell(&incident["silenced_by"])),
    ];
    let mut text: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{:<14}{value}", format!("{name}:")))
        .collect();
    let mut signals = Table::new(&[
        "TYPE", "METRIC", "METHOD", "FIRST", "LAST", "VALUE", "BASELINE", "EVIDENCE",
    ]);
    for signal in incident["signals"].as_array().into_iter().flatten() {
        signals.push(vec![
            cell(&signal["anomaly_type"]),
            cell(&signal["metric"]),
            cell(&signal["method"]),
            time_cell(&signal["first_at_ms"]),
            time_cell(&signal["last_at_ms"]),
            cell(&signal["value"]),
            cell(&signal["baseline"]),
            cell(&signal["evidence"]),
        ]);
    }
    if !signals.rows.is_empty() {
        text.push(String::new());
        text.push(signals.to_string());
    }
    text.join("\n")
}

/// Silences, one row each; `now_ms` decides which are active.
pub fn silences_table(silences: &[Value], now_ms: i64) -> Table {
    let mut table = Table::new(&[
        "ID", "SERVICE", "MODEL", "TYPE", "STARTS", "ENDS", "ACTIVE", "BY", "COMMENT",
    ]);
    let any = |value: &Value| match value {
        Value::Null => "*".to_owned(),
        value => cell(value),
    };
    for silence in silences {
        let (starts, ends) = (&silence["starts_at_ms"], &silence["ends_at_ms"]);
        let active =
            (starts.as_i64().unwrap_or(i64::MAX)..ends.as_i64().unwrap_or(0)).contains(&now_ms);
        table.push(vec![
            cell(&silence["silence_id"]),
            any(&silence["service_name"]),
            any(&silence["model"]),
            any(&silence["anomaly_type"]),
            time_cell(starts),
            time_cell(ends),
            if active { "yes" } else { "no" }.to_owned(),
            cell(&silence["created"]["by"]),
            cell(&silence["created"]["comment"]),
        ]);
    }
    table
}

/// `text` with every character a terminal would act upon rather than show (control and
/// bidirectional formatting characters) written as `\u{…}`, so an answer cannot move the
/// cursor, recolour or reorder what is printed.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unprintable(c) {
            out += &format!("\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The cells of one anomaly, in [`ANOMALY_COLUMNS`] order.
fn anomaly_row(alert: &Value) -> Vec<String> {
    [
        &alert["timestamp"],
        &alert["severity"],
        &alert["anomaly_type"],
        &alert["service_name"],
        &alert["model"],
        &alert["details"]["metric"],
        &alert["details"]["value"],
        &alert["details"]["baseline"],
    ]
    .into_iter()
    .map(cell)
    .collect()
}

/// Anomalies, one row each.
pub fn anomalies_table(alerts: &[Value]) -> Table {
    let mut table = Table::new(&ANOMALY_COLUMNS);
    for alert in alerts {
        table.push(anomaly_row(alert));
    }
    table
}

/// The header of `anomalies --follow`.
pub fn follow_header() -> String {
    line(&ANOMALY_COLUMNS, &FOLLOW_WIDTHS)
}

/// One anomaly as a row under [`follow_header`].
pub fn follow_line(alert: &Value) -> String {
    line(&anomaly_row(alert), &FOLLOW_WIDTHS)
}

/// Baselines: one row per key (events, error rate, request rate), then one per metric.
pub fn baselines_tables(baselines: &[Value]) -> String {
    let mut keys = Table::new(&["SERVICE", "MODEL", "EVENTS", "ERROR RATE", "REQ/BUCKET"]);
    let mut metrics = Table::new(&[
        "SERVICE", "MODEL", "METRIC", "SAMPLES", "MEAN", "STD DEV", "MEDIAN", "P95", "P99",
    ]);
    for baseline in baselines {
        let (service, model) = (cell(&baseline["service_name"]), cell(&baseline["model"]));
        let error_rate = baseline["error_rate"].as_f64().map_or_else(
            || "-".to_owned(),
            |rate| format!("{}%", number(rate * 100.0)),
        );
        keys.push(vec![
            service.clone(),
            model.clone(),
            cell(&baseline["events"]),
            error_rate,
            cell(&baseline["requests_per_bucket"]),
        ]);
        for metric in baseline["metrics"].as_array().into_iter().flatten() {
            let mut row = vec![service.clone(), model.clone()];
            row.extend(
                ["metric", "count", "mean", "std_dev", "median", "p95", "p99"]
                    .iter()
                    .map(|field| cell(&metric[field])),
            );
            metrics.push(row);
        }
    }
    format!("{keys}\n\n{metrics}")
}

/// Telemetry records, one row each.
pub fn telemetry_table(records: &[Value]) -> Table {
    let mut table = Table::new(&[
        "TIME",
        "SERVICE",
        "MODEL",
        "EVENT ID",
        "LATENCY MS",
        "PROMPT TOK",
        "COMPL TOK",
        "COST USD",
        "ERRORS",
    ]);
    for record in records {
        let event = &record["event"];
        let time = time_cell(&event["timestamp_ms"]);
        let errors = event["errors"].as_array().map_or(0, Vec::len).to_string();
        let mut row = vec![time];
        row.extend(
            [
                "service",
                "model",
                "event_id",
                "latency_ms",
                "prompt_tokens",
                "completion_tokens",
                "cost_usd",
            ]
            .iter()
            .map(|field| cell(&event[field])),
        );
        row.push(errors);
        table.push(row);
    }
    table
}

/// The cluster: a summary line, the nodes, then the shards with their replicas' lag.
pub fn cluster_tables(status: &Value) -> String {
    let shards = status["shards"].as_array().map_or(&[][..], Vec::as_slice);
    let leader = match &status["metadata_leader"] {
        Value::Null => "none".to_owned(),
        id => format!("node {}", cell(id)),
    };
    let summary = format!(
        "{} shards, replication factor {}, metadata leader: {leader}",
        cell(&status["shard_count"]),
        cell(&status["replication_factor"]),
    );
    let mut nodes = Table::new(&["NODE", "ORDINAL", "ADDRESS", "STATE", "LEADS", "REPLICAS"]);
    for node in status["nodes"].as_array().into_iter().flatten() {
        let id = &node["id"];
        let leads = shards.iter().filter(|s| &s["leader"] == id).count();
        let holds = shards
            .iter()
            .filter(|s| {
                s["replicas"]
                    .as_array()
                    .is_some_and(|replicas| replicas.iter().any(|r| &r["node"] == id))
            })
            .count();
        nodes.push(vec![
            cell(id),
            cell(&node["ordinal"]),
            cell(&node["address"]),
            cell(&node["state"]),
            leads.to_string(),
            holds.to_string(),
        ]);
    }
    let mut table = Table::new(&["SHARD", "LEADER", "TERM", "REPLICAS (LAG IN ENTRIES)"]);
    for shard in shards {
        let replicas: Vec<String> = shard["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|replica| {
                let learner = if replica["role"] == "learner" {
                    "learner, "
                } else {
                    ""
                };
                format!(
                    "{} ({learner}lag {})",
                    cell(&replica["node"]),
                    cell(&replica["lag"])
                )
            })
            .collect();
        table.push(vec![
            cell(&shard["shard"]),
            cell(&shard["leader"]),
            cell(&shard["term"]),
            replicas.join(", "),
        ]);
    }
    format!("{summary}\n\n{nodes}\n\n{table}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_under_their_headers() {
        let alerts = [
            json!({"timestamp": "2026-03-01T12:00:00.000Z", "severity": "high",
                   "anomaly_type": "latency_spike", "service_name": "checkout", "model": "gpt-4o",
                   "details": {"metric": "latency_ms", "value": 40000.0, "baseline": 912.3456}}),
            json!({"timestamp": "2026-03-01T12:00:01.000Z", "severity": "low",
                   "anomaly_type": "error_burst", "service_name": "search", "model": "m",
                   "details": {"metric": "error_rate", "value": 0.5, "baseline": null}}),
        ];
        let text = anomalies_table(&alerts).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let column = |name: &str| lines[0].find(name).unwrap();
        assert_eq!(lines[1].find("checkout"), Some(column("SERVICE")));
        assert_eq!(lines[2].find("search"), Some(column("SERVICE")));
        assert_eq!(lines[1].find("40000"), Some(column("VALUE")));
        assert!(lines[1].ends_with("912.346"), "{}", lines[1]);
        assert!(lines[2].ends_with("0.5    -"), "{}", lines[2]);
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        let followed = follow_line(&alerts[0]);
        assert_eq!(followed.find("checkout"), follow_header().find("SERVICE"));
    }

    #[test]
    fn control_and_bidirectional_characters_are_printed_escaped() {
        let records = [json!({"event": {
            "timestamp_ms": 0, "service": "chat\u{1b}]0;owned\u{7}", "model": "gpt\u{202e}4o",
            "event_id": "e\u{0}\u{9b}", "latency_ms": 5,
        }})];
        let text = telemetry_table(&records).to_string();
        assert!(text.contains("chat\\u{1b}]0;owned\\u{7}"), "{text}");
        assert!(text.contains("gpt\\u{202e}4o"), "{text}");
        assert!(text.contains("e\\u{0}\\u{9b}"), "{text}");
        let unescaped = |text: &str| text.chars().any(|c| is_unprintable(c) && c != '\n');
        assert!(!unescaped(&text), "{text:?}");
        let baselines = baselines_tables(&[json!({"service_name": "a\u{2067}b", "model": "m",
            "metrics": [{"metric": "latency_ms\u{1b}[31m"}]})]);
        assert!(!unescaped(&baselines), "{baselines:?}");
        assert_eq!(escaped("plain café"), "plain café");
    }

    #[test]
    fn the_cluster_shows_every_node_and_shard() {
        let status = json!({
            "shard_count": 2, "replication_factor": 2, "metadata_leader": 0,
            "nodes": [{"id": 0, "ordinal": 0, "address": "10.0.0.1:7400", "state": "active"},
                      {"id": 1001, "ordinal": 1, "address": "10.0.0.2:7400", "state": "draining"}],
            "shards": [
                {"shard": 0, "leader": 0, "term": 3, "desired": [0, 1001], "replicas": [
                    {"node": 0, "role": "voter", "applied_index": 9, "lag": 0},
                    {"node": 1001, "role": "learner", "applied_index": 4, "lag": 5}]},
                {"shard": 1, "leader": null, "term": 2, "desired": [1001, 0], "replicas": []},
            ],
        });
        let text = cluster_tables(&status);
        assert!(text.starts_with("2 shards, replication factor 2, metadata leader: node 0"));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        for row in [
            ["0", "0", "10.0.0.1:7400", "active", "1", "1"],
            ["1001", "1", "10.0.0.2:7400", "draining", "0", "1"],
        ] {
            assert!(rows.iter().any(|r| *r == row), "{row:?} not in\n{text}");
        }
        assert!(
            text.contains("0      0       3     0 (lag 0), 1001 (learner, lag 5)"),
            "{text}"
        );
        assert!(text.contains("\n1      -       2"), "{text}");
    }
}
