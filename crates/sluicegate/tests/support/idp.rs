//! An identity provider for the auth tests: a JWK-set server on 127.0.0.1 (counting its
//! fetches, able to fail or stop), and the keys it signs tokens with.
//!
//! The RSA keys are Project Wycheproof's (their private JWKs, read from
//! `../shared/vectors/wycheproof/`): `ring` signs with RSA keys but cannot make them. EC keys
//! are made fresh by `ring`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};

/// A key tokens are signed with.
pub struct Signer {
    pub kid: String,
    pub alg: &'static str,
    key: SigningKey,
    /// The public JWK (with `kid`, without `alg`).
    pub jwk: Value,
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn wycheproof_rsa(kid: &str) -> Value {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/wycheproof/json_web_signature_test.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g.get("private"))
        .find(|k| k["kid"] == kid && k.get("d").is_some())
        .cloned()
        .unwrap_or_else(|| panic!("no private RSA key {kid} in the vectors"))
}

impl Signer {
    /// An RS256 signer with one of the Wycheproof RSA keys (`kid-rsa-sign`, `RS256_2048`,
    /// `RS384_2048`, ...), published under `kid`.
    pub fn rsa(vector_kid: &str, kid: &str) -> Signer {
        let jwk = wycheproof_rsa(vector_kid);
        let part = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        let components = ring::rsa::KeyPairComponents {
            public_key: ring::rsa::PublicKeyComponents {
                n: part("n"),
                e: part("e"),
            },
            d: part("d"),
            p: part("p"),
            q: part("q"),
            dP: part("dp"),
            dQ: part("dq"),
            qInv: part("qi"),
        };
        let key = RsaKeyPair::from_components(&components).expect("RSA key");
        Signer {
            kid: kid.into(),
            alg: "RS256",
            key: SigningKey::Rsa(key),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "n": jwk["n"], "e": jwk["e"]}),
        }
    }

    /// A fresh ES256 signer.
    pub fn ec(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = key.public_key().as_ref().to_vec();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        });
        Signer {
            kid: kid.into(),
            alg: "ES256",
            key: SigningKey::Ec(key),
            jwk,
        }
    }

    /// A token with this header (as JSON text) and claims, signed by this key.
    pub fn sign_raw(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let rng = SystemRandom::new();
        let signature = match &self.key {
            SigningKey::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut out,
                )
                .unwrap();
                out
            }
            SigningKey::Ec(key) => key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&signature))
    }

    /// A token with the usual header (`alg`, `kid`) and these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.alg, "typ": "JWT", "kid": self.kid});
        self.sign_raw(&header.to_string(), &claims.to_string())
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A JWK-set server.
pub struct Idp {
    pub addr: SocketAddr,
    /// Serves HTTPS with this when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<IdpState>,
    runtime: tokio::runtime::Runtime,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct IdpState {
    jwks: Mutex<Value>,
    fetches: AtomicUsize,
    failing: AtomicBool,
    cache_control: Mutex<Option<String>>,
}

impl Idp {
    /// Starts serving `{"keys": [...]}` of these keys at `/jwks.json`.
    pub fn start(keys: &[&Signer]) -> Idp {
        Idp::start_on("127.0.0.1:0".parse().unwrap(), keys)
    }

    /// As [`Idp::start`], on a chosen address (an IdP that comes up late).
    pub fn start_on(addr: SocketAddr, keys: &[&Signer]) -> Idp {
        Idp::serve(addr, keys, None)
    }

    /// As [`Idp::start`], over HTTPS with the certificate of `certs` (for 127.0.0.1).
    pub fn start_tls(keys: &[&Signer], certs: &super::upstream::Certs) -> Idp {
        let pair = sluicegate::tls::CertPair {
            cert: certs.cert.clone(),
            key: certs.key.clone(),
        };
        let config = sluicegate::tls::server_config(&pair, &[], &[b"http/1.1"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Idp::serve("127.0.0.1:0".parse().unwrap(), keys, Some(acceptor))
    }

    fn serve(addr: SocketAddr, keys: &[&Signer], tls: Option<tokio_rustls::TlsAcceptor>) -> Idp {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(IdpState {
            jwks: Mutex::new(
                json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}),
            ),
            fetches: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            cache_control: Mutex::new(None),
        });
        let idp = Idp {
            addr,
            tls,
            state,
            runtime,
            task: Mutex::new(None),
        };
        let bound = idp.listen();
        Idp { addr: bound, ..idp }
    }

    fn listen(&self) -> SocketAddr {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .expect("bind the IdP");
        let bound = listener.local_addr().unwrap();
        let state = Arc::clone(&self.state);
        let tls = self.tls.clone();
        let task = self.runtime.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&state);
                let tls = tls.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| serve(Arc::clone(&state), req));
                    let http = http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
        bound
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/jwks.json", self.addr)
    }

    /// Key-set fetches served so far (failed ones included).
    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// Publishes these keys from now on.
    pub fn publish(&self, keys: &[&Signer]) {
        *self.state.jwks.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    /// Answers 503 from now on (or again normally).
    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub fn set_cache_control(&self, value: &str) {
        *self.state.cache_control.lock().unwrap() = Some(value.into());
    }

    /// Stops listening and drops every open connection.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
            // The listener and the connections go with the task.
            let _ = self.runtime.block_on(task);
        }
    }

    /// Listens again on the same address.
    pub fn resume(&self) {
        self.listen();
    }
}

async fn serve(
    state: Arc<IdpState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/jwks.json" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    }
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if state.failing.load(Ordering::SeqCst) {
        let mut r = Response::new(Full::new(Bytes::from_static(b"down")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(r);
    }
    let body = state.jwks.lock().unwrap().to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if let Some(cc) = state.cache_control.lock().unwrap().clone() {
        r.headers_mut().insert("cache-control", cc.parse().unwrap());
    }
    Ok(r)
}

/// An address nothing listens on (yet).
pub fn free_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
