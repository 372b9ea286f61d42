//! `cargo xtask corpus`: replays every capture of the shared corpus with `mirror replay` to a local
//! recording server (loopback only) and compares what arrives with the ground truth: count, and
//! method, target and body length of every request.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mirror_tests::{access_log, bin, corpus};
use serde_json::Value;

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mirror-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("recorder.log");
    let stderr = dir.join("recorder.stderr");
    let mut recorder = Command::new(bin("httpbin"))
        .args(["--listen", "127.0.0.1:0", "--name", "recorder", "--log"])
        .arg(&log)
        .stderr(std::fs::File::create(&stderr)?)
        .stdout(Stdio::null())
        .spawn()?;
    let result = run(&dir, &log, &stderr);
    let _ = recorder.kill();
    let _ = recorder.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn recorder_addr(stderr: &std::path::Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        if let Some(addr) = text.split("listening on ").nth(1) {
            return Ok(addr.trim().to_string());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("recorder did not start")
}

fn run(dir: &std::path::Path, log: &std::path::Path, stderr: &std::path::Path) -> Result<()> {
    let addr = recorder_addr(stderr)?;
    let mut failures = 0;
    let mut totals = (0usize, 0usize, 0u64, 0usize);
    println!("| capture | ref complete | framed | mirrored | received | match |\n|---|---:|---:|---:|---:|---|");
    for e in corpus::expectations() {
        let ports: Vec<String> = e.ports.iter().map(u16::to_string).collect();
        let config = dir.join("corpus.yaml");
        std::fs::write(
            &config,
            format!(
                "capture: {{interfaces: [lo], ports: [{}]}}\nroutes: [{{name: all, mirror: {{host: recorder}}}}]\nendpoints: {{recorder: ['{addr}']}}\n",
                ports.join(", ")
            ),
        )?;
        let before = access_log(log).len();
        let out = Command::new(bin("mirror"))
            .args(["replay", "--json", "--config"])
            .arg(&config)
            .arg("--pcap")
            .arg(corpus::dir().join("pcaps").join(&e.capture))
            .output()
            .context("running mirror replay")?;
        ensure!(out.status.success(), "mirror replay {} failed: {}", e.capture, String::from_utf8_lossy(&out.stderr));
        let summary: Value = serde_json::from_slice(&out.stdout).context("replay summary")?;
        let received: Vec<corpus::Req> = access_log(log)[before..]
            .iter()
            .map(|r| {
                (
                    r["method"].as_str().unwrap_or("").to_string(),
                    r["uri"].as_str().unwrap_or("").to_string(),
                    r["body_len"].as_u64().unwrap_or(0) as usize,
                )
            })
            .collect();
        // Connections to the recorder may interleave flows: compare as multisets.
        let count = |v: &[corpus::Req]| {
            let mut m = BTreeMap::new();
            for r in v {
                *m.entry(r.clone()).or_insert(0) += 1;
            }
            m
        };
        let want = e.mirrored();
        let ok = count(&received) == count(&want);
        let ref_complete: usize = e.per_flow.values().map(Vec::len).sum::<usize>() + e.connects;
        let framed = summary["pipeline"]["requests_framed"].as_u64().unwrap_or(0);
        let mirrored = summary["pipeline"]["mirrored"].as_u64().unwrap_or(0);
        println!(
            "| {} | {ref_complete} | {framed} | {mirrored} | {} | {} |",
            e.capture,
            received.len(),
            if ok { "yes" } else { "**NO**" }
        );
        if !ok {
            failures += 1;
            eprintln!("{}: want {want:?}\n got {received:?}\n summary {summary}", e.capture);
        }
        totals.0 += ref_complete;
        totals.1 += want.len();
        totals.2 += mirrored;
        totals.3 += received.len();
    }
    println!(
        "\nreference complete requests {}, expected at the mirror {}, mirrored {}, received {}; {failures} captures differ",
        totals.0, totals.1, totals.2, totals.3
    );
    let captures = corpus::expectations().len();
    println!("corpus: {} passed, {failures} failed", captures - failures);
    ensure!(failures == 0, "{failures} captures differ from the ground truth");
    Ok(())
}
