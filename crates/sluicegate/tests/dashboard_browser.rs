//! The dashboard in a real browser: headless Chromium loads `GET /` from the admin API of a
//! gateway that has served traffic, runs the page's script, and must show the route table with
//! the gateway's own numbers; its screenshot must be a real image of the page.
//!
//! Needs Debian's `chromium` on the PATH, which `scripts/test` installs. Without it the test
//! fails, saying so: a dashboard check that silently skips is no check.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Backend, Gateway, TempDir, Toml};

/// How long one Chromium run may take before it is killed and the test fails (it takes about a
/// second here): the two runs stay well under a minute.
const RUN_LIMIT: Duration = Duration::from_secs(25);

/// Virtual time the page gets to run its script: enough for the first refresh's fetches and a
/// couple of the 2 s refreshes; the fetches themselves complete in real time, which Chromium
/// waits for.
const VIRTUAL_TIME_BUDGET_MS: u32 = 5000;

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 700;

/// A Chromium process in a process group of its own, killed with all its helpers (renderer,
/// GPU, zygote) on drop, whether the test passed or not.
struct Browser {
    child: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group's id is the leader's pid: every helper it started goes too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs headless Chromium on `url` with `args`; returns what it printed on stdout. Fails the
/// test if Chromium is missing, exits unsuccessfully or outlives [`RUN_LIMIT`].
fn chromium(profile: &Path, url: &str, args: &[String]) -> String {
    use std::os::unix::process::CommandExt;
    let spawned = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"),
        ])
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => panic!(
            "cannot run chromium ({e}): this test needs Debian's chromium package \
             (scripts/test installs it: apt-get install chromium)"
        ),
    };
    let mut browser = Browser { child };
    // Read both pipes on threads, so a chatty browser never blocks on a full pipe.
    let mut stdout = browser.child.stdout.take().expect("stdout");
    let mut stderr = browser.child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = browser.child.try_wait().expect("wait for chromium") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "chromium still running after {RUN_LIMIT:?} on {url}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Helpers still holding the pipes go with the group.
    drop(browser);
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    assert!(
        status.success(),
        "chromium failed ({status}) on {url}:\n{err}"
    );
    out
}

/// The text of the first `<td class="{class}">` cell in `row`.
fn cell<'a>(row: &'a str, class: &str) -> &'a str {
    let start = row
        .find(&format!("class=\"{class}\">"))
        .unwrap_or_else(|| panic!("no {class} cell in {row}"));
    let rest = &row[start..];
    let text = &rest[rest.find('>').unwrap() + 1..];
    &text[..text.find('<').unwrap_or(text.len())]
}

#[test]
fn the_dashboard_shows_each_route_with_its_rate_errors_and_p99() {
    let b = Backend::start("b");
    let gw = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "")
            .route("orders-api", "orders", "")
            .service("orders", &[b.addr], "")
            .build(),
    );
    let mut c = gw.client();
    for i in 0..40 {
        let path = if i % 4 == 0 { "/status/500" } else { "/" };
        c.get(path);
    }
    support::wait_until("40 requests counted", Duration::from_secs(10), || {
        gw.admin().get("/api/v1/routes/stats").json()["routes"][0]["requests"] == 40
    });
    let dir = TempDir::new("dashboard");
    let url = format!("http://{}/", gw.admin.expect("admin"));

    let dom = chromium(&dir.0.join("profile-dom"), &url, &["--dump-dom".into()]);
    assert!(
        dom.contains("<table id=\"routes\">"),
        "no route table:\n{dom}"
    );
    let start = dom
        .find("<tr data-route=\"orders-api\">")
        .unwrap_or_else(|| panic!("no row for orders-api:\n{dom}"));
    let row = &dom[start..start + dom[start..].find("</tr>").expect("row end")];
    assert!(row.contains("<td>orders</td>"), "service missing: {row}");
    assert_eq!(cell(row, "num err bad"), "25.0 %", "{row}");
    let rate: f64 = cell(row, "num rps").parse().expect("req/s is a number");
    assert!(rate > 0.0, "{row}");
    let p99: f64 = cell(row, "num p99").parse().expect("p99 is a number");
    assert!(p99 > 0.0 && p99 <= 10_000.0, "{row}");
    assert!(row.contains("<svg class=\"spark\""), "no sparkline: {row}");
    // The services table the page showed before is still there.
    assert!(
        dom.contains(&b.addr.to_string()),
        "endpoint missing:\n{dom}"
    );

    let png = dir.0.join("dashboard.png");
    chromium(
        &dir.0.join("profile-shot"),
        &url,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={WIDTH},{HEIGHT}"),
        ],
    );
    let image = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR, the first chunk: width and height, big-endian, after the signature and chunk head.
    let size = |at: usize| u32::from_be_bytes(image[at..at + 4].try_into().unwrap());
    assert_eq!((size(16), size(20)), (WIDTH, HEIGHT));
    // A blank or error page of this size compresses to a few kilobytes; tables and text do not.
    assert!(image.len() > 10_000, "screenshot of {} bytes", image.len());
}
