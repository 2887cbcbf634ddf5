//! Tables for people, JSON and YAML for programs; colour only on a terminal.

use serde::Serialize;
use std::io::IsTerminal;

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML; `false` for `Format::Table` (the caller draws it).
pub fn structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Format::Yaml => {
            print!("{}", serde_saphyr::to_string(value)?);
            Ok(true)
        }
    }
}

/// Colours used.
#[derive(Debug, Clone, Copy)]
pub enum Colour {
    /// Failures.
    Red,
    /// Warnings and stale states.
    Yellow,
    /// Success.
    Green,
    /// Headers.
    Bold,
}

fn colour_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal())
}

/// `text` in `colour` when standard output is a terminal.
pub fn paint(text: &str, colour: Colour) -> String {
    if !colour_on() {
        return text.to_string();
    }
    let code = match colour {
        Colour::Red => "31",
        Colour::Yellow => "33",
        Colour::Green => "32",
        Colour::Bold => "1",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A state word coloured by what it means.
pub fn state(word: &str) -> String {
    match word {
        "SYNCED" | "ok" | "forwarded" | "passthrough" | "allowed" => paint(word, Colour::Green),
        "STALE" | "warn" | "warning" => paint(word, Colour::Yellow),
        "NACKED" | "FAIL" | "error" | "denied" => paint(word, Colour::Red),
        _ => word.to_string(),
    }
}

/// Rows under a header, drawn with aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column names.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether it has rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text; the last column is not padded.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths = vec![0; n];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(n) {
                widths[i] = widths[i].max(visible_len(cell));
            }
        }
        let mut out = String::new();
        for (r, row) in std::iter::once(&self.header).chain(&self.rows).enumerate() {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let cell = if r == 0 {
                    paint(cell, Colour::Bold)
                } else {
                    cell.to_string()
                };
                line.push_str(&cell);
                if i + 1 < n {
                    let pad = width - visible_len(&cell) + 3;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints it.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// Length without colour escapes.
fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut escape = false;
    for c in text.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// A duration in kubectl's short style: `45s`, `3m`, `2h`, `5d`.
pub fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Seconds since the epoch now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["web-1.shop".into(), "SYNCED".into()]);
        t.row(vec!["a".into(), "NACKED".into()]);
        assert_eq!(
            t.render(),
            "NAME         STATE\nweb-1.shop   SYNCED\na            NACKED\n"
        );
    }

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(45), "45s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(5 * 86400), "5d");
    }
}
