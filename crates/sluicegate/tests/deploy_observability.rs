//! The monitoring files of `deploy/` against the real tools and the real gateway:
//! `deploy/prometheus/alerts.yml` passes `promtool check rules` and its unit tests
//! (`alerts_test.yml`), and every PromQL expression of the Grafana dashboard
//! `deploy/grafana/sluicegate.json` returns data from a real Prometheus server scraping a real
//! gateway that the test drives through every feature the dashboard shows. The alert rules are
//! loaded into that server too: each must evaluate without error, use only metrics and labels
//! the gateway exports, and the alerts whose condition the test creates must hold.
//!
//! Needs `promtool` and `prometheus` on PATH (Debian's `prometheus` package; `scripts/test`
//! installs it): without them the tests fail, they do not skip.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::idp::{free_address, now, Idp, Signer};
use support::{Backend, Client, Gateway, TempDir, Toml};

/// What `$__rate_interval` (and `$__interval`, `$__range`) become: long enough to cover the
/// whole test's traffic, so every rate has at least two samples of every series.
const RATE_INTERVAL: &str = "30s";

/// The most the test with the gateway and Prometheus may take (about 11 s on an idle 2-core
/// machine, most of it Prometheus's 5 s wait before its first scrape); every wait stops here.
const TEST_BUDGET: Duration = Duration::from_secs(55);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy_file(relative: &str) -> PathBuf {
    repo_root().join("deploy").join(relative)
}

/// Runs a tool of Debian's `prometheus` package; fails the test (never skips) without it.
fn run_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{tool}` ({e}): install Debian's `prometheus` package \
                 (apt-get install prometheus; scripts/test does it)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{tool} {}` failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let check = run_tool(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
    );
    assert!(check.contains("SUCCESS"), "{check}");
    let tests = run_tool(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
    );
    assert!(tests.contains("SUCCESS"), "{tests}");
    // Every alert has unit tests.
    let rules = std::fs::read_to_string(deploy_file("prometheus/alerts.yml")).unwrap();
    let unit_tests = std::fs::read_to_string(deploy_file("prometheus/alerts_test.yml")).unwrap();
    for name in alert_names(&rules) {
        assert!(
            unit_tests.contains(&format!("alertname: {name}\n")),
            "alerts_test.yml does not test {name}"
        );
    }
}

#[test]
fn every_runbook_url_points_at_a_heading_of_the_operations_guide() {
    let rules = std::fs::read_to_string(deploy_file("prometheus/alerts.yml")).unwrap();
    let guide = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let anchors: BTreeSet<String> = guide
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| github_anchor(l.trim_start_matches('#')))
        .collect();
    let urls: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url:"))
        .map(|u| u.trim().trim_matches('"'))
        .collect();
    assert_eq!(
        urls.len(),
        alert_names(&rules).len(),
        "one runbook per alert"
    );
    for url in urls {
        let anchor = url
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{url}: not an anchor of docs/operations.md"));
        assert!(
            anchors.contains(anchor),
            "{url}: docs/operations.md has no heading with that anchor"
        );
    }
}

fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as `-`.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

// ---- the dashboard against a real Prometheus scraping a real gateway ------------------------

/// One query of the dashboard: where it is, the PromQL as written, its legend.
struct Query {
    place: String,
    expr: String,
    legend: String,
}

/// Every `targets[].expr` of every panel (rows' nested panels included).
fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    fn walk(panels: &Value, out: &mut Vec<Query>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(Query {
                        place: format!("panel {title:?} target {}", target["refId"]),
                        expr: expr.to_string(),
                        legend: target["legendFormat"].as_str().unwrap_or("").to_string(),
                    });
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The template variables (other than the data source), name and query.
fn dashboard_variables(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = match &v["query"] {
                Value::String(q) => q.clone(),
                other => other["query"].as_str().expect("variable query").to_string(),
            };
            (v["name"].as_str().expect("name").to_string(), query)
        })
        .collect()
}

/// Grafana's substitution, as "All" of every variable: `$__rate_interval` and its kin become
/// a duration, every template variable `.*` (so each must sit in a `=~` matcher).
fn substitute(place: &str, expr: &str, variables: &[String]) -> String {
    let mut out = expr.to_string();
    for builtin in ["__rate_interval", "__interval", "__range"] {
        out = out
            .replace(&format!("${{{builtin}}}"), RATE_INTERVAL)
            .replace(&format!("${builtin}"), RATE_INTERVAL);
    }
    let mut names: Vec<&String> = variables.iter().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        for written in [format!("${{{name}}}"), format!("${name}")] {
            for (at, _) in out.match_indices(&format!("\"{written}\"")) {
                assert!(
                    out[..at].ends_with("=~"),
                    "{place}: ${name} must be matched with =~ (it may hold several values): {expr}"
                );
            }
            out = out.replace(&written, ".*");
        }
    }
    assert!(
        !out.contains('$'),
        "{place}: unknown variable left in {out}"
    );
    out
}

/// `label_values(SELECTOR, LABEL)` as a PromQL query whose series carry LABEL.
fn label_values_query(query: &str) -> (String, String) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("variable query {query:?} is not label_values(SELECTOR, LABEL)"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("variable query {query:?} names no label"));
    let label = label.trim().to_string();
    (format!("count by ({label}) ({})", selector.trim()), label)
}

/// A Prometheus server on a free loopback port, its data in a temporary directory, scraping
/// the gateway's admin `/metrics` every second under `job="sluicegate"` and evaluating
/// `alerts.yml` every second. Killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    /// No wait goes past this.
    deadline: Instant,
}

impl Prometheus {
    fn start(target: SocketAddr, deadline: Instant) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let rules = deploy_file("prometheus/alerts.yml");
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: sluicegate\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules.display()
            ),
        );
        // The kernel's free port, released for Prometheus to bind.
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prometheus` ({e}): install Debian's `prometheus` package \
                     (apt-get install prometheus; scripts/test does it)"
                )
            });
        let mut prometheus = Prometheus {
            child,
            addr,
            dir,
            deadline,
        };
        prometheus.wait("Prometheus to be ready", Duration::from_secs(20), |p| {
            TcpStream::connect(p.addr).is_ok()
                && Client::connect(p.addr).get("/-/ready").status == 200
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// Polls `done` every 100 ms; fails with Prometheus's log if it does not hold in time or
    /// Prometheus exits.
    fn wait(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Self) -> bool) {
        let deadline = (Instant::now() + timeout).min(self.deadline);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}); its log:\n{}", self.log());
            }
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what} (at most {timeout:?}, within the test's {TEST_BUDGET:?}); Prometheus's log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn api(&self, path_and_query: &str) -> Value {
        let r = Client::connect(self.addr).get(path_and_query);
        let body = r.json();
        assert_eq!(r.status, 200, "GET {path_and_query}: {body}");
        body
    }

    /// An instant query: the result vector, or a failure naming `place` when Prometheus refuses
    /// the expression.
    fn query(&self, place: &str, expr: &str) -> Vec<Value> {
        let r = Client::connect(self.addr).get(&format!("/api/v1/query?query={}", encode(expr)));
        let body = r.json();
        assert!(
            r.status == 200 && body["status"] == "success",
            "{place}: Prometheus refused {expr}: {body}"
        );
        match body["data"]["resultType"].as_str() {
            Some("vector") => body["data"]["result"].as_array().unwrap().clone(),
            Some("scalar") => vec![json!({"metric": {}, "value": body["data"]["result"]})],
            other => panic!("{place}: {expr} gave a {other:?}, not an instant vector"),
        }
    }

    /// Scrapes of the gateway in the last `window`.
    fn scrapes_within(&self, window: Duration) -> usize {
        let expr = format!(
            "count_over_time(up{{job=\"sluicegate\"}}[{}ms])",
            window.as_millis().max(1)
        );
        self.query("scrape count", &expr)
            .first()
            .map_or(0, |s| value(s) as usize)
    }

    /// Waits until Prometheus has scraped the gateway `n` times after now.
    fn wait_scrapes(&mut self, n: usize) {
        let from = Instant::now();
        self.wait(
            &format!("{n} scrapes of the gateway"),
            Duration::from_secs(15),
            |p| p.scrapes_within(from.elapsed()) >= n,
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- prometheus log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The sample value of one result series (NaN counts as a value: the series is there).
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The backends, identity provider and files the gateway's config points at.
struct World {
    app: [Backend; 2],
    broken: Backend,
    ill: Backend,
    idp: Idp,
    signer: Signer,
    idp_down: SocketAddr,
    discovery_file: PathBuf,
    access_log: PathBuf,
}

/// A config exercising every feature the dashboard shows: routes to a healthy service (with
/// retries), a cache, a rate limit, an API-key policy, a JWT policy whose identity provider
/// works and one whose identity provider never answers, a service that fails until its breaker opens, one whose
/// only endpoint fails its health checks, one with a discovery file, and load shedding under
/// "memory pressure" (a threshold of a millionth) that refuses every route but the critical
/// ones.
fn config(w: &World) -> String {
    let critical = "priority = \"critical\"";
    let route = |path: &str, extra: &str| {
        format!("match = {{ path_prefix = \"{path}\" }}\n{critical}\n{extra}")
    };
    let checks = "[services.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1";
    Toml::new()
        .access_log(w.access_log.to_str().unwrap())
        .admin()
        // Long enough for the idle connection the test holds open to outlive the test.
        .listener("public", "request_header_timeout = \"60s\"")
        .route(
            "api",
            "app",
            &route(
                "/api",
                "strip_prefix = true\nretry = { attempts = 2, on = [\"5xx\"], budget_percent = 100 }",
            ),
        )
        .route("cached", "app", &route("/cached", "cache = { ttl = \"60s\" }"))
        .route("limited", "app", &route("/limited", "rate_limit = \"per-client\""))
        .route("partner", "app", &route("/partner", "auth = \"partners\""))
        .route("users", "app", &route("/users", "auth = \"users-jwt\""))
        .route("legacy", "app", &route("/legacy", "auth = \"legacy-jwt\""))
        .route("fail", "broken", &route("/fail", ""))
        .route("sick", "sick", &route("/sick", ""))
        .route(
            "reports",
            "app",
            "match = { path_prefix = \"/reports\" }\npriority = \"normal\"",
        )
        .route(
            "batch",
            "app",
            "match = { path_prefix = \"/batch\" }\npriority = \"low\"",
        )
        .service("app", &[w.app[0].addr, w.app[1].addr], checks)
        .service(
            "broken",
            &[w.broken.addr],
            "[services.circuit_breaker]\nfailure_rate = 0.5\nminimum_requests = 5\nwindow = \"10s\"\nopen_for = \"60s\"\nhalf_open_requests = 1",
        )
        .service("sick", &[w.ill.addr], checks)
        .service(
            "files",
            &[],
            &format!(
                "discovery = {{ type = \"file\", path = \"{}\" }}",
                w.discovery_file.display()
            ),
        )
        .build()
        + &format!(
            "\n[rate_limits.per-client]\nkey = \"client_ip\"\ncapacity = 3\nrefill_per_second = 0.001\n\
             \n[auth.partners]\ntype = \"api_key\"\nkeys = [ {{ sha256 = \"{}\", consumer = \"acme\" }} ]\n\
             \n[auth.users-jwt]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\njwks_url = \"{}\"\n\
             \n[auth.legacy-jwt]\ntype = \"jwt\"\nalgorithms = [\"ES256\"]\njwks_url = \"http://{}/jwks.json\"\n\
             \n[cache]\nmax_bytes = \"1MiB\"\n\
             \n[load_shedding]\nmax_in_flight = 100\nmemory_threshold = 0.000001\ncpu_threshold = 1.0\n\
             \n[tracing]\nendpoint = \"http://{}\"\nprotocol = \"grpc\"\ntimeout = \"1s\"\n",
            digest("partner-key"),
            w.idp.url(),
            w.idp_down,
            // Nothing listens there: every export fails, so the dropped spans' series exist.
            w.idp_down,
        )
}

/// GET on a fresh connection (the gateway may close one after answering an error itself).
fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> u16 {
    Client::connect(gw.addr())
        .request("GET", path, headers, b"")
        .status
}

/// One round of traffic through every feature; `fail` requests to the failing service.
fn drive(gw: &Gateway, w: &World, fail: usize) {
    let mut c = gw.client();
    for i in 0..20 {
        assert_eq!(c.get(&format!("/api/item/{i}")).status, 200);
    }
    for _ in 0..3 {
        // Both endpoints answer 500: one retry each, then the 500 goes back.
        assert_eq!(get(gw, "/api/status/500", &[]), 500);
    }
    for _ in 0..5 {
        assert_eq!(c.get("/cached/page").status, 200);
    }
    for _ in 0..5 {
        get(gw, "/limited", &[]);
    }
    assert_eq!(get(gw, "/partner", &[("x-api-key", "partner-key")]), 200);
    assert_eq!(get(gw, "/partner", &[("x-api-key", "guess")]), 401);
    assert_eq!(get(gw, "/partner", &[]), 401);
    let token = w.signer.sign(&json!({"sub": "alice", "exp": now() + 600}));
    let bearer = format!("Bearer {token}");
    assert_eq!(get(gw, "/users", &[("authorization", &bearer)]), 200);
    assert_eq!(get(gw, "/legacy", &[("authorization", &bearer)]), 503);
    let mut f = Client::connect(gw.addr());
    for _ in 0..fail {
        let status = f.get("/fail").status;
        assert!(status == 500 || status == 503, "/fail: {status}");
    }
    assert_eq!(get(gw, "/sick", &[]), 503);
    assert_eq!(get(gw, "/reports", &[]), 503);
    assert_eq!(get(gw, "/batch", &[]), 503);
    assert_eq!(get(gw, "/nowhere", &[]), 404);
}

#[test]
fn every_dashboard_query_returns_data_from_prometheus_scraping_a_real_gateway() {
    let started = Instant::now();
    let deadline = started + TEST_BUDGET;
    let up_to = |most: u64| {
        deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(most))
    };
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_file("grafana/sluicegate.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    let variables = dashboard_variables(&dashboard);
    assert!(queries.len() >= 30, "only {} queries", queries.len());
    let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
    let text = serde_json::to_string(&dashboard).unwrap();
    assert_eq!(
        text.matches("\"datasource\":{").count(),
        text.matches(&serde_json::to_string(&datasource).unwrap()).count() + 1,
        "every panel and target reads the ${{datasource}} variable (the one other is Grafana's annotations)"
    );

    let dir = TempDir::new("deploy");
    let signer = Signer::ec("k1");
    let world = World {
        app: [Backend::start("app-1"), Backend::start("app-2")],
        broken: Backend::start("broken"),
        ill: Backend::start("ill"),
        idp: Idp::start(&[&signer]),
        signer,
        idp_down: free_address(),
        discovery_file: dir.0.join("files.json"),
        access_log: dir.0.join("access.log"),
    };
    world.broken.set_status(500);
    world.ill.set_health(500);
    std::fs::write(
        &world.discovery_file,
        format!("[{{\"address\": \"{}\"}}]", world.app[0].addr),
    )
    .unwrap();
    let toml = config(&world);
    let gw = Gateway::start(&toml);
    let admin = gw.admin.expect("admin API");
    let mut prometheus = Prometheus::start(admin, deadline);

    // Prometheus sees the gateway before the traffic, so every counter moves between scrapes.
    prometheus.wait("a successful scrape", Duration::from_secs(15), |p| {
        p.query("up", "up{job=\"sluicegate\"} == 1").len() == 1
    });
    support::wait_until("the sick endpoint to fail its checks", up_to(10), || {
        let series = format!(
            "sluicegate_endpoint_healthy{{service=\"sick\",endpoint=\"{}\"}} 0",
            world.ill.addr
        );
        gw.admin()
            .get("/metrics")
            .text()
            .lines()
            .any(|l| l == series)
    });
    support::wait_until("the IdP's key set", up_to(10), || {
        gw.metric("sluicegate_jwks_keys{policy=\"users-jwt\"}") > 0
    });
    // A reload through the admin API, then one that is refused.
    let reload = |gw: &Gateway| {
        gw.admin()
            .request("POST", "/api/v1/reload", &[], b"")
            .status
    };
    assert_eq!(reload(&gw), 200);
    gw.write_config("[[listeners]]\nname = 1\n");
    assert_eq!(reload(&gw), 400);
    gw.write_config(&toml);
    // The discovery file turns invalid: the service keeps its endpoints, the read fails.
    std::fs::write(&world.discovery_file, "[{\"address\": ").unwrap();
    support::wait_until("a failed discovery read", up_to(10), || {
        gw.metric("sluicegate_discovery_refreshes_total{service=\"files\",result=\"failure\"}") > 0
    });
    // Two rounds of traffic with scrapes between them, so that series that appear with the
    // first request of their kind have moved by the second.
    drive(&gw, &world, 20);
    prometheus.wait_scrapes(2);
    // A connection that stays open to the end, for the connections gauge.
    let mut idle = gw.client();
    assert_eq!(idle.get("/api/idle").status, 200);
    // 400 failing requests: over the 1 request/s that SluicegateHighErrorRatio needs over 5 minutes.
    drive(&gw, &world, 400);
    prometheus.wait_scrapes(3);

    // Every expression of the dashboard returns data; a legend's labels are in the result.
    let names: Vec<String> = variables.iter().map(|(n, _)| n.clone()).collect();
    let mut results: HashMap<String, Vec<Value>> = HashMap::new();
    let mut empty = Vec::new();
    for q in &queries {
        let expr = substitute(&q.place, &q.expr, &names);
        let result = prometheus.query(&q.place, &expr);
        if result.is_empty() {
            empty.push(format!("{}: {expr}", q.place));
            continue;
        }
        for label in legend_labels(&q.legend) {
            if !result.iter().any(|s| s["metric"][&label].is_string()) {
                let seen: BTreeSet<&String> = result
                    .iter()
                    .filter_map(|s| s["metric"].as_object())
                    .flat_map(|m| m.keys())
                    .collect();
                empty.push(format!(
                    "{}: legend {{{{{label}}}}}, but the result's labels are {seen:?}: {expr}",
                    q.place
                ));
            }
        }
        results.insert(q.expr.clone(), result);
    }
    for (name, query) in &variables {
        let (expr, label) = label_values_query(&substitute(name, query, &names));
        let result = prometheus.query(&format!("variable ${name}"), &expr);
        if !result.iter().any(|s| s["metric"][&label].is_string()) {
            empty.push(format!("variable ${name}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data (or without their legend's labels):\n{}",
        empty.join("\n")
    );

    // What the test drove shows in the panels.
    let series = |title: &str| -> Vec<(HashMap<String, String>, f64)> {
        let panel = queries
            .iter()
            .find(|q| q.place.starts_with(&format!("panel {title:?} ")))
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        results[&panel.expr]
            .iter()
            .map(|s| {
                let labels = serde_json::from_value(s["metric"].clone()).unwrap();
                (labels, value(s))
            })
            .collect()
    };
    let positive = |title: &str, labels: &[(&str, &str)]| {
        let all = series(title);
        assert!(
            all.iter().any(|(l, v)| *v > 0.0
                && labels
                    .iter()
                    .all(|(k, want)| l.get(*k).map(String::as_str) == Some(*want))),
            "panel {title:?}: no series {labels:?} above 0 in {all:?}"
        );
    };
    positive("Requests/s", &[]);
    positive("5xx ratio", &[]);
    positive("Requests/s by status", &[("code", "404")]);
    positive("Requests/s by status", &[("code", "429")]);
    positive("5xx ratio by route", &[("route", "fail")]);
    positive(
        "Retries by route and reason",
        &[("route", "api"), ("reason", "5xx")],
    );
    positive(
        "Upstream attempts by outcome",
        &[("service", "broken"), ("outcome", "5xx")],
    );
    positive("Open circuit breakers", &[]);
    positive("Circuit breakers", &[("service", "broken")]);
    positive(
        "Health checks by result",
        &[("service", "sick"), ("result", "failure")],
    );
    positive("Rate-limit decisions", &[("decision", "limited")]);
    positive(
        "Auth decisions",
        &[("policy", "partners"), ("reason", "invalid_key")],
    );
    positive(
        "Auth decisions",
        &[("policy", "users-jwt"), ("reason", "verified")],
    );
    positive(
        "Auth decisions",
        &[("policy", "legacy-jwt"), ("reason", "unavailable")],
    );
    positive("JWT key sets", &[("policy", "users-jwt")]);
    positive("Cache hit ratio by route", &[("route", "cached")]);
    positive("Shed requests by priority", &[("priority", "low")]);
    positive("Shed requests by priority", &[("priority", "normal")]);
    positive("Config reloads", &[("result", "failure")]);
    positive("Connections", &[("listener", "public")]);
    positive("Resident memory", &[]);
    let sick: Vec<_> = series("Healthy endpoints by service")
        .into_iter()
        .filter(|(l, _)| l.get("service").map(String::as_str) == Some("sick"))
        .collect();
    assert!(
        sick.iter().any(|(_, v)| *v == 0.0),
        "service sick shows a healthy endpoint: {sick:?}"
    );

    // The alert rules: loaded and evaluated by this Prometheus without error, each metric and
    // matcher label they use exported by the gateway, and the alerts whose condition the test
    // created hold (they stay pending: every rule has a `for` or a window longer than the test).
    prometheus.wait("every rule to be evaluated", Duration::from_secs(10), |p| {
        rules(p).iter().all(|r| r["health"] != "unknown")
    });
    let rules = rules(&prometheus);
    let rule_file = std::fs::read_to_string(deploy_file("prometheus/alerts.yml")).unwrap();
    assert_eq!(rules.len(), alert_names(&rule_file).len(), "{rules:?}");
    for rule in &rules {
        let name = rule["name"].as_str().unwrap();
        let expr = rule["query"].as_str().unwrap();
        assert_eq!(rule["health"], "ok", "{name}: {}", rule["lastError"]);
        for key in ["summary", "description", "runbook_url"] {
            assert!(rule["annotations"][key].is_string(), "{name}: no {key}");
        }
        assert!(
            rule["labels"]["severity"].is_string(),
            "{name}: no severity"
        );
        for (metric, labels) in selectors(expr) {
            let found = prometheus.query(name, &format!("count({metric})"));
            assert!(
                !found.is_empty(),
                "alert {name}: the gateway exports no {metric}"
            );
            for label in labels {
                let by = prometheus.query(name, &format!("count by ({label}) ({metric})"));
                assert!(
                    by.iter().any(|s| s["metric"][&label].is_string()),
                    "alert {name}: no {metric} series has the label {label}"
                );
            }
        }
    }
    for name in [
        "SluicegateNoHealthyEndpoint",
        "SluicegateHighErrorRatio",
        "SluicegateCircuitBreakerOpen",
        "SluicegateAllCircuitBreakersOpen",
        "SluicegateConfigReloadFailed",
        "SluicegateDiscoveryFailing",
        "SluicegateAuthUnavailable",
        "SluicegateSheddingNormal",
    ] {
        let rule = rules
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no alert {name}"));
        let expr = rule["query"].as_str().unwrap();
        let result = prometheus.query(name, expr);
        assert!(
            !result.is_empty(),
            "alert {name} does not hold although the test created its condition: {expr}"
        );
    }
    for (name, service) in [
        ("SluicegateNoHealthyEndpoint", "sick"),
        ("SluicegateAllCircuitBreakersOpen", "broken"),
        ("SluicegateDiscoveryFailing", "files"),
    ] {
        let rule = rules.iter().find(|r| r["name"] == name).unwrap();
        let result = prometheus.query(name, rule["query"].as_str().unwrap());
        let services: Vec<_> = result.iter().map(|s| &s["metric"]["service"]).collect();
        assert_eq!(services, [service], "alert {name}");
    }
    eprintln!(
        "{} dashboard queries, {} variables and {} alert rules checked in {:?}",
        queries.len(),
        variables.len(),
        rules.len(),
        started.elapsed()
    );
}

fn rules(p: &Prometheus) -> Vec<Value> {
    p.api("/api/v1/rules")["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// `{{label}}` names in a legend format.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

/// The metrics a PromQL expression selects (`up` and `sluicegate_*`), with the label names
/// of their matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let is_name = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut quoted) = (0, false);
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            quoted = !quoted;
        }
        if quoted || !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let len = bytes[i..]
            .iter()
            .position(|c| !is_name(*c))
            .unwrap_or(bytes.len() - i);
        let word = &expr[i..i + len];
        let after = &expr[i + len..];
        if word.starts_with("sluicegate_") || (word == "up" && after.starts_with('{')) {
            let mut labels = Vec::new();
            if let Some(body) = after.strip_prefix('{') {
                let body = &body[..body.find('}').expect("closing brace")];
                for matcher in body.split(',') {
                    let label = matcher.split(['=', '!']).next().unwrap().trim();
                    if !label.is_empty() {
                        labels.push(label.to_string());
                    }
                }
            }
            out.push((word.to_string(), labels));
        }
        i += len;
    }
    out
}
