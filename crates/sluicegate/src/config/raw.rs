//! Reading the spanned TOML tree: typed getters that report a problem (with its place in the file)
//! instead of stopping, so one pass finds every mistake. serde's derive would stop at the first.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::{suggest, Collector};
use super::units::{parse_duration, parse_size};

pub type Value<'i> = Spanned<DeValue<'i>>;

/// A table being read, with its key path (`services[0].health_check`) for messages.
#[derive(Clone)]
pub struct Table<'a, 'i> {
    pub path: String,
    pub span: Range<usize>,
    pub inner: &'a DeTable<'i>,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn new(path: impl Into<String>, span: Range<usize>, inner: &'a DeTable<'i>) -> Self {
        Table {
            path: path.into(),
            span,
            inner,
        }
    }

    /// The full path of `key` in this table, for messages.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.inner.get(key)
    }
}

/// Reads values out of tables, recording every problem in the collector.
pub struct Reader<'s> {
    pub diags: Collector<'s>,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'s> Reader<'s> {
    pub fn new(source: &'s str) -> Self {
        Reader {
            diags: Collector::new(source),
        }
    }

    pub fn report(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diags.report(span, message);
    }

    /// Reports keys of `table` that are neither `known` nor `later` (SPEC keys not built yet,
    /// refused rather than silently ignored).
    pub fn check_keys(&mut self, table: &Table<'_, '_>, known: &[&str], later: &[&str]) {
        for (key, _) in table.inner.iter() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let path = table.key_path(name);
            if later.contains(&name) {
                self.report(
                    key.span(),
                    format!("{path}: not supported yet in this version of sluicegate"),
                );
                continue;
            }
            let hint = match suggest(name, known) {
                Some(s) => format!(" (did you mean \"{s}\"?)"),
                None => format!("; expected one of: {}", known.join(", ")),
            };
            self.report(key.span(), format!("{path}: unknown key{hint}"));
        }
    }

    fn wrong_type(&mut self, table: &Table<'_, '_>, key: &str, v: &Value<'_>, expected: &str) {
        let message = format!(
            "{}: expected {expected}, found {}",
            table.key_path(key),
            type_name(v.get_ref())
        );
        self.report(v.span(), message);
    }

    /// Reports a missing required key at the table's own place.
    pub fn missing(&mut self, table: &Table<'_, '_>, key: &str, expected: &str) {
        let message = format!("{}: missing required key ({expected})", table.key_path(key));
        self.report(table.span.clone(), message);
    }

    pub fn string<'a>(
        &mut self,
        table: &Table<'a, '_>,
        key: &str,
    ) -> Option<(&'a str, Range<usize>)> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), v.span())),
            _ => {
                self.wrong_type(table, key, v, "a string");
                None
            }
        }
    }

    pub fn required_string<'a>(
        &mut self,
        table: &Table<'a, '_>,
        key: &str,
        expected: &str,
    ) -> Option<(&'a str, Range<usize>)> {
        if table.get(key).is_none() {
            self.missing(table, key, expected);
            return None;
        }
        self.string(table, key)
    }

    pub fn bool(&mut self, table: &Table<'_, '_>, key: &str) -> Option<bool> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(table, key, v, "a boolean (true or false)");
                None
            }
        }
    }

    /// An integer within `range` (inclusive).
    pub fn integer(
        &mut self,
        table: &Table<'_, '_>,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<(i64, Range<usize>)> {
        let v = table.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => {
                self.wrong_type(table, key, v, "an integer");
                return None;
            }
        };
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some((n, v.span())),
            _ => {
                let message = format!(
                    "{}: expected an integer from {min} to {max}",
                    table.key_path(key)
                );
                self.report(v.span(), message);
                None
            }
        }
    }

    /// A number (integer or float) within `min..=max`, where `min` itself is allowed only when
    /// `min_inclusive`.
    pub fn number(
        &mut self,
        table: &Table<'_, '_>,
        key: &str,
        min: f64,
        min_inclusive: bool,
        max: f64,
    ) -> Option<f64> {
        let v = table.get(key)?;
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|n| n as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => {
                self.wrong_type(table, key, v, "a number");
                return None;
            }
        };
        match parsed {
            Some(n) if n.is_finite() && n <= max && (n > min || (min_inclusive && n == min)) => {
                Some(n)
            }
            _ => {
                let lower = if min_inclusive { "from" } else { "more than" };
                let message = format!(
                    "{}: expected a number {lower} {min} up to {max}",
                    table.key_path(key)
                );
                self.report(v.span(), message);
                None
            }
        }
    }

    pub fn table<'a, 'i>(&mut self, table: &Table<'a, 'i>, key: &str) -> Option<Table<'a, 'i>> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table::new(table.key_path(key), v.span(), t)),
            _ => {
                self.wrong_type(table, key, v, "a table");
                None
            }
        }
    }

    pub fn array<'a, 'i>(
        &mut self,
        table: &Table<'a, 'i>,
        key: &str,
    ) -> Option<(&'a [Value<'i>], Range<usize>)> {
        let v = table.get(key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some((&a[..], v.span())),
            _ => {
                self.wrong_type(table, key, v, "an array");
                None
            }
        }
    }

    /// An array of tables (`[[listeners]]` or an inline array of inline tables).
    pub fn tables<'a, 'i>(&mut self, table: &Table<'a, 'i>, key: &str) -> Vec<Table<'a, 'i>> {
        let Some((items, _)) = self.array(table, key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let path = format!("{}[{i}]", table.key_path(key));
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table::new(path, item.span(), t)),
                other => {
                    let message = format!("{path}: expected a table, found {}", type_name(other));
                    self.report(item.span(), message);
                }
            }
        }
        out
    }

    /// The tables of a table of named tables (`[rate_limits.NAME]`, `[auth.NAME]`), each with
    /// its name; an entry that is not a table is reported (`expected` says what it should hold).
    pub fn named_tables<'a, 'i>(
        &mut self,
        table: &Table<'a, 'i>,
        expected: &str,
    ) -> Vec<(&'a str, Table<'a, 'i>)> {
        let mut out = Vec::new();
        for (name, value) in table.inner.iter() {
            let name: &str = name.get_ref();
            let path = table.key_path(name);
            match value.get_ref() {
                DeValue::Table(inner) => out.push((name, Table::new(path, value.span(), inner))),
                _ => self.report(
                    value.span(),
                    format!("{path}: expected a table ({expected})"),
                ),
            }
        }
        out
    }

    /// An array of strings.
    pub fn strings<'a>(
        &mut self,
        table: &Table<'a, '_>,
        key: &str,
    ) -> Option<Vec<(&'a str, Range<usize>)>> {
        let (items, _) = self.array(table, key)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), item.span())),
                other => {
                    let message = format!(
                        "{}[{i}]: expected a string, found {}",
                        table.key_path(key),
                        type_name(other)
                    );
                    self.report(item.span(), message);
                }
            }
        }
        Some(out)
    }

    /// A list of HTTP statuses (100 to 599).
    pub fn statuses(&mut self, table: &Table<'_, '_>, key: &str) -> Option<Vec<u16>> {
        let (items, _) = self.array(table, key)?;
        let mut out = Vec::new();
        for item in items {
            let code = match item.get_ref() {
                DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
                _ => None,
            };
            match code {
                Some(c @ 100..=599) => out.push(c as u16),
                _ => self.report(
                    item.span(),
                    format!(
                        "{}: expected an HTTP status from 100 to 599",
                        table.key_path(key)
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A table of HTTP field names to values (`headers = { "x-env" = "prod" }`): a name or a
    /// value that is not valid in a request is reported and left out.
    pub fn header_table(
        &mut self,
        table: &Table<'_, '_>,
        key: &str,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        let Some(headers) = self.table(table, key) else {
            return out;
        };
        for (key, _) in headers.inner.iter() {
            let key_name: &str = key.get_ref();
            let name = HeaderName::from_bytes(key_name.as_bytes());
            if name.is_err() {
                self.report(
                    key.span(),
                    format!("{}: invalid header name \"{key_name}\"", headers.path),
                );
            }
            let Some((text, span)) = self.string(&headers, key_name) else {
                continue;
            };
            match (name, HeaderValue::from_str(text)) {
                (Ok(name), Ok(v)) => out.push((name, v)),
                (_, Err(_)) => self.report(
                    span,
                    format!(
                        "{}: invalid header value (visible ASCII only)",
                        headers.key_path(key_name)
                    ),
                ),
                _ => {}
            }
        }
        out
    }

    pub fn duration(&mut self, table: &Table<'_, '_>, key: &str) -> Option<Duration> {
        let (text, span) = self.string(table, key)?;
        match parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                let message = format!("{}: {e}", table.key_path(key));
                self.report(span, message);
                None
            }
        }
    }

    pub fn size(&mut self, table: &Table<'_, '_>, key: &str) -> Option<u64> {
        let (text, span) = self.string(table, key)?;
        match parse_size(text) {
            Ok(n) => Some(n),
            Err(e) => {
                let message = format!("{}: {e}", table.key_path(key));
                self.report(span, message);
                None
            }
        }
    }

    /// A socket address: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (resolved once, now).
    pub fn address(&mut self, table: &Table<'_, '_>, key: &str) -> Option<SocketAddr> {
        let (text, span) = self.string(table, key)?;
        match parse_address(text) {
            Ok(a) => Some(a),
            Err(e) => {
                let message = format!("{}: {e}", table.key_path(key));
                self.report(span, message);
                None
            }
        }
    }
}

/// Parses `IP:PORT`, falling back to resolving `HOST:PORT` (e.g. `localhost:9001`).
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "invalid address \"{text}\"; expected HOST:PORT such as \"127.0.0.1:8080\""
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "invalid address \"{text}\"; expected HOST:PORT such as \"127.0.0.1:8080\""
        ));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("address \"{text}\" resolves to nothing")),
        Err(e) => Err(format!("cannot resolve address \"{text}\": {e}")),
    }
}
