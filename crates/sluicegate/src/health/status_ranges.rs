//! `expected_status = "200-399"`: which HTTP statuses an active check counts as a success.
//!
//! The syntax is a comma-separated list of single codes or inclusive `low-high` ranges, each code
//! in 100..=599 (the statuses HTTP defines), as HAProxy's `http-check expect status` and Envoy's
//! `expected_statuses` let users say it. Whitespace around items and dashes is ignored.

use std::fmt;
use std::str::FromStr;

/// The lowest status code HTTP defines (RFC 9110, 15: three digits, first digit 1 to 5).
const MIN_STATUS: u16 = 100;
/// The highest status code HTTP defines.
const MAX_STATUS: u16 = 599;

/// A set of HTTP status codes, as inclusive ranges in the order the user wrote them.
///
/// Ranges are kept as written (not merged), so [`fmt::Display`] gives back what the config said;
/// equality is therefore of the spelling, not of the set (`"200-299,300-399" != "200-399"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges {
    /// Inclusive `(low, high)` pairs, never empty, each within `MIN_STATUS..=MAX_STATUS`.
    ranges: Vec<(u16, u16)>,
}

/// Why an `expected_status` string was refused. Messages name what was expected, for config
/// diagnostics; they are not a contract to match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusRangesError {
    #[error("expected status codes such as \"200-399\" or \"200-299,404\", found an empty string")]
    Empty,
    #[error("empty item between commas: expected a status code (such as 200) or a range (such as 200-399)")]
    EmptyItem,
    #[error("`{0}` is not a status code: expected a number from 100 to 599")]
    NotANumber(String),
    #[error("status code {0} is out of range: expected 100 to 599")]
    OutOfRange(String),
    #[error("range {from}-{to} is reversed: expected the lower code first, as in {to}-{from}")]
    Reversed { from: u16, to: u16 },
}

impl StatusRanges {
    /// Parses `"200-399"`, `"200"`, `"200-299,404"`.
    pub fn parse(s: &str) -> Result<StatusRanges, StatusRangesError> {
        if s.trim().is_empty() {
            return Err(StatusRangesError::Empty);
        }
        let ranges = s
            .split(',')
            .map(parse_item)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatusRanges { ranges })
    }

    /// Whether `status` is one of the codes.
    pub fn contains(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(low, high)| low <= status && status <= high)
    }
}

/// One comma-separated item: `"404"` or `"200-299"`.
fn parse_item(item: &str) -> Result<(u16, u16), StatusRangesError> {
    let item = item.trim();
    if item.is_empty() {
        return Err(StatusRangesError::EmptyItem);
    }
    match item.split_once('-') {
        None => {
            let code = parse_code(item)?;
            Ok((code, code))
        }
        Some((low, high)) => {
            let (low, high) = (parse_code(low.trim())?, parse_code(high.trim())?);
            if low > high {
                return Err(StatusRangesError::Reversed {
                    from: low,
                    to: high,
                });
            }
            Ok((low, high))
        }
    }
}

/// A status code: ASCII digits only (so no sign, unlike `u16::from_str`), within 100..=599.
fn parse_code(s: &str) -> Result<u16, StatusRangesError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StatusRangesError::NotANumber(s.to_string()));
    }
    match s.parse::<u16>() {
        Ok(code) if (MIN_STATUS..=MAX_STATUS).contains(&code) => Ok(code),
        // Digits only, so the only parse failure left is overflow: out of range as well.
        _ => Err(StatusRangesError::OutOfRange(s.to_string())),
    }
}

/// `200-399`, the default of SPEC 2 and what "the request worked" means for most services
/// (redirects included: a health endpoint behind a login redirect is still up).
impl Default for StatusRanges {
    fn default() -> StatusRanges {
        StatusRanges {
            ranges: vec![(200, 399)],
        }
    }
}

impl FromStr for StatusRanges {
    type Err = StatusRangesError;

    fn from_str(s: &str) -> Result<StatusRanges, StatusRangesError> {
        StatusRanges::parse(s)
    }
}

/// The config spelling: `200-299,404`.
impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(low, high)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if low == high {
                write!(f, "{low}")?;
            } else {
                write!(f, "{low}-{high}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn single_code_range_and_list() {
        let one = StatusRanges::parse("200").unwrap();
        assert!(one.contains(200));
        assert!(!one.contains(201));

        let range = StatusRanges::parse("200-399").unwrap();
        assert!(range.contains(200) && range.contains(302) && range.contains(399));
        assert!(!range.contains(199) && !range.contains(400));

        let list = StatusRanges::parse(" 200 - 299 , 404 ").unwrap();
        assert!(list.contains(250) && list.contains(404));
        assert!(!list.contains(300) && !list.contains(403) && !list.contains(405));
        assert_eq!(list.to_string(), "200-299,404");
    }

    #[test]
    fn default_is_200_to_399() {
        assert_eq!(
            StatusRanges::default(),
            StatusRanges::parse("200-399").unwrap()
        );
        assert_eq!(StatusRanges::default().to_string(), "200-399");
        assert_eq!(
            "200-399".parse::<StatusRanges>(),
            Ok(StatusRanges::default())
        );
    }

    #[test]
    fn bounds_are_100_and_599() {
        assert!(StatusRanges::parse("100-599").unwrap().contains(100));
        assert!(StatusRanges::parse("100-599").unwrap().contains(599));
        assert_eq!(
            StatusRanges::parse("99"),
            Err(StatusRangesError::OutOfRange("99".into()))
        );
        assert_eq!(
            StatusRanges::parse("200-600"),
            Err(StatusRangesError::OutOfRange("600".into()))
        );
        assert_eq!(
            StatusRanges::parse("99999999999"),
            Err(StatusRangesError::OutOfRange("99999999999".into()))
        );
    }

    #[test]
    fn malformed_input_says_what_was_expected() {
        assert_eq!(StatusRanges::parse(""), Err(StatusRangesError::Empty));
        assert_eq!(StatusRanges::parse("  "), Err(StatusRangesError::Empty));
        assert_eq!(
            StatusRanges::parse("200,,404"),
            Err(StatusRangesError::EmptyItem)
        );
        assert_eq!(
            StatusRanges::parse("200,"),
            Err(StatusRangesError::EmptyItem)
        );
        assert_eq!(
            StatusRanges::parse("2xx"),
            Err(StatusRangesError::NotANumber("2xx".into()))
        );
        assert_eq!(
            StatusRanges::parse("+200"),
            Err(StatusRangesError::NotANumber("+200".into()))
        );
        assert_eq!(
            StatusRanges::parse("200-"),
            Err(StatusRangesError::NotANumber(String::new()))
        );
        assert_eq!(
            StatusRanges::parse("200-299-399"),
            Err(StatusRangesError::NotANumber("299-399".into()))
        );
        let reversed = StatusRanges::parse("399-200").unwrap_err();
        assert_eq!(reversed, StatusRangesError::Reversed { from: 399, to: 200 });
        assert!(reversed.to_string().contains("200-399"));
        assert!(StatusRangesError::Empty.to_string().contains("expected"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = StatusRanges::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_misses(s in "[0-9, -]{0,24}") {
            if let Ok(ranges) = StatusRanges::parse(&s) {
                // Whatever parses prints back to something that parses to the same value.
                prop_assert_eq!(StatusRanges::parse(&ranges.to_string()), Ok(ranges));
            }
        }

        #[test]
        fn contains_agrees_with_a_range(low in 100u16..=599, len in 0u16..100, probe in 0u16..700) {
            let high = (low + len).min(599);
            let ranges = StatusRanges::parse(&format!("{low}-{high}")).unwrap();
            prop_assert_eq!(ranges.contains(probe), (low..=high).contains(&probe));
        }
    }
}
