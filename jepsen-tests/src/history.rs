//! The run's history: every operation's invocation and completion, and every fault, as
//! JSON lines with the seconds since the run started.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};

/// An append-only JSON-lines history.
pub struct History {
    start: Instant,
    out: Mutex<BufWriter<File>>,
}

impl History {
    pub fn create(path: &Path) -> Result<History> {
        Ok(History {
            start: Instant::now(),
            out: Mutex::new(BufWriter::new(File::create(path)?)),
        })
    }

    /// Seconds since the run started.
    pub fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Appends `op` (an object) with its time `t` and the `process` that did it.
    pub fn record(&self, process: &str, op: Value) {
        let mut line = json!({"t": (self.now() * 1000.0).round() / 1000.0, "process": process});
        if let (Some(line), Value::Object(op)) = (line.as_object_mut(), op) {
            line.extend(op);
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A history line lost to a full disk would make the check wrong: fail loudly.
        writeln!(out, "{line}").expect("writing the history");
    }

    pub fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.flush().expect("writing the history");
    }
}
