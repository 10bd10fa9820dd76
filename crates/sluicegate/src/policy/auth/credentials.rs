//! Where a request carries its credential, read so that the gateway and the upstream cannot
//! disagree about it: a credential given twice (two `Authorization` fields, a cookie or query
//! parameter named twice) is ambiguous and refused, never resolved by picking one.
//! Also the removal of a credential before forwarding (`strip_credentials = true`).

use http::header::{AUTHORIZATION, COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// What a request holds where the policy looks.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    Missing,
    /// More than one, or not in the expected form.
    Ambiguous,
    Value(std::borrow::Cow<'a, [u8]>),
}

/// `Authorization: Bearer TOKEN` (RFC 6750 §2.1; the scheme is case-insensitive, RFC 9110
/// §11.1). Another scheme (`Basic`) is no bearer token: missing.
pub fn bearer(headers: &HeaderMap) -> Found<'_> {
    let value = match one_field(headers, &AUTHORIZATION) {
        Ok(Some(v)) => v.as_bytes(),
        Ok(None) => return Found::Missing,
        Err(()) => return Found::Ambiguous,
    };
    let Some(scheme) = value.get(..7) else {
        return Found::Missing;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return Found::Missing;
    }
    let token = value[7..].trim_ascii();
    if token.is_empty() || token.contains(&b' ') {
        return Found::Ambiguous;
    }
    Found::Value(token.into())
}

/// A header holding the credential alone.
pub fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Found<'a> {
    match one_field(headers, name) {
        Ok(Some(v)) if !v.is_empty() => Found::Value(v.as_bytes().trim_ascii().into()),
        Ok(_) => Found::Missing,
        Err(()) => Found::Ambiguous,
    }
}

fn one_field<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(());
    }
    Ok(first)
}

/// A cookie's value (RFC 6265 §4.2.1: `name=value` pairs separated by `; `, a value possibly
/// in double quotes), from every `Cookie` field (HTTP/2 sends one per cookie).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Found<'a> {
    let mut found = None;
    for field in headers.get_all(COOKIE) {
        for pair in field.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            // Some upstreams read cookie names without case or with spaces trimmed: any such
            // spelling of the name is the same cookie, and a second one is ambiguous.
            let key = pair[..eq].trim_ascii();
            if !key.eq_ignore_ascii_case(name.as_bytes()) {
                continue;
            }
            if found.is_some() || key != name.as_bytes() {
                return Found::Ambiguous;
            }
            let value = &pair[eq + 1..];
            let value = match value {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            };
            found = Some(value);
        }
    }
    match found {
        Some(v) if !v.is_empty() => Found::Value(v.into()),
        _ => Found::Missing,
    }
}

/// Whether a query pair's name, percent-decoded, is `name`: `api%5Fkey` is `api_key` to any
/// upstream that decodes names, so it is to the gateway too.
fn names(pair: &str, name: &str) -> bool {
    let key = pair.split('=').next().unwrap_or_default();
    key == name
        || (key.contains('%')
            && percent_decode(key.as_bytes()).is_some_and(|k| k == name.as_bytes()))
}

/// A query parameter's value, percent-decoded (`+` is a space, as forms write it).
pub fn query<'a>(uri: &'a Uri, name: &str) -> Found<'a> {
    let mut found = None;
    for pair in uri.query().unwrap_or_default().split('&') {
        // Some upstreams also split the query at `;`: a pair hidden behind one is ambiguous.
        if pair.contains(';') && pair.split(';').any(|part| names(part, name)) {
            return Found::Ambiguous;
        }
        if !names(pair, name) {
            continue;
        }
        let value = pair.split_once('=').map_or("", |(_, v)| v);
        if found.is_some() {
            return Found::Ambiguous;
        }
        found = Some(value);
    }
    match found {
        None | Some("") => Found::Missing,
        Some(v) => match percent_decode(v.as_bytes()) {
            Some(decoded) => Found::Value(decoded.into()),
            None => Found::Ambiguous,
        },
    }
}

/// Strict `application/x-www-form-urlencoded` decoding of a query part (`+` is a space); `None`
/// for a `%` not followed by two hex digits.
pub fn percent_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The request target as the access log shows it: the values of `secret` query parameters
/// (API keys) replaced by `REDACTED`, under any spelling of their names that [`query`] reads.
pub fn redact_query<'a>(target: &'a str, secret: &[String]) -> std::borrow::Cow<'a, str> {
    let Some((path, query)) = target.split_once('?') else {
        return target.into();
    };
    if secret.is_empty() {
        return target.into();
    }
    let hides = |pair: &str| {
        secret
            .iter()
            .any(|name| pair.split(';').any(|part| names(part, name)))
    };
    if !query.split('&').any(hides) {
        return target.into();
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            if hides(pair) {
                let key = pair.split(['=', ';']).next().unwrap_or_default();
                format!("{key}=REDACTED")
            } else {
                pair.to_string()
            }
        })
        .collect();
    format!("{path}?{}", pairs.join("&")).into()
}

/// Removes cookie `name` from every `Cookie` field (dropping fields left empty).
pub fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let fields: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    if fields.is_empty() {
        return;
    }
    headers.remove(COOKIE);
    for field in fields {
        let kept: Vec<&[u8]> = field
            .as_bytes()
            .split(|&b| b == b';')
            .map(<[u8]>::trim_ascii)
            .filter(|pair| {
                !pair.is_empty() && pair.split(|&b| b == b'=').next() != Some(name.as_bytes())
            })
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            headers.append(COOKIE, value);
        }
    }
}

/// Removes query parameter `name` from the request target.
pub fn strip_query(uri: &mut Uri, name: &str) {
    let Some(query) = uri.query() else {
        return;
    };
    let kept: Vec<&str> = query.split('&').filter(|pair| !names(pair, name)).collect();
    let path = uri.path();
    let target = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let Ok(pq) = PathAndQuery::try_from(target) else {
        return;
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(pq);
    if let Ok(rebuilt) = Uri::from_parts(parts) {
        *uri = rebuilt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn value(found: Found<'_>) -> Option<Vec<u8>> {
        match found {
            Found::Value(v) => Some(v.into_owned()),
            _ => None,
        }
    }

    #[test]
    fn bearer_tokens_are_one_authorization_field_with_the_bearer_scheme() {
        assert_eq!(
            value(bearer(&map(&[("authorization", "Bearer abc")]))).unwrap(),
            b"abc"
        );
        assert_eq!(
            value(bearer(&map(&[("authorization", "bearer  abc ")]))).unwrap(),
            b"abc"
        );
        assert_eq!(
            bearer(&map(&[("authorization", "Basic YTpi")])),
            Found::Missing
        );
        assert_eq!(bearer(&map(&[])), Found::Missing);
        assert_eq!(
            bearer(&map(&[("authorization", "Bearer ")])),
            Found::Ambiguous
        );
        assert_eq!(
            bearer(&map(&[("authorization", "Bearer a b")])),
            Found::Ambiguous
        );
        assert_eq!(
            bearer(&map(&[
                ("authorization", "Bearer a"),
                ("authorization", "Bearer b")
            ])),
            Found::Ambiguous
        );
    }

    #[test]
    fn cookies_and_query_parameters_named_twice_are_ambiguous() {
        let h = map(&[("cookie", "a=1; tok=\"xyz\""), ("cookie", "b=2")]);
        assert_eq!(value(cookie(&h, "tok")).unwrap(), b"xyz");
        assert_eq!(cookie(&h, "none"), Found::Missing);
        let h = map(&[("cookie", "tok=1"), ("cookie", "tok=2")]);
        assert_eq!(cookie(&h, "tok"), Found::Ambiguous);
        let h = map(&[("cookie", "tok=1; TOK=2")]);
        assert_eq!(cookie(&h, "tok"), Found::Ambiguous);
        let h = map(&[("cookie", "tok=1;  tok =2")]);
        assert_eq!(cookie(&h, "tok"), Found::Ambiguous);
        let uri: Uri = "/x?a=1;api_key=b&api_key=a".parse().unwrap();
        assert_eq!(query(&uri, "api_key"), Found::Ambiguous);
        let uri: Uri = "/x?a=1&api_key=k%2By+z&b".parse().unwrap();
        assert_eq!(value(query(&uri, "api_key")).unwrap(), b"k+y z");
        let uri: Uri = "/x?api_key=1&api_key=2".parse().unwrap();
        assert_eq!(query(&uri, "api_key"), Found::Ambiguous);
        let uri: Uri = "/x?api_key=%zz".parse().unwrap();
        assert_eq!(query(&uri, "api_key"), Found::Ambiguous);
        let uri: Uri = "/x?api_key=%+1".parse().unwrap();
        assert_eq!(query(&uri, "api_key"), Found::Ambiguous);
        // An encoded name is the same name.
        let uri: Uri = "/x?api_key=a&api%5Fkey=b".parse().unwrap();
        assert_eq!(query(&uri, "api_key"), Found::Ambiguous);
        let uri: Uri = "/x?api%5fkey=b".parse().unwrap();
        assert_eq!(value(query(&uri, "api_key")).unwrap(), b"b");
    }

    #[test]
    fn api_keys_in_the_query_are_redacted_for_the_log() {
        let secret = ["api_key".to_string()];
        assert_eq!(
            redact_query("/p?a=1&api_key=s3cret&b=2", &secret),
            "/p?a=1&api_key=REDACTED&b=2"
        );
        assert_eq!(
            redact_query("/p?api%5Fkey=s3cret", &secret),
            "/p?api%5Fkey=REDACTED"
        );
        assert_eq!(
            redact_query("/p?x=1;api_key=s3cret", &secret),
            "/p?x=REDACTED"
        );
        assert!(matches!(
            redact_query("/p?a=1", &secret),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(redact_query("/p?api_key=s", &[]), "/p?api_key=s");
    }

    #[test]
    fn stripping_leaves_everything_else() {
        let mut h = map(&[("cookie", "a=1; tok=x; b=2"), ("cookie", "tok=y")]);
        strip_cookie(&mut h, "tok");
        let fields: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(fields, ["a=1; b=2"]);
        let mut uri: Uri = "/p?a=1&api_key=s&b=2".parse().unwrap();
        strip_query(&mut uri, "api_key");
        assert_eq!(uri, "/p?a=1&b=2");
        let mut uri: Uri = "/p?api_key=s".parse().unwrap();
        strip_query(&mut uri, "api_key");
        assert_eq!(uri, "/p");
        let mut uri: Uri = "/p?api%5Fkey=s&x=1".parse().unwrap();
        strip_query(&mut uri, "api_key");
        assert_eq!(uri, "/p?x=1");
    }
}
