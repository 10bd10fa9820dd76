//! The query of `GET /api/v1/routes/stats`: `?window=DURATION`, validated before anything is
//! computed, so that a typo gets a 400 naming it rather than numbers over some other window.

use std::time::Duration;

use super::{RETENTION, SAMPLE_INTERVAL};

/// The window when the query names none: long enough to smooth a burst, short enough to show
/// a change within a minute.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Why a stats query was refused; each message says what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query string is not valid: {0}")]
    Malformed(String),
    #[error("unknown query parameter \"{0}\"; expected window")]
    UnknownParameter(String),
    #[error("window is given more than once")]
    Repeated,
    #[error("window: {0}")]
    Unparsable(String),
    #[error(
        "window must be from {}s to {}s: samples are taken every {}s and kept for {}s",
        SAMPLE_INTERVAL.as_secs(),
        RETENTION.as_secs(),
        SAMPLE_INTERVAL.as_secs(),
        RETENTION.as_secs()
    )]
    OutOfRange,
}

/// The window asked for by the query's `(name, value)` pairs (decoded), or [`DEFAULT_WINDOW`].
///
/// A window shorter than the sample interval would mostly measure the last interval's partial
/// counts, and one longer than the retention would silently be shortened: both are refused.
pub fn parse_window(pairs: &[(String, String)]) -> Result<Duration, QueryError> {
    let mut window = None;
    for (name, value) in pairs {
        if name != "window" {
            return Err(QueryError::UnknownParameter(name.clone()));
        }
        if window.replace(value).is_some() {
            return Err(QueryError::Repeated);
        }
    }
    let Some(text) = window else {
        return Ok(DEFAULT_WINDOW);
    };
    let window = crate::config::units::parse_duration(text).map_err(QueryError::Unparsable)?;
    if !(SAMPLE_INTERVAL..=RETENTION).contains(&window) {
        return Err(QueryError::OutOfRange);
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Duration, QueryError> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_window(&owned)
    }

    #[test]
    fn windows_are_durations_within_the_retention() {
        assert_eq!(parse(&[]), Ok(DEFAULT_WINDOW));
        assert_eq!(parse(&[("window", "60s")]), Ok(Duration::from_secs(60)));
        assert_eq!(parse(&[("window", "5m")]), Ok(RETENTION));
        assert_eq!(parse(&[("window", "5s")]), Ok(SAMPLE_INTERVAL));
    }

    #[test]
    fn bad_windows_are_refused_with_the_reason() {
        assert_eq!(parse(&[("window", "0")]), Err(QueryError::OutOfRange));
        assert_eq!(parse(&[("window", "1s")]), Err(QueryError::OutOfRange));
        assert_eq!(parse(&[("window", "6m")]), Err(QueryError::OutOfRange));
        assert_eq!(
            parse(&[("window", "99999999999999999999d")]),
            Err(QueryError::Unparsable(
                "duration \"99999999999999999999d\" is too large".into()
            ))
        );
        assert!(matches!(
            parse(&[("window", "sixty")]),
            Err(QueryError::Unparsable(_))
        ));
        assert!(matches!(
            parse(&[("window", "")]),
            Err(QueryError::Unparsable(_))
        ));
        assert_eq!(
            parse(&[("windw", "60s")]),
            Err(QueryError::UnknownParameter("windw".into()))
        );
        assert_eq!(
            parse(&[("window", "60s"), ("window", "30s")]),
            Err(QueryError::Repeated)
        );
    }

    #[test]
    fn messages_name_the_accepted_range() {
        assert_eq!(
            QueryError::OutOfRange.to_string(),
            "window must be from 5s to 300s: samples are taken every 5s and kept for 300s"
        );
    }
}
