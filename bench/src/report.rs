//! The report: sections of tables and plots, written as `summary.md`, with
//! every raw sample in `data.json` beside it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::stats::{ms, ratio, Quantiles};

/// A Markdown table.
#[derive(Debug, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Ours against the reference measured in the same run: quantiles of
    /// each side and the ratio of the medians.
    pub fn versus_reference() -> Table {
        Table::new(&[
            "measurement",
            "ours p50",
            "ours p95",
            "ours p99",
            "reference p50",
            "reference p95",
            "reference p99",
            "ours / reference (p50)",
        ])
    }

    /// A row of a [`Table::versus_reference`] table (values in ms).
    pub fn compare(&mut self, label: &str, ours: &Quantiles, reference: &Quantiles) {
        let mut row = vec![label.to_string()];
        row.extend([ours.p50, ours.p95, ours.p99].map(ms));
        row.extend([reference.p50, reference.p95, reference.p99].map(ms));
        row.push(ratio(ours.p50, reference.p50));
        self.row(row);
    }

    fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut out = line(&self.header);
        out += &line(&vec!["---".to_string(); self.header.len()]);
        for row in &self.rows {
            out += &line(row);
        }
        out
    }
}

/// One benchmark's part of the report.
#[derive(Debug)]
pub struct Section {
    pub title: String,
    /// What was measured and how, in Markdown.
    pub method: String,
    pub tables: Vec<Table>,
    /// SVG files (relative to the report dir) with their captions.
    pub plots: Vec<(String, String)>,
    /// The raw samples, for `data.json`.
    pub data: Value,
}

impl Section {
    pub fn new(title: &str, method: &str) -> Section {
        Section {
            title: title.to_string(),
            method: method.to_string(),
            tables: Vec::new(),
            plots: Vec::new(),
            data: Value::Null,
        }
    }

    fn markdown(&self) -> String {
        let mut out = format!("## {}\n\n{}\n\n", self.title, self.method.trim());
        for table in &self.tables {
            out += &table.markdown();
            out += "\n";
        }
        for (file, caption) in &self.plots {
            let _ = writeln!(out, "![{caption}]({file})\n");
        }
        out
    }
}

/// Writes `summary.md` (a header, then each section) and `data.json`.
pub fn write(dir: &Path, header: &str, sections: &[Section]) -> Result<()> {
    let mut md = header.to_string();
    for s in sections {
        md += "\n";
        md += &s.markdown();
    }
    let summary = dir.join("summary.md");
    std::fs::write(&summary, md).with_context(|| format!("writing {}", summary.display()))?;
    let data: serde_json::Map<String, Value> = sections
        .iter()
        .map(|s| (s.title.clone(), s.data.clone()))
        .collect();
    let path = dir.join("data.json");
    std::fs::write(&path, serde_json::to_string_pretty(&data)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_markdown() {
        let mut t = Table::new(&["a", "b"]);
        t.row(vec!["1".into(), "2".into()]);
        assert_eq!(t.markdown(), "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}
