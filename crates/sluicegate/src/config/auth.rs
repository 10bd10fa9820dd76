//! `[auth.NAME]`: the authentication policies routes name with `auth = "NAME"` (SPEC 2.3), and
//! the API-key file format, which the running policy re-reads when the file changes.

use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use http::{HeaderName, HeaderValue};

use super::model::{
    ApiKeyConfig, ApiKeyEntry, ApiKeyFrom, AuthConfig, AuthKind, JwtConfig, JwtKeys, TokenFrom,
    DEFAULT_JWKS_MAX_REFRESH, DEFAULT_JWKS_MIN_REFRESH, DEFAULT_JWT_LEEWAY,
};
use super::raw::{Reader, Table};
use crate::jose::{self, Algorithm};

/// Request fields the gateway writes itself: `forward_claims` may not name them.
/// Credentials and hop-by-hop fields are not claim-shaped either.
const OWN_FIELDS: &[&str] = &[
    "x-consumer",
    "authorization",
    "proxy-authorization",
    "cookie",
    "keep-alive",
    "proxy-connection",
    "expect",
    "tracestate",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "traceparent",
];

/// A policy with where it was declared, for cross-checks against the routes that name it.
pub struct RawAuth {
    pub config: AuthConfig,
}

/// `[auth.NAME]`, each a table.
pub fn policies(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Vec<RawAuth> {
    r.named_tables(t, "type = \"api_key\" or \"jwt\", ...")
        .into_iter()
        .filter_map(|(name, table)| policy(r, &table, name))
        .map(|config| RawAuth { config })
        .collect()
}

fn policy(r: &mut Reader<'_>, t: &Table<'_, '_>, name: &str) -> Option<AuthConfig> {
    let (kind, kind_span) = r.required_string(t, "type", "\"api_key\" or \"jwt\"")?;
    let strip_credentials = r.bool(t, "strip_credentials").unwrap_or(false);
    let kind = match kind {
        "api_key" => AuthKind::ApiKey(api_key(r, t)?),
        "jwt" => AuthKind::Jwt(Box::new(jwt(r, t)?)),
        other => {
            r.report(
                kind_span,
                format!(
                    "{}: unknown type \"{other}\"; expected \"api_key\" or \"jwt\"",
                    t.key_path("type")
                ),
            );
            return None;
        }
    };
    Some(AuthConfig {
        name: name.to_string(),
        kind,
        strip_credentials,
    })
}

fn api_key(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<ApiKeyConfig> {
    r.check_keys(
        t,
        &[
            "type",
            "strip_credentials",
            "header",
            "query",
            "keys",
            "keys_file",
        ],
        &[],
    );
    let from = match (r.string(t, "header"), r.string(t, "query")) {
        (Some(_), Some((_, span))) => {
            r.report(
                span,
                format!(
                    "{}: give either header or query, not both",
                    t.key_path("query")
                ),
            );
            return None;
        }
        (Some((name, span)), None) => ApiKeyFrom::Header(header_name(r, t, "header", name, span)?),
        (None, Some((name, span))) => {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'&' && b != b'=')
            {
                r.report(
                    span,
                    format!(
                        "{}: \"{name}\" is not a query parameter name",
                        t.key_path("query")
                    ),
                );
                return None;
            }
            ApiKeyFrom::Query(name.to_string())
        }
        (None, None) => ApiKeyFrom::Header(HeaderName::from_static("x-api-key")),
    };
    let mut keys = Vec::new();
    let mut ok = true;
    for entry in r.tables(t, "keys") {
        match key_entry(r, &entry) {
            Some(k) => keys.push(k),
            None => ok = false,
        }
    }
    // The file's keys are checked now (a config naming a broken file is refused); the running
    // policy reads the file itself, and again whenever it changes.
    let mut file_keys = Vec::new();
    let keys_file = match r.string(t, "keys_file") {
        None => None,
        Some((path, span)) => match read_api_keys(Path::new(path)) {
            Ok(read) => {
                file_keys = read;
                Some(PathBuf::from(path))
            }
            Err(why) => {
                r.report(span, format!("{}: {why}", t.key_path("keys_file")));
                return None;
            }
        },
    };
    if keys.is_empty() && keys_file.is_none() {
        if ok {
            r.missing(
                t,
                "keys",
                "at least one API key as { sha256, consumer, scopes }, or a keys_file",
            );
        }
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    for k in keys.iter().chain(&file_keys) {
        if !seen.insert(k.sha256) {
            r.report(
                t.span.clone(),
                format!(
                    "{}: two keys have the same sha256 (consumer \"{}\"); each key must be unique",
                    t.path, k.consumer
                ),
            );
            ok = false;
        }
    }
    ok.then_some(ApiKeyConfig {
        from,
        keys,
        keys_file,
    })
}

fn key_entry(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<ApiKeyEntry> {
    r.check_keys(t, &["sha256", "consumer", "scopes"], &[]);
    let digest = r.required_string(t, "sha256", "the key's SHA-256, 64 hex digits");
    let consumer = r.required_string(t, "consumer", "the name the key's requests go upstream as");
    let scopes = r.strings(t, "scopes").unwrap_or_default();
    let (digest, digest_span) = digest?;
    let sha256 = match parse_sha256(digest) {
        Ok(d) => d,
        Err(why) => {
            r.report(digest_span, format!("{}: {why}", t.key_path("sha256")));
            return None;
        }
    };
    let (consumer, consumer_span) = consumer?;
    if let Err(why) = check_consumer(consumer) {
        r.report(consumer_span, format!("{}: {why}", t.key_path("consumer")));
        return None;
    }
    Some(ApiKeyEntry {
        sha256,
        consumer: consumer.to_string(),
        scopes: scopes.into_iter().map(|(s, _)| s.to_string()).collect(),
    })
}

fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "expected 64 hex digits (the SHA-256 of the key, e.g. from `printf %s KEY | sha256sum`), found {} characters",
            text.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).unwrap_or("00");
        out[i] = u8::from_str_radix(hex, 16).unwrap_or(0);
    }
    Ok(out)
}

/// A consumer name goes upstream as `x-consumer` and into logs and Redis keys: 1 to 256 bytes
/// that can be a header value as they are (no control characters, no spaces at the ends, which
/// an upstream's parser would trim).
pub fn check_consumer(consumer: &str) -> Result<(), String> {
    if consumer.is_empty() || consumer.len() > 256 {
        return Err("a consumer name is 1 to 256 bytes".into());
    }
    if HeaderValue::from_str(consumer).is_err() || consumer.trim() != consumer {
        return Err(format!(
            "\"{consumer}\" cannot be a header value (control characters, or spaces at its ends)"
        ));
    }
    Ok(())
}

/// The `keys_file` format: `[[keys]]` tables as in the config.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyLine>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLine {
    sha256: String,
    consumer: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Reads an API-key file: TOML, `[[keys]]` tables with `sha256`, `consumer` and `scopes`.
/// The error names the file and, for a syntax problem, its line and column.
pub fn read_api_keys(path: &Path) -> Result<Vec<ApiKeyEntry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_api_keys(&text).map_err(|why| format!("{}: {why}", path.display()))
}

/// [`read_api_keys`] on text already read.
pub fn parse_api_keys(text: &str) -> Result<Vec<ApiKeyEntry>, String> {
    let file: KeysFile = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{line}:{col}: ")
            })
            .unwrap_or_default();
        format!("{at}{}", e.message().trim())
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(file.keys.len());
    for (i, line) in file.keys.into_iter().enumerate() {
        let sha256 =
            parse_sha256(&line.sha256).map_err(|why| format!("keys[{i}].sha256: {why}"))?;
        check_consumer(&line.consumer).map_err(|why| format!("keys[{i}].consumer: {why}"))?;
        if !seen.insert(sha256) {
            return Err(format!("keys[{i}]: the same sha256 as an earlier key"));
        }
        out.push(ApiKeyEntry {
            sha256,
            consumer: line.consumer,
            scopes: line.scopes,
        });
    }
    Ok(out)
}

fn jwt(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<JwtConfig> {
    r.check_keys(
        t,
        &[
            "type",
            "strip_credentials",
            "algorithms",
            "secret",
            "keys_file",
            "jwks_url",
            "ca",
            "issuer",
            "audience",
            "consumer_claim",
            "scopes_claim",
            "leeway",
            "require_exp",
            "jwks_min_refresh",
            "jwks_max_refresh",
            "forward_claims",
            "header",
            "cookie",
        ],
        &[],
    );
    let algorithms = algorithms(r, t);
    let keys = jwt_keys(r, t, algorithms.as_deref());
    let from = token_from(r, t);
    let issuer = r.string(t, "issuer").map(|(s, _)| s.to_string());
    let audiences = match t.get("audience").map(|v| v.get_ref()) {
        None => Vec::new(),
        Some(toml::de::DeValue::String(s)) => vec![s.to_string()],
        Some(_) => r
            .strings(t, "audience")
            .unwrap_or_default()
            .into_iter()
            .map(|(s, _)| s.to_string())
            .collect(),
    };
    let leeway = r.duration(t, "leeway").unwrap_or(DEFAULT_JWT_LEEWAY);
    let require_exp = r.bool(t, "require_exp").unwrap_or(true);
    let consumer_claim = r
        .string(t, "consumer_claim")
        .map_or("sub".to_string(), |(s, _)| s.to_string());
    let scopes_claim = r
        .string(t, "scopes_claim")
        .map_or("scope".to_string(), |(s, _)| s.to_string());
    let min_refresh = r
        .duration(t, "jwks_min_refresh")
        .unwrap_or(DEFAULT_JWKS_MIN_REFRESH);
    let max_refresh = r
        .duration(t, "jwks_max_refresh")
        .unwrap_or(DEFAULT_JWKS_MAX_REFRESH);
    if min_refresh.is_zero() || min_refresh > max_refresh {
        let span = t
            .get("jwks_min_refresh")
            .or(t.get("jwks_max_refresh"))
            .map_or(t.span.clone(), |v| v.span());
        r.report(
            span,
            format!(
                "{}: jwks_min_refresh must be more than zero and at most jwks_max_refresh",
                t.path
            ),
        );
    }
    let forward_claims = forward_claims(r, t);
    Some(JwtConfig {
        algorithms: algorithms?,
        keys: keys?,
        from: from?,
        rules: jose::claims::Rules {
            issuer,
            audiences,
            leeway,
            require_exp,
        },
        consumer_claim,
        scopes_claim,
        forward_claims: forward_claims?,
        jwks_min_refresh: min_refresh,
        jwks_max_refresh: max_refresh,
    })
}

fn algorithms(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<Vec<Algorithm>> {
    let names = if t.get("algorithms").is_none() {
        r.missing(
            t,
            "algorithms",
            "the algorithms tokens may use, e.g. [\"RS256\"]",
        );
        return None;
    } else {
        r.strings(t, "algorithms")?
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (name, span) in names {
        match Algorithm::from_name(name) {
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => {}
            None => {
                let why = if name.eq_ignore_ascii_case("none") {
                    "\"none\" (an unsigned token) is never accepted".to_string()
                } else {
                    let all: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
                    format!(
                        "unknown algorithm \"{name}\"; supported: {}",
                        all.join(", ")
                    )
                };
                r.report(span, format!("{}: {why}", t.key_path("algorithms")));
                ok = false;
            }
        }
    }
    if ok && out.is_empty() {
        r.report(
            t.get("algorithms").map_or(t.span.clone(), |v| v.span()),
            format!("{}: name at least one algorithm", t.key_path("algorithms")),
        );
        return None;
    }
    ok.then_some(out)
}

fn jwt_keys(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    algorithms: Option<&[Algorithm]>,
) -> Option<JwtKeys> {
    let secret = r.string(t, "secret");
    let file = r.string(t, "keys_file");
    let url = r.string(t, "jwks_url");
    let ca = r.string(t, "ca");
    let given = [secret.is_some(), file.is_some(), url.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        r.report(
            t.span.clone(),
            format!(
                "{}: give exactly one key source: secret (HS256/384/512), keys_file (a JWK set on disk) or jwks_url",
                t.path
            ),
        );
        return None;
    }
    if let (Some((_, span)), None) = (&ca, &url) {
        r.report(
            span.clone(),
            format!(
                "{}: a CA verifies a jwks_url server; there is none here",
                t.key_path("ca")
            ),
        );
    }
    let algorithms = algorithms?;
    let hmac: Vec<Algorithm> = algorithms.iter().copied().filter(|a| a.is_hmac()).collect();
    let public: Vec<Algorithm> = algorithms
        .iter()
        .copied()
        .filter(|a| !a.is_hmac())
        .collect();
    let algorithms_span = t.get("algorithms").map_or(t.span.clone(), |v| v.span());
    if let Some((secret, span)) = secret {
        if let Some(a) = public.first() {
            r.report(
                algorithms_span,
                format!(
                    "{}: {a} verifies with a public key; a secret verifies only HS256, HS384 and HS512",
                    t.key_path("algorithms")
                ),
            );
            return None;
        }
        // RFC 7518 §3.2 asks for a secret at least as long as the hash; a shorter one is
        // accepted (issuers that use one exist, and the gateway cannot change them) and warned
        // about when the policy starts (`policy/auth`).
        if secret.is_empty() {
            r.report(span, format!("{}: an empty secret", t.key_path("secret")));
            return None;
        }
        return Some(JwtKeys::Secret(secret.as_bytes().to_vec()));
    }
    if let Some(a) = hmac.first() {
        r.report(
            algorithms_span,
            format!(
                "{}: {a} needs a shared secret (secret = \"...\"); HMAC keys are never taken from a key set, so a public key can never be used as one",
                t.key_path("algorithms")
            ),
        );
        return None;
    }
    if let Some((path, span)) = file {
        let checked = std::fs::read(path)
            .map_err(|e| format!("cannot read {path}: {e}"))
            .and_then(|bytes| {
                jose::jwk::KeySet::from_jwks(&bytes).map_err(|e| format!("{path}: {e}"))
            });
        return match checked {
            Ok(_) => Some(JwtKeys::File(PathBuf::from(path))),
            Err(why) => {
                r.report(span, format!("{}: {why}", t.key_path("keys_file")));
                None
            }
        };
    }
    let (url_text, url_span) = url?;
    let url = match check_jwks_url(url_text) {
        Ok(url) => url,
        Err(why) => {
            r.report(url_span, format!("{}: {why}", t.key_path("jwks_url")));
            return None;
        }
    };
    let ca = match ca {
        None => None,
        Some((path, span)) => match crate::tls::client_config(Some(Path::new(path)), false, &[]) {
            Ok(_) => Some(PathBuf::from(path)),
            Err(e) => {
                r.report(span, format!("{}: {e}", t.key_path("ca")));
                return None;
            }
        },
    };
    Some(JwtKeys::Url { url, ca })
}

/// `https://…`, or `http://…` to a loopback address (a key set fetched in clear over a network
/// could be replaced by anyone on the path).
fn check_jwks_url(text: &str) -> Result<http::Uri, String> {
    let url: http::Uri = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a URL"))?;
    let host = url.host().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("\"{text}\" names no host"));
    }
    if url.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "a user name or password in the URL is not supported (it would be logged); use a URL without one".into(),
        );
    }
    match url.scheme_str() {
        Some("https") => Ok(url),
        Some("http") => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let loopback =
                bare == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(url)
            } else {
                Err(format!(
                    "\"{text}\": a key set must be fetched over https (http only from a loopback address)"
                ))
            }
        }
        _ => Err(format!("\"{text}\": expected an https:// URL")),
    }
}

fn token_from(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<TokenFrom> {
    match (r.string(t, "header"), r.string(t, "cookie")) {
        (Some(_), Some((_, span))) => {
            r.report(
                span,
                format!(
                    "{}: give either header or cookie, not both",
                    t.key_path("cookie")
                ),
            );
            None
        }
        (Some((name, span)), None) => {
            let name = header_name(r, t, "header", name, span)?;
            Some(if name == http::header::AUTHORIZATION {
                TokenFrom::Bearer
            } else {
                TokenFrom::Header(name)
            })
        }
        (None, Some((name, span))) => {
            // RFC 6265 §4.1.1: a cookie name is an RFC 7230 token.
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                r.report(
                    span,
                    format!("{}: \"{name}\" is not a cookie name", t.key_path("cookie")),
                );
                return None;
            }
            Some(TokenFrom::Cookie(name.to_string()))
        }
        (None, None) => Some(TokenFrom::Bearer),
    }
}

fn forward_claims(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<Vec<(HeaderName, String)>> {
    let Some(table) = r.table(t, "forward_claims") else {
        return Some(Vec::new());
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (name, value) in table.inner.iter() {
        let header: &str = name.get_ref();
        let path = table.key_path(header);
        let toml::de::DeValue::String(claim) = value.get_ref() else {
            r.report(
                value.span(),
                format!("{path}: expected the claim's name, a string"),
            );
            ok = false;
            continue;
        };
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) if OWN_FIELDS.contains(&h.as_str()) => {
                r.report(
                    name.span(),
                    format!("{path}: {h} is a field the gateway writes itself"),
                );
                ok = false;
            }
            Ok(h) => out.push((h, claim.to_string())),
            Err(_) => {
                r.report(
                    name.span(),
                    format!("{path}: \"{header}\" is not a header name"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn header_name(
    r: &mut Reader<'_>,
    t: &Table<'_, '_>,
    key: &str,
    name: &str,
    span: Range<usize>,
) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            r.report(
                span,
                format!("{}: \"{name}\" is not a valid header name", t.key_path(key)),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_toml_keys_tables_with_positions_in_errors() {
        let digest = "a".repeat(64);
        let text =
            format!("[[keys]]\nsha256 = \"{digest}\"\nconsumer = \"acme\"\nscopes = [\"r\"]\n");
        let keys = parse_api_keys(&text).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].consumer, "acme");
        assert_eq!(keys[0].sha256, [0xaa; 32]);
        let err = parse_api_keys("[[keys]]\nsha256 = 1\n").unwrap_err();
        assert!(err.starts_with("2:"), "{err}");
        let err = parse_api_keys("[[keys]]\nsha256 = \"ab\"\nconsumer = \"x\"\n").unwrap_err();
        assert!(err.contains("64 hex digits"), "{err}");
        let twice = format!("{text}{text}");
        assert!(parse_api_keys(&twice).unwrap_err().contains("same sha256"));
    }

    #[test]
    fn jwks_urls_are_https_or_loopback_http() {
        assert!(check_jwks_url("https://idp.example.com/jwks.json").is_ok());
        assert!(check_jwks_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_jwks_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_jwks_url("http://localhost/jwks").is_ok());
        assert!(check_jwks_url("http://idp.example.com/jwks").is_err());
        assert!(check_jwks_url("ftp://idp/jwks").is_err());
        assert!(check_jwks_url("jwks.json").is_err());
        assert!(check_jwks_url("https://user:pw@idp/jwks").is_err());
    }
}
