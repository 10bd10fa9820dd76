//! Configuration problems, each tied to a place in the file and printed as `PATH:LINE:COL: message`.

use std::fmt;
use std::ops::Range;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub column: usize,
    /// Names the offending key and says what was expected.
    pub message: String,
}

/// Every problem of one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics {
    pub path: String,
    pub problems: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Each problem as `PATH:LINE:COL: message`.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|d| format!("{}:{}:{}: {}", self.path, d.line, d.column, d.message))
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines().iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Collects problems while a config is read, turning byte spans into lines and columns.
pub struct Collector<'s> {
    source: &'s str,
    problems: Vec<(usize, Diagnostic)>,
}

impl<'s> Collector<'s> {
    pub fn new(source: &'s str) -> Self {
        Collector {
            source,
            problems: Vec::new(),
        }
    }

    /// Records a problem at the start of `span`.
    pub fn report(&mut self, span: Range<usize>, message: impl Into<String>) {
        let offset = span.start.min(self.source.len());
        let (line, column) = line_col(self.source, offset);
        self.problems.push((
            offset,
            Diagnostic {
                line,
                column,
                message: message.into(),
            },
        ));
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems sorted by their place in the file (stable, so reports at one place keep
    /// the order they were found in).
    pub fn finish(mut self, path: &str) -> Diagnostics {
        self.problems.sort_by_key(|(offset, _)| *offset);
        Diagnostics {
            path: path.to_string(),
            problems: self.problems.into_iter().map(|(_, d)| d).collect(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, for suggestions on short keys only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (prev + cost).min(row[j + 1] + 1).min(row[j] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 8), (2, 3));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let keys = ["algorithm", "endpoints", "hash_on"];
        assert_eq!(suggest("algoritm", &keys), Some("algorithm"));
        assert_eq!(suggest("endpoint", &keys), Some("endpoints"));
        assert_eq!(suggest("zzz", &keys), None);
    }

    #[test]
    fn problems_are_sorted_and_formatted() {
        let src = "x = 1\ny = 2\n";
        let mut c = Collector::new(src);
        c.report(6..7, "second");
        c.report(0..1, "first");
        let d = c.finish("f.toml");
        assert_eq!(d.lines(), vec!["f.toml:1:1: first", "f.toml:2:1: second"]);
    }
}
