//! A JWT's claims set (RFC 7519 §4): one JSON object, checked against a policy's rules.
//!
//! A claims set naming a member twice is refused (§4: "MUST either reject JWTs with duplicate
//! Claim Names or use a JSON parser that returns only the lexically last"): the gateway and an
//! upstream that re-reads the token must not see two different subjects.

use std::fmt;
use std::time::Duration;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::Rejection;

/// 9999-12-31T23:59:59Z in seconds since the Unix epoch: the largest NumericDate read.
pub const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

/// What a policy requires of a token's claims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// `iss` must equal this, when set.
    pub issuer: Option<String>,
    /// `aud` (a string or an array) must contain one of these. When empty, a token that names
    /// an audience is refused (§4.1.3: a recipient that does not identify itself with a value
    /// of `aud` MUST reject the token).
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
}

/// A verified token's claims.
#[derive(Debug)]
pub struct Claims(Map<String, Value>);

impl Claims {
    /// Parses a claims set: a JSON object whose member names are distinct.
    pub fn parse(payload: &[u8]) -> Result<Claims, Rejection> {
        let mut de = serde_json::Deserializer::from_slice(payload);
        let map = de
            .deserialize_map(DistinctMembers)
            .map_err(|_| Rejection::BadClaims)?;
        de.end().map_err(|_| Rejection::BadClaims)?;
        Ok(Claims(map))
    }

    /// Checks the registered claims against `rules` at `now` (seconds since the Unix epoch).
    /// Returns the expiry (`exp`), when the token has one.
    pub fn check(&self, rules: &Rules, now: f64) -> Result<Option<f64>, Rejection> {
        let leeway = rules.leeway.as_secs_f64();
        let exp = self.numeric_date("exp")?;
        match exp {
            // §4.1.4: the current time MUST be before the expiry.
            Some(exp) if now >= exp + leeway => return Err(Rejection::Expired),
            None if rules.require_exp => return Err(Rejection::MissingExpiry),
            _ => {}
        }
        if let Some(nbf) = self.numeric_date("nbf")? {
            // §4.1.5: the current time MUST be after or equal to nbf.
            if now + leeway < nbf {
                return Err(Rejection::NotYetValid);
            }
        }
        if let Some(issuer) = &rules.issuer {
            match self.0.get("iss") {
                Some(Value::String(iss)) if iss == issuer => {}
                _ => return Err(Rejection::Issuer),
            }
        }
        let audience_ok = match self.0.get("aud") {
            None => rules.audiences.is_empty(),
            Some(Value::String(aud)) => rules.audiences.contains(aud),
            Some(Value::Array(auds)) => auds.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| rules.audiences.iter().any(|r| r == a))
            }),
            Some(_) => false,
        };
        if !audience_ok {
            return Err(Rejection::Audience);
        }
        Ok(exp)
    }

    /// A NumericDate claim: a JSON number of seconds (fractions allowed, §2), at most
    /// [`MAX_NUMERIC_DATE`] (the end of the year 9999) either side of 1970. Beyond that a value is a mistake or an attack (an
    /// `exp` of 1e300 would make a token eternal), and past 2^53 a double cannot even hold it
    /// to the second; it is refused rather than read.
    fn numeric_date(&self, name: &str) -> Result<Option<f64>, Rejection> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(t) if t.abs() <= MAX_NUMERIC_DATE => Ok(Some(t)),
                _ => Err(Rejection::BadClaims),
            },
            Some(_) => Err(Rejection::BadClaims),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// A claim as text: a string as it is, a number, boolean, array or object as compact JSON.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Array(items) if items.iter().all(Value::is_string) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            other => Some(other.to_string()),
        }
    }

    /// Scopes: a space-separated string (RFC 8693 §4.2's `scope`) or an array of strings
    /// (`scp`, Azure's `roles`).
    pub fn scopes(&self, name: &str) -> Vec<Box<str>> {
        match self.0.get(name) {
            Some(Value::String(s)) => s
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(Box::from)
                .collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(Box::from)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Reads a JSON object into a map, refusing a member name that repeats.
struct DistinctMembers;

impl<'de> Visitor<'de> for DistinctMembers {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut map = Map::new();
        while let Some((name, value)) = access.next_entry::<String, Value>()? {
            if map.contains_key(&name) {
                return Err(serde::de::Error::custom(format_args!(
                    "claim {name} appears twice"
                )));
            }
            map.insert(name, value);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            issuer: Some("https://idp".into()),
            audiences: vec!["api".into()],
            leeway: Duration::from_secs(30),
            require_exp: true,
        }
    }

    fn check(payload: &str, now: f64) -> Result<Option<f64>, Rejection> {
        Claims::parse(payload.as_bytes())?.check(&rules(), now)
    }

    #[test]
    fn registered_claims_are_checked_with_leeway() {
        let good = r#"{"iss":"https://idp","aud":"api","exp":1000,"nbf":900}"#;
        assert_eq!(check(good, 950.0), Ok(Some(1000.0)));
        assert_eq!(check(good, 1029.0), Ok(Some(1000.0)));
        assert_eq!(check(good, 1030.0), Err(Rejection::Expired));
        assert_eq!(check(good, 871.0), Ok(Some(1000.0)));
        assert_eq!(check(good, 869.0), Err(Rejection::NotYetValid));
        let arr = r#"{"iss":"https://idp","aud":["x","api"],"exp":1000}"#;
        assert!(check(arr, 950.0).is_ok());
        for (payload, why) in [
            (
                r#"{"iss":"https://idp","aud":"api"}"#,
                Rejection::MissingExpiry,
            ),
            (
                r#"{"iss":"https://other","aud":"api","exp":1000}"#,
                Rejection::Issuer,
            ),
            (r#"{"aud":"api","exp":1000}"#, Rejection::Issuer),
            (
                r#"{"iss":"https://idp","aud":"web","exp":1000}"#,
                Rejection::Audience,
            ),
            (
                r#"{"iss":"https://idp","aud":["web"],"exp":1000}"#,
                Rejection::Audience,
            ),
            (r#"{"iss":"https://idp","exp":1000}"#, Rejection::Audience),
            (
                r#"{"iss":"https://idp","aud":"api","exp":"1000"}"#,
                Rejection::BadClaims,
            ),
            (
                r#"{"iss":"https://idp","aud":"api","exp":1000,"exp":99999}"#,
                Rejection::BadClaims,
            ),
            (
                r#"{"iss":"https://idp","aud":"api","exp":1e400}"#,
                Rejection::BadClaims,
            ),
            (r#"[1,2]"#, Rejection::BadClaims),
            (r#"{"exp":1000} {}"#, Rejection::BadClaims),
        ] {
            assert_eq!(check(payload, 950.0), Err(why), "{payload}");
        }
        // Dates past the year 9999 are refused, not read as "never".
        for exp in ["1e300", "253402300800", "99999999999999999999999", "-1e20"] {
            let payload = format!(r#"{{"iss":"https://idp","aud":"api","exp":{exp}}}"#);
            assert_eq!(check(&payload, 950.0), Err(Rejection::BadClaims), "{exp}");
        }
        let last = r#"{"iss":"https://idp","aud":"api","exp":253402300799}"#;
        assert_eq!(check(last, 950.0), Ok(Some(MAX_NUMERIC_DATE)));
    }

    #[test]
    fn without_an_audience_rule_a_token_naming_one_is_refused() {
        let rules = Rules::default();
        let claims = Claims::parse(br#"{"aud":"x"}"#).unwrap();
        assert_eq!(claims.check(&rules, 0.0), Err(Rejection::Audience));
        let claims = Claims::parse(br#"{"sub":"x"}"#).unwrap();
        assert_eq!(claims.check(&rules, 0.0), Ok(None));
    }

    #[test]
    fn nesting_bombs_fail_to_parse_without_overflowing_the_stack() {
        let bomb = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            Claims::parse(bomb.as_bytes()).unwrap_err(),
            Rejection::BadClaims
        );
    }

    #[test]
    fn scopes_and_text_claims() {
        let claims =
            Claims::parse(br#"{"scope":"a  b c","scp":["x","y",3],"n":5,"e":"m@x","g":["p","q"]}"#)
                .unwrap();
        assert_eq!(claims.scopes("scope"), ["a", "b", "c"].map(Box::from));
        assert_eq!(claims.scopes("scp"), ["x", "y"].map(Box::from));
        assert!(claims.scopes("none").is_empty());
        assert_eq!(claims.text("n").as_deref(), Some("5"));
        assert_eq!(claims.text("e").as_deref(), Some("m@x"));
        assert_eq!(claims.text("g").as_deref(), Some("p,q"));
    }
}
