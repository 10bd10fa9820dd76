//! `Cache-Control` as RFC 9111 §5.2 defines it, read from every field line of a message.
//!
//! ```text
//! Cache-Control   = #cache-directive
//! cache-directive = token [ "=" ( token / quoted-string ) ]
//! ```
//!
//! Directive names are case-insensitive (§5.2). What is ambiguous is read the way that stores
//! and reuses less: a directive given twice with different values, or a `max-age` that is not a
//! number, makes the response stale (§4.2.1: "a cache … should consider invalid values stale");
//! a field-qualified `no-cache="…"` or `private="…"` counts as the unqualified directive (the
//! stricter reading §5.2.2.4 and §5.2.2.7 allow); a value too large is 2147483648 (§1.2.2).
//! A field line that does not parse as a list at all makes every directive of the message
//! unknown except what parsed before it, and the message is marked `malformed` so the caller can
//! refuse to store it.

use http::header::{HeaderMap, CACHE_CONTROL};

/// The largest delta-seconds a cache must represent; larger values become this (§1.2.2).
pub const DELTA_SECONDS_MAX: u32 = 2_147_483_648;

/// A `delta-seconds` value as read: a number, or a value that was present but not a valid
/// number (which makes the response stale where freshness is concerned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seconds {
    Valid(u32),
    Invalid,
}

impl Seconds {
    /// The value, with an invalid one read as 0 (stale at once).
    pub fn or_stale(self) -> u32 {
        match self {
            Seconds::Valid(n) => n,
            Seconds::Invalid => 0,
        }
    }
}

/// The directives this cache acts on; others are ignored (§5.2.3: unknown extensions MUST be
/// ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub no_transform: bool,
    pub only_if_cached: bool,
    pub max_age: Option<Seconds>,
    pub s_maxage: Option<Seconds>,
    /// Request: the client accepts a stale response up to this old (`max-stale` without a
    /// value: any age, read as `DELTA_SECONDS_MAX`).
    pub max_stale: Option<Seconds>,
    pub min_fresh: Option<Seconds>,
    /// RFC 5861.
    pub stale_while_revalidate: Option<Seconds>,
    pub stale_if_error: Option<Seconds>,
    /// Some field line did not parse; what follows the error on that line is not read.
    pub malformed: bool,
}

impl CacheControl {
    /// Every `Cache-Control` line of `headers`, as one list (RFC 9110 §5.3).
    pub fn from_headers(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(CACHE_CONTROL) {
            cc.read_line(value.as_bytes());
        }
        cc
    }

    fn read_line(&mut self, line: &[u8]) {
        let mut rest = line;
        loop {
            rest = skip_list_separators(rest);
            if rest.is_empty() {
                return;
            }
            let name_len = rest.iter().take_while(|b| is_tchar(**b)).count();
            if name_len == 0 {
                self.malformed = true;
                return;
            }
            let (name, after) = rest.split_at(name_len);
            let after = skip_ows(after);
            let (argument, after) = match after.first() {
                Some(b'=') => match argument(skip_ows(&after[1..])) {
                    Some((value, after)) => (Some(value), after),
                    None => {
                        self.malformed = true;
                        return;
                    }
                },
                _ => (None, after),
            };
            let after = skip_ows(after);
            if !(after.is_empty() || after[0] == b',') {
                self.malformed = true;
                return;
            }
            self.apply(name, argument.as_deref());
            rest = after;
        }
    }

    fn apply(&mut self, name: &[u8], argument: Option<&[u8]>) {
        let seconds = || argument.map_or(Seconds::Invalid, delta_seconds);
        // A directive given twice with different values is ambiguous: read as invalid.
        let set = |slot: &mut Option<Seconds>, value: Seconds| {
            *slot = match *slot {
                Some(previous) if previous != value => Some(Seconds::Invalid),
                _ => Some(value),
            };
        };
        match name.to_ascii_lowercase().as_slice() {
            b"no-store" => self.no_store = true,
            // `no-cache="field"` and `private="field"` are read unqualified (stricter).
            b"no-cache" => self.no_cache = true,
            b"private" => self.private = true,
            b"public" => self.public = true,
            b"must-revalidate" => self.must_revalidate = true,
            b"proxy-revalidate" => self.proxy_revalidate = true,
            b"no-transform" => self.no_transform = true,
            b"only-if-cached" => self.only_if_cached = true,
            b"max-age" => set(&mut self.max_age, seconds()),
            b"s-maxage" => set(&mut self.s_maxage, seconds()),
            b"max-stale" => {
                let value = argument.map_or(Seconds::Valid(DELTA_SECONDS_MAX), delta_seconds);
                set(&mut self.max_stale, value)
            }
            b"min-fresh" => set(&mut self.min_fresh, seconds()),
            b"stale-while-revalidate" => set(&mut self.stale_while_revalidate, seconds()),
            b"stale-if-error" => set(&mut self.stale_if_error, seconds()),
            _ => {}
        }
    }
}

/// `delta-seconds = 1*DIGIT` (§1.2.2), leading zeros too; the argument may have been quoted
/// (§5.2 asks recipients to accept both the token and the quoted-string form); anything else is
/// invalid.
fn delta_seconds(value: &[u8]) -> Seconds {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Seconds::Invalid;
    }
    let mut n: u64 = 0;
    for d in value {
        n = n * 10 + u64::from(d - b'0');
        if n >= u64::from(DELTA_SECONDS_MAX) {
            return Seconds::Valid(DELTA_SECONDS_MAX);
        }
    }
    Seconds::Valid(n as u32)
}

/// A directive's argument: a token or a quoted-string (unquoted, escapes resolved); what follows.
fn argument(input: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    match input.first() {
        Some(b'"') => {
            let mut out = Vec::new();
            let mut i = 1;
            while i < input.len() {
                match input[i] {
                    b'"' => return Some((out, &input[i + 1..])),
                    b'\\' => {
                        let escaped = *input.get(i + 1)?;
                        if !(escaped == b'\t' || escaped == b' ' || escaped >= 0x21)
                            || escaped == 0x7f
                        {
                            return None;
                        }
                        out.push(escaped);
                        i += 2;
                    }
                    b if b == b'\t' || b == b' ' || (b >= 0x21 && b != 0x7f) => {
                        out.push(b);
                        i += 1;
                    }
                    _ => return None,
                }
            }
            None
        }
        _ => {
            let len = input.iter().take_while(|b| is_tchar(**b)).count();
            (len > 0).then(|| (input[..len].to_vec(), &input[len..]))
        }
    }
}

fn skip_ows(input: &[u8]) -> &[u8] {
    let n = input
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    &input[n..]
}

/// Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
fn skip_list_separators(input: &[u8]) -> &[u8] {
    let n = input
        .iter()
        .take_while(|b| matches!(**b, b' ' | b'\t' | b','))
        .count();
    &input[n..]
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn cc(lines: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for l in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(l).unwrap());
        }
        CacheControl::from_headers(&headers)
    }

    #[test]
    fn reads_directives_across_lines_in_any_case() {
        let c = cc(&["Public, MAX-AGE=60", "s-maxage=\"120\" ,, must-revalidate"]);
        assert!(c.public && c.must_revalidate && !c.private && !c.malformed);
        assert_eq!(c.max_age, Some(Seconds::Valid(60)));
        assert_eq!(c.s_maxage, Some(Seconds::Valid(120)));
    }

    #[test]
    fn ambiguity_reads_as_less_reuse() {
        // Two different max-ages: invalid, so stale.
        assert_eq!(
            cc(&["max-age=60", "max-age=30"]).max_age,
            Some(Seconds::Invalid)
        );
        // The same twice is no conflict.
        assert_eq!(
            cc(&["max-age=60, max-age=60"]).max_age,
            Some(Seconds::Valid(60))
        );
        assert_eq!(cc(&["max-age=abc"]).max_age, Some(Seconds::Invalid));
        assert_eq!(cc(&["max-age=-1"]).max_age, Some(Seconds::Invalid));
        assert_eq!(cc(&["max-age"]).max_age, Some(Seconds::Invalid));
        assert_eq!(cc(&["max-age=1.5"]).max_age, Some(Seconds::Invalid));
        // Qualified forms count as the whole directive.
        let c = cc(&["private=\"set-cookie\", no-cache=\"x-a, x-b\""]);
        assert!(c.private && c.no_cache && !c.malformed);
    }

    #[test]
    fn huge_values_are_the_rfcs_ceiling() {
        let c = cc(&["max-age=99999999999999999999999"]);
        assert_eq!(c.max_age, Some(Seconds::Valid(DELTA_SECONDS_MAX)));
        assert_eq!(DELTA_SECONDS_MAX, 2_147_483_648);
        assert_eq!(
            cc(&["max-stale"]).max_stale,
            Some(Seconds::Valid(DELTA_SECONDS_MAX))
        );
    }

    #[test]
    fn a_line_that_is_no_list_is_marked_and_read_up_to_the_error() {
        let c = cc(&["max-age=5, =oops, no-store"]);
        assert!(c.malformed);
        assert_eq!(c.max_age, Some(Seconds::Valid(5)));
        assert!(!c.no_store, "nothing after the error is trusted");
        assert!(cc(&["max-age=\"5"]).malformed);
        assert!(cc(&["max-age=5 6"]).malformed);
        assert!(!cc(&["unknown-ext=\"a, b\", no-store"]).malformed);
        assert!(cc(&["unknown-ext=\"a, b\", no-store"]).no_store);
    }

    proptest! {
        /// Any bytes a field value can hold: no panic, and a no-store that parses is seen.
        #[test]
        fn never_panics_and_finds_no_store(prefix in "[ -~]{0,40}") {
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&prefix) {
                headers.append(CACHE_CONTROL, v);
            }
            headers.append(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let c = CacheControl::from_headers(&headers);
            prop_assert!(c.no_store);
        }
    }
}
