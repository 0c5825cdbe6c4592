//! Loading a NAB directory: data files, label windows and cost profiles.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};

use chrono::NaiveDateTime;
use serde::Deserialize;

use super::NabError;

/// Timestamp format of data files and labels (`YYYY-MM-DD HH:MM:SS[.ffffff]`).
const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.f";

/// One row of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The timestamp exactly as written in the file.
    pub timestamp: String,
    /// The timestamp in microseconds since the Unix epoch (naive times read as UTC).
    pub micros: i64,
    /// The measured value.
    pub value: f64,
}

impl Record {
    /// The timestamp in whole seconds since the Unix epoch, as detectors see it.
    pub fn seconds(&self) -> i64 {
        self.micros.div_euclid(1_000_000)
    }
}

/// A labelled anomaly window as inclusive row indices into its data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelWindow {
    /// Index of the window's first row.
    pub start: usize,
    /// Index of the window's last row (inclusive).
    pub end: usize,
}

impl LabelWindow {
    /// Number of rows in the window.
    pub fn width(&self) -> usize {
        self.end - self.start + 1
    }
}

/// One data file of the corpus with its label windows.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    /// Path relative to the data directory, `<category>/<file>.csv`, as in the labels.
    pub key: String,
    /// The rows, in file order (NAB files repeat a few timestamps, and one steps back an
    /// hour at a daylight-saving change; NAB accepts both, and so does the loader).
    pub records: Vec<Record>,
    /// The anomaly windows, sorted and disjoint.
    pub windows: Vec<LabelWindow>,
}

impl DataFile {
    /// Builds a file from rows and windows, checking that the windows fit the rows.
    pub fn new(
        key: impl Into<String>,
        records: Vec<Record>,
        windows: Vec<LabelWindow>,
    ) -> Result<Self, NabError> {
        let key = key.into();
        let mut previous_end: Option<usize> = None;
        for w in &windows {
            if w.start > w.end || w.end >= records.len() {
                return Err(NabError::Labels {
                    file: key,
                    reason: format!(
                        "window rows {}..={} do not fit a file of {} rows",
                        w.start,
                        w.end,
                        records.len()
                    ),
                });
            }
            if previous_end.is_some_and(|end| w.start <= end) {
                return Err(NabError::Labels {
                    file: key,
                    reason: "windows overlap or are not in time order".to_string(),
                });
            }
            previous_end = Some(w.end);
        }
        Ok(DataFile {
            key,
            records,
            windows,
        })
    }

    /// The category directory (`realTweets`, …).
    pub fn category(&self) -> &str {
        self.key.rsplit_once('/').map_or("", |(dir, _)| dir)
    }

    /// The file name without directory (`Twitter_volume_AAPL.csv`).
    pub fn file_name(&self) -> &str {
        self.key
            .rsplit_once('/')
            .map_or(&self.key, |(_, name)| name)
    }

    /// Per-row label: `true` inside an anomaly window.
    pub fn labels(&self) -> Vec<bool> {
        let mut labels = vec![false; self.records.len()];
        for w in &self.windows {
            labels[w.start..=w.end].fill(true);
        }
        labels
    }
}

/// The labelled data files of a NAB directory, sorted by key.
#[derive(Debug, Clone, PartialEq)]
pub struct Corpus {
    /// The files, sorted by key.
    pub files: Vec<DataFile>,
}

impl Corpus {
    /// Loads `<root>/data/**` and `<root>/combined_windows.json`.
    pub fn load(root: &Path) -> Result<Self, NabError> {
        Self::load_from(&root.join("data"), &root.join("combined_windows.json"))
    }

    /// Loads every file named in the labels file from the data directory.
    ///
    /// Data files without a label entry are not part of the corpus, as in NAB.
    pub fn load_from(data_dir: &Path, labels_path: &Path) -> Result<Self, NabError> {
        let text = read_text(labels_path)?;
        let labels: BTreeMap<String, Vec<[String; 2]>> =
            serde_json::from_str(&text).map_err(|source| NabError::Json {
                path: labels_path.to_path_buf(),
                source,
            })?;
        let mut files = Vec::with_capacity(labels.len());
        for (key, spans) in labels {
            let relative = checked_relative_path(&key)?;
            let records = read_records(&data_dir.join(relative))?;
            let windows = spans
                .iter()
                .map(|[start, end]| {
                    Ok(LabelWindow {
                        start: locate(&key, &records, start)?,
                        end: locate(&key, &records, end)?,
                    })
                })
                .collect::<Result<Vec<_>, NabError>>()?;
            files.push(DataFile::new(key, records, windows)?);
        }
        Ok(Corpus { files })
    }

    /// Total number of label windows.
    pub fn window_count(&self) -> usize {
        self.files.iter().map(|f| f.windows.len()).sum()
    }

    /// Total number of rows.
    pub fn row_count(&self) -> usize {
        self.files.iter().map(|f| f.records.len()).sum()
    }
}

/// A label key must be a plain relative path `<category>/<file>.csv`.
fn checked_relative_path(key: &str) -> Result<&Path, NabError> {
    let path = Path::new(key);
    let plain = path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || path.components().count() != 2 || !key.ends_with(".csv") {
        return Err(NabError::Labels {
            file: key.to_string(),
            reason: "a label key must be `<category>/<file>.csv`".to_string(),
        });
    }
    Ok(path)
}

/// Row index of a label timestamp, which must match a row exactly.
fn locate(key: &str, records: &[Record], timestamp: &str) -> Result<usize, NabError> {
    let bad = |reason: String| NabError::Labels {
        file: key.to_string(),
        reason,
    };
    let micros = parse_timestamp(timestamp)
        .ok_or_else(|| bad(format!("`{timestamp}` is not a timestamp")))?;
    // The first row with this timestamp in file order, as NAB's `timestamps.index(t)`
    // (a linear search: the timestamps of a file may step back).
    records
        .iter()
        .position(|r| r.micros == micros)
        .ok_or_else(|| {
            bad(format!(
                "window limit {timestamp} is not a row of the data file"
            ))
        })
}

/// Microseconds since the epoch of a `YYYY-MM-DD HH:MM:SS[.f]` timestamp.
fn parse_timestamp(text: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text.trim(), TIMESTAMP_FORMAT)
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// Reads a whole file as UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String, NabError> {
    fs::read_to_string(path).map_err(|source| NabError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a `timestamp,value` CSV, in file order.
pub fn read_records(path: &Path) -> Result<Vec<Record>, NabError> {
    let text = read_text(path)?;
    let bad = |line: usize, reason: String| NabError::Csv {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == "timestamp,value" => {}
        Some((_, header)) => {
            return Err(bad(
                1,
                format!("expected header `timestamp,value`, found `{header}`"),
            ))
        }
        None => return Err(bad(1, "empty file".to_string())),
    }
    let mut records: Vec<Record> = Vec::new();
    for (index, line) in lines {
        let line_no = index + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((timestamp, value)) = line.split_once(',') else {
            return Err(bad(
                line_no,
                "expected two comma-separated fields".to_string(),
            ));
        };
        let micros = parse_timestamp(timestamp)
            .ok_or_else(|| bad(line_no, format!("`{timestamp}` is not a timestamp")))?;
        let value: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| bad(line_no, format!("`{value}` is not a finite number")))?;
        records.push(Record {
            timestamp: timestamp.trim().to_string(),
            micros,
            value,
        });
    }
    Ok(records)
}

/// NAB's cost matrix: the weight of a true positive, false positive and false negative.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct CostMatrix {
    /// `A_TP`: reward of a detection at the left edge of a window.
    #[serde(rename = "tpWeight")]
    pub tp: f64,
    /// `A_FP`: cost of a false positive far from any window.
    #[serde(rename = "fpWeight")]
    pub fp: f64,
    /// `A_FN`: cost of a missed window.
    #[serde(rename = "fnWeight")]
    pub fn_: f64,
}

/// A named application profile from `profiles.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Profile name (`standard`, `reward_low_FP_rate`, `reward_low_FN_rate`).
    pub name: String,
    /// Its weights.
    pub cost: CostMatrix,
}

/// The shape of one entry in `profiles.json`.
#[derive(Deserialize)]
struct ProfileEntry {
    #[serde(rename = "CostMatrix")]
    cost_matrix: CostMatrix,
}

/// NAB's profiles in report order; profiles with other names follow alphabetically.
const PROFILE_ORDER: [&str; 3] = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"];

impl Profile {
    /// Loads all profiles from a `profiles.json`, standard first.
    pub fn load_all(path: &Path) -> Result<Vec<Profile>, NabError> {
        let text = read_text(path)?;
        let entries: BTreeMap<String, ProfileEntry> =
            serde_json::from_str(&text).map_err(|source| NabError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let mut profiles = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            let c = entry.cost_matrix;
            if ![c.tp, c.fp, c.fn_]
                .iter()
                .all(|w| w.is_finite() && *w >= 0.0)
            {
                return Err(NabError::Profile {
                    profile: name,
                    reason: "weights must be finite and non-negative".to_string(),
                });
            }
            profiles.push(Profile { name, cost: c });
        }
        let rank = |name: &str| {
            PROFILE_ORDER
                .iter()
                .position(|p| *p == name)
                .unwrap_or(PROFILE_ORDER.len())
        };
        profiles.sort_by(|a, b| rank(&a.name).cmp(&rank(&b.name)).then(a.name.cmp(&b.name)));
        Ok(profiles)
    }

    /// Loads `<root>/profiles.json`.
    pub fn load_default(root: &Path) -> Result<Vec<Profile>, NabError> {
        Self::load_all(&root.join("profiles.json"))
    }
}

/// Path of the results CSV NAB expects for `detector` and data file `key`.
pub fn results_path(out: &Path, detector: &str, key: &str) -> PathBuf {
    let (category, name) = key.rsplit_once('/').unwrap_or(("", key));
    out.join(detector)
        .join(category)
        .join(format!("{detector}_{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch NAB directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("nab-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(path.join("data/cat")).unwrap();
            Dir(path)
        }

        fn write(&self, relative: &str, text: &str) -> &Self {
            fs::write(self.0.join(relative), text).unwrap();
            self
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const DATA: &str = "timestamp,value\n\
        2020-01-01 00:00:00,1\n\
        2020-01-01 00:05:00,2.5\n\
        2020-01-01 00:05:00,3\n\
        2020-01-01 00:10:00,-4\n\
        2020-01-01 00:15:00,5\n";

    fn labels(windows: &str) -> String {
        format!("{{\"cat/a.csv\": {windows}}}")
    }

    #[test]
    fn loads_rows_and_maps_windows_to_first_matching_rows() {
        let dir = Dir::new("good");
        dir.write("data/cat/a.csv", DATA).write(
            "combined_windows.json",
            &labels(r#"[["2020-01-01 00:05:00.000000", "2020-01-01 00:10:00.000000"]]"#),
        );
        let corpus = Corpus::load(&dir.0).unwrap();
        let file = &corpus.files[0];
        assert_eq!((file.category(), file.file_name()), ("cat", "a.csv"));
        assert_eq!(file.records.len(), 5);
        assert_eq!(file.records[3].value, -4.0);
        assert_eq!(file.records[1].seconds(), 1_577_837_100);
        // The duplicated 00:05 row: the window starts at its first occurrence.
        assert_eq!(file.windows, vec![LabelWindow { start: 1, end: 3 }]);
        assert_eq!(file.labels(), vec![false, true, true, true, false]);
        assert_eq!((corpus.window_count(), corpus.row_count()), (1, 5));
    }

    fn load_error(data: &str, windows: &str) -> NabError {
        let dir = Dir::new(&format!("bad-{:x}", fnv(data, windows)));
        dir.write("data/cat/a.csv", data)
            .write("combined_windows.json", &labels(windows));
        Corpus::load(&dir.0).unwrap_err()
    }

    fn fnv(a: &str, b: &str) -> u64 {
        a.bytes()
            .chain(b.bytes())
            .fold(0xcbf2_9ce4_8422_2325, |h, x| {
                (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
            })
    }

    #[test]
    fn timestamps_stepping_back_load_and_windows_map_to_first_occurrences() {
        // A daylight-saving artefact: 01:00–01:59 twice.
        let data = "timestamp,value\n\
            2020-11-01 00:30:00,1\n\
            2020-11-01 01:00:00,2\n\
            2020-11-01 01:30:00,3\n\
            2020-11-01 01:00:00,4\n\
            2020-11-01 01:30:00,5\n\
            2020-11-01 02:00:00,6\n";
        let dir = Dir::new("dst");
        dir.write("data/cat/a.csv", data).write(
            "combined_windows.json",
            &labels(r#"[["2020-11-01 01:30:00.000000", "2020-11-01 02:00:00.000000"]]"#),
        );
        let corpus = Corpus::load(&dir.0).unwrap();
        let file = &corpus.files[0];
        assert_eq!(file.records.len(), 6);
        assert_eq!(file.records[3].value, 4.0);
        assert_eq!(file.windows, vec![LabelWindow { start: 2, end: 5 }]);
    }

    #[test]
    fn bad_csv_files_are_typed_errors_with_line_numbers() {
        let cases = [
            ("time,value\n2020-01-01 00:00:00,1\n", 1),
            ("timestamp,value\n2020-01-01 00:00:00,x\n", 2),
            ("timestamp,value\n2020-01-01 00:00:00,inf\n", 2),
            ("timestamp,value\n2020-01-01 00:00:00,1\nyesterday,2\n", 3),
            ("timestamp,value\n2020-01-01 00:00:00\n", 2),
            ("", 1),
        ];
        for (data, want_line) in cases {
            match load_error(data, "[]") {
                NabError::Csv { line, .. } => assert_eq!(line, want_line, "{data:?}"),
                other => panic!("{data:?}: {other}"),
            }
        }
    }

    #[test]
    fn bad_labels_are_typed_errors() {
        for windows in [
            r#"[["2020-01-01 00:01:00", "2020-01-01 00:10:00"]]"#,
            r#"[["2020-01-01 00:10:00", "2020-01-01 00:05:00"]]"#,
            r#"[["2020-01-01 00:00:00", "2020-01-01 00:10:00"], ["2020-01-01 00:10:00", "2020-01-01 00:15:00"]]"#,
            r#"[["not a time", "2020-01-01 00:10:00"]]"#,
        ] {
            assert!(
                matches!(load_error(DATA, windows), NabError::Labels { .. }),
                "{windows}"
            );
        }
        assert!(matches!(
            load_error(DATA, r#"[["2020-01-01 00:00:00"]]"#),
            NabError::Json { .. }
        ));
    }

    #[test]
    fn missing_files_and_unsafe_keys_are_errors() {
        let dir = Dir::new("missing");
        assert!(matches!(Corpus::load(&dir.0), Err(NabError::Io { .. })));
        dir.write("combined_windows.json", r#"{"cat/none.csv": []}"#);
        assert!(matches!(Corpus::load(&dir.0), Err(NabError::Io { .. })));
        dir.write("combined_windows.json", r#"{"../a.csv": []}"#);
        assert!(matches!(Corpus::load(&dir.0), Err(NabError::Labels { .. })));
    }

    #[test]
    fn profiles_load_in_report_order_and_are_checked() {
        let dir = Dir::new("profiles");
        let entry = |tp: f64, fp: f64, fn_: f64| {
            format!(
                r#"{{"CostMatrix": {{"tpWeight": {tp}, "fpWeight": {fp}, "fnWeight": {fn_}, "tnWeight": 1.0}}}}"#
            )
        };
        dir.write(
            "profiles.json",
            &format!(
                r#"{{"reward_low_FN_rate": {}, "standard": {}, "reward_low_FP_rate": {}}}"#,
                entry(1.0, 0.11, 2.0),
                entry(1.0, 0.11, 1.0),
                entry(1.0, 0.22, 1.0)
            ),
        );
        let profiles = Profile::load_default(&dir.0).unwrap();
        let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["standard", "reward_low_FP_rate", "reward_low_FN_rate"]
        );
        assert_eq!(profiles[2].cost.fn_, 2.0);
        dir.write(
            "profiles.json",
            &format!(r#"{{"x": {}}}"#, entry(1.0, -0.1, 1.0)),
        );
        assert!(matches!(
            Profile::load_default(&dir.0),
            Err(NabError::Profile { .. })
        ));
        dir.write(
            "profiles.json",
            r#"{"x": {"CostMatrix": {"tpWeight": 1.0}}}"#,
        );
        assert!(matches!(
            Profile::load_default(&dir.0),
            Err(NabError::Json { .. })
        ));
    }

    #[test]
    fn results_path_follows_nab_layout() {
        assert_eq!(
            results_path(Path::new("out"), "det", "realTweets/T.csv"),
            Path::new("out/det/realTweets/det_T.csv")
        );
    }
}
