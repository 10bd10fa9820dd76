//! `discovery = { type = "file", path }`: a service's endpoints listed in a file that deploy
//! tools rewrite, as JSON (`[{"address": "10.0.0.5:8080", "weight": 2}]`, or the same list under
//! `"endpoints"`) or TOML (`[[endpoints]]` tables with `address` and `weight`), chosen by the
//! file's extension.
//!
//! The file is read when the config loads (a broken one refuses the config, its problem at
//! `PATH:LINE:COL`), then watched: every valid version replaces the service's discovered set,
//! an invalid one is logged (once per distinct problem) and the last good set stays.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

use crate::config::{line_col, EndpointConfig, EndpointSource, MAX_WEIGHT};

/// How a file's endpoints are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
}

impl Format {
    /// By extension: `.json` or `.toml`.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "toml" => Some(Format::Toml),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Listed {
    address: String,
    weight: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonFile {
    List(Vec<Listed>),
    Table { endpoints: Vec<Listed> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    endpoints: Vec<toml::Spanned<TomlListed>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlListed {
    address: toml::Spanned<String>,
    weight: Option<toml::Spanned<i64>>,
}

/// An entry as read: where it is, its address, and its weight with where that is.
type Entry = (usize, String, Option<(usize, i64)>);

/// Reads and checks `path`: its endpoints, or the problem as `PATH:LINE:COL: message`.
pub fn read(path: &Path) -> Result<Vec<EndpointConfig>, String> {
    let format = Format::of(path).ok_or_else(|| {
        format!(
            "{}: a discovery file ends in .json or .toml",
            path.display()
        )
    })?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))?;
    parse(&text, format).map_err(|(at, why)| {
        let (line, col) = line_col(&text, at);
        format!("{}:{line}:{col}: {why}", path.display())
    })
}

/// The endpoints of `text`, or the byte offset of the problem and what it is.
pub fn parse(text: &str, format: Format) -> Result<Vec<EndpointConfig>, (usize, String)> {
    // Each entry with where it starts, for the problems found after parsing.
    let entries: Vec<Entry> = match format {
        Format::Json => {
            let file: JsonFile = serde_json::from_str(text).map_err(|e| {
                let at = offset_of(text, e.line(), e.column());
                (at, json_problem(&e))
            })?;
            let listed = match file {
                JsonFile::List(l) | JsonFile::Table { endpoints: l } => l,
            };
            let mut from = 0;
            listed
                .into_iter()
                .map(|l| {
                    // JSON values carry no position: the entry's own `"address"` key, in order.
                    let at = text[from..].find("\"address\"").map_or(0, |i| from + i);
                    from = at + 1;
                    (at, l.address, l.weight.map(|w| (at, w)))
                })
                .collect()
        }
        Format::Toml => {
            let file: TomlFile = toml::from_str(text).map_err(|e| {
                let at = e.span().map_or(0, |s| s.start);
                (at, e.message().trim().to_string())
            })?;
            file.endpoints
                .into_iter()
                .map(|e| {
                    let e = e.into_inner();
                    let at = e.address.span().start;
                    let weight = e.weight.map(|w| (w.span().start, w.into_inner()));
                    (at, e.address.into_inner(), weight)
                })
                .collect()
        }
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (at, address, weight) in entries {
        let address: std::net::SocketAddr = address.parse().map_err(|_| {
            (
                at,
                format!("\"{address}\" is not an IP address and port such as \"10.0.0.5:8080\""),
            )
        })?;
        let weight = match weight {
            None => 1,
            Some((at, w)) => u32::try_from(w)
                .ok()
                .filter(|w| (1..=MAX_WEIGHT).contains(w))
                .ok_or_else(|| (at, format!("weight {w} is not from 1 to {MAX_WEIGHT}")))?,
        };
        if !seen.insert(address) {
            return Err((at, format!("{address} is listed twice")));
        }
        out.push(EndpointConfig {
            address,
            weight,
            source: EndpointSource::File,
        });
    }
    Ok(out)
}

fn json_problem(e: &serde_json::Error) -> String {
    if e.is_data() {
        format!(
            "{e}; expected a list of {{\"address\": \"IP:PORT\", \"weight\": 1}} (or that list under \"endpoints\")"
        )
    } else {
        e.to_string()
    }
}

/// The byte offset of 1-based `line` and `column` in `text`.
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (start + column.saturating_sub(1)).min(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(found: &[EndpointConfig]) -> Vec<(String, u32)> {
        found
            .iter()
            .map(|e| (e.address.to_string(), e.weight))
            .collect()
    }

    #[test]
    fn both_formats_list_addresses_and_weights() {
        let json = r#"[{"address": "10.0.0.1:80"}, {"address": "10.0.0.2:80", "weight": 3}]"#;
        let expected = vec![
            ("10.0.0.1:80".to_string(), 1),
            ("10.0.0.2:80".to_string(), 3),
        ];
        assert_eq!(addresses(&parse(json, Format::Json).unwrap()), expected);
        let wrapped = format!("{{\"endpoints\": {json}}}");
        assert_eq!(addresses(&parse(&wrapped, Format::Json).unwrap()), expected);
        let toml = "[[endpoints]]\naddress = \"10.0.0.1:80\"\n\n[[endpoints]]\naddress = \"10.0.0.2:80\"\nweight = 3\n";
        assert_eq!(addresses(&parse(toml, Format::Toml).unwrap()), expected);
        assert!(parse("[]", Format::Json).unwrap().is_empty());
        assert!(parse("", Format::Toml).unwrap().is_empty());
    }

    #[test]
    fn problems_say_where() {
        let at = |text: &str, format| {
            let (offset, why) = parse(text, format).unwrap_err();
            (line_col(text, offset), why)
        };
        let (pos, why) = at(
            "[\n  {\"address\": \"10.0.0.1:80\"},\n  {\"address\": \"nope\"}\n]",
            Format::Json,
        );
        assert_eq!(pos, (3, 4));
        assert!(why.contains("\"nope\" is not an IP address"), "{why}");
        let (pos, _) = at("[{\"address\": \"10.0.0.1:80\",}]", Format::Json);
        assert_eq!(pos.0, 1);
        let (_, why) = at(
            "[{\"address\": \"10.0.0.1:80\", \"zone\": 1}]",
            Format::Json,
        );
        assert!(why.contains("expected a list"), "{why}");
        let (pos, why) = at(
            "[[endpoints]]\naddress = \"10.0.0.1:80\"\nweight = 0\n",
            Format::Toml,
        );
        assert_eq!(pos, (3, 10));
        assert!(why.contains("weight 0 is not from 1"), "{why}");
        let (pos, why) = at(
            "[[endpoints]]\naddress = \"10.0.0.1:80\"\n[[endpoints]]\naddress = \"10.0.0.1:80\"\n",
            Format::Toml,
        );
        assert_eq!(pos, (4, 11));
        assert!(why.contains("listed twice"), "{why}");
        let (_, why) = at("[[endpoints]]\nadress = \"x\"\n", Format::Toml);
        assert!(why.contains("adress"), "{why}");
        // A problem at the end of a file ending inside a multi-byte character.
        let (pos, _) = at("[{\"address\": \"é", Format::Json);
        assert_eq!(pos.0, 1);
    }
}
