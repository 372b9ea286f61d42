//! Issue 15, point 4: `mirror report` on a differences log written by the comparison code, and its
//! HTML page opened in a real browser (Debian's chromium, headless): what the page shows is what
//! the log holds, and text from the traffic (a `<script>`, an `onerror`) is shown, never run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use mirror::{
    compare::{
        Response, compare,
        log::DiffLog,
        record::{PairInfo, record},
    },
    config::{CompareSettings, LogSettings},
};
use mirror_tests::bin;

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
    Response::new(status, headers, body.as_bytes())
}

/// A scratch directory removed on drop, even when the test fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compares known pairs and logs the differing ones through the daemon's own code: 5 pairs differ
/// at `/items/*/id` (route api), 2 in status (route api), 1 in a header whose value carries
/// markup (route web); 3 pairs are the same and are not logged.
fn write_log(path: &Path) -> usize {
    let settings = CompareSettings::default();
    // Small files: the log rotates, and the report reads the rotated files too.
    let log_settings = LogSettings { path: path.to_path_buf(), max_bytes: 1500, files: 10, per_second: 1000 };
    let mut log = DiffLog::open(&log_settings).unwrap();
    let json = ("Content-Type", "application/json");
    let mut pairs: Vec<(&str, &str, Response, Response)> = Vec::new();
    for i in 0..5 {
        let p = response(200, &[json], &format!(r#"{{"items": [{{"id": {i}}}, {{"id": 100}}]}}"#));
        let s = response(200, &[json], &format!(r#"{{"items": [{{"id": "{i}-new"}}, {{"id": 100}}]}}"#));
        pairs.push(("api", "/items", p, s));
    }
    for _ in 0..2 {
        pairs.push(("api", "/status", response(200, &[], "ok"), response(503, &[], "ok")));
    }
    let hostile = "<script>document.body.innerHTML='PWNED'</script><img src=x onerror=\"document.title='PWNED'\">";
    pairs.push((
        "web",
        "/page?q=<script>alert(1)</script>",
        response(200, &[("X-Note", "plain")], ""),
        response(200, &[("X-Note", hostile)], ""),
    ));
    for _ in 0..3 {
        pairs.push(("api", "/same", response(200, &[json], r#"{"a": 1.0}"#), response(200, &[json], r#"{"a": 1}"#)));
    }
    let mut written = 0;
    for (route, target, p, s) in &pairs {
        let outcome = compare(Ok(p), Ok(s), None, &settings);
        if outcome.differences.is_empty() {
            continue;
        }
        let info = PairInfo { time: SystemTime::now(), route, mirror: "httpbin/v2", method: "GET", target };
        log.write(&record(&info, p, s, &outcome, &settings), Instant::now()).unwrap();
        written += 1;
    }
    assert_eq!(log.stats().written, 8);
    assert!(log.stats().rotations > 0, "{:?}", log.stats());
    written
}

/// The page as chromium renders it (the DOM after any script would have run).
fn rendered(page: &Path, profile: &Path) -> String {
    let mut child = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=2000", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium (Debian package chromium, installed by `cargo xtask setup`) must run");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8(out.stdout).unwrap();
    assert!(dom.contains("</html>"), "no DOM from chromium: {dom}\n{}", String::from_utf8_lossy(&out.stderr));
    dom
}

/// The text of each `<td class="{class}">` cell of the table with id `table`, in order.
fn cells<'a>(dom: &'a str, table: &str, class: &str) -> Vec<&'a str> {
    let start = dom.find(&format!("<table id=\"{table}\"")).unwrap_or_else(|| panic!("no table {table}"));
    let t = &dom[start..start + dom[start..].find("</table>").unwrap()];
    let open = format!("<td class=\"{class}\">");
    t.match_indices(&open)
        .map(|(i, _)| &t[i + open.len()..i + open.len() + t[i + open.len()..].find("</td>").unwrap()])
        .collect()
}

#[test]
fn the_report_shows_the_log_in_a_browser_and_never_runs_what_it_holds() {
    let dir = std::env::temp_dir().join(format!("mirror-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir.clone());
    let log = dir.join("differences.jsonl");
    assert_eq!(write_log(&log), 8);

    let page = dir.join("report.html");
    let mut cmd = Command::new(bin("mirror"));
    cmd.arg("report");
    for n in (1..10).rev().map(|n| dir.join(format!("differences.jsonl.{n}"))).filter(|p| p.exists()) {
        cmd.arg("--log").arg(n);
    }
    let out = cmd.arg("--log").arg(&log).arg("--html").arg(&page).output().unwrap();
    assert!(out.status.success(), "mirror report: {}", String::from_utf8_lossy(&out.stderr));
    let summary = String::from_utf8(out.stdout).unwrap();
    assert!(summary.starts_with("8 differing pairs (0 unreadable lines)\n"), "{summary}");
    assert!(
        summary.contains("api → httpbin/v2: 7 pairs\n         5  json:/items/*/id\n         2  status\n"),
        "{summary}"
    );
    assert!(summary.contains("web → httpbin/v2: 1 pairs\n         1  header:x-note\n"), "{summary}");

    let dom = rendered(&page, &dir.join("chromium-profile"));
    // Nothing from the log ran: no script element, the body and title as written.
    assert!(!dom.contains("PWNED</body>") && !dom.to_lowercase().contains("<script"), "{dom}");
    assert!(dom.contains("<title>mirror report: "), "{dom}");
    assert!(!dom.contains("<img"), "an element from the log was created: {dom}");
    // The top fields, most frequent first, with their counts.
    assert_eq!(cells(&dom, "top-fields", "field"), ["json:/items/*/id", "status", "header:x-note"]);
    assert_eq!(cells(&dom, "top-fields", "count"), ["5", "2", "1"]);
    assert_eq!(cells(&dom, "routes", "route"), ["api → httpbin/v2", "web → httpbin/v2"]);
    // An example pair side by side: the primary's id and the shadow's.
    assert!(dom.contains("<td class=\"primary\"><pre>0</pre></td><td class=\"shadow\"><pre>0-new</pre></td>"), "{dom}");
    assert!(dom.contains("<td class=\"primary\"><pre>200</pre></td><td class=\"shadow\"><pre>503</pre></td>"), "{dom}");
    // The markup is there as text.
    assert!(dom.contains("&lt;script&gt;document.body.innerHTML='PWNED'&lt;/script&gt;&lt;img src=x onerror=\"document.title='PWNED'\"&gt;"), "{dom}");
    assert!(dom.contains("/page?q=&lt;script&gt;alert(1)&lt;/script&gt;"), "{dom}");
    drop(scratch);
}
