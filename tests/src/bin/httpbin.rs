//! A small httpbin-like server for the demo and the namespace tests: answers every request
//! (`/status/NNN` with that status, anything else 200 with a JSON echo), and appends one JSON line
//! per request to an access log: method, target, headers in order, body length and SHA-256, and
//! `received_unix_ns`, the wall clock when the request head was read (the bench's mirror delay
//! joins it to the client's send times: every namespace reads the same machine clock).
//!
//! With `--variant v1|v1b|v2`, paths under `/cmp/` answer as a version of a service would, for
//! the comparison tests (issue 15): `same` (identical everywhere), `status` (v2: 500), `header`
//! (v2: `x-version: 2`), `json` (v2: another `count`), `order` (v2: the array reversed), `gzip`
//! (v2: the same JSON gzip-encoded), `time` (a field that differs on every response), `big` (2 MB, identical everywhere), `cookie` (a
//! `set-cookie` that differs: a credential, never written to the log), `large` and `large-gzip`
//! (50 kB of JSON, identical; v2 gzip-encodes the second).

use std::{convert::Infallible, io::Write, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::Mutex};

#[derive(Parser, Clone)]
struct Args {
    #[arg(long)]
    listen: SocketAddr,
    /// Name reported in `X-Served-By` and the log.
    #[arg(long)]
    name: String,
    /// JSON-lines access log.
    #[arg(long)]
    log: PathBuf,
    /// Wait this long before answering (failure tests).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Reset every connection as soon as it is accepted (failure tests).
    #[arg(long)]
    reset: bool,
    /// Which version of a service `/cmp/` paths answer as: v1, v1b (another copy of v1) or v2.
    #[arg(long)]
    variant: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let log = Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(&args.log)?));
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("httpbin {} listening on {}", args.name, listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        if args.reset {
            // Zero linger: close sends RST.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        }
        let (args, log) = (args.clone(), log.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, peer, args.clone(), log.clone()));
            let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    args: Args,
    log: Arc<Mutex<std::fs::File>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // hyper calls the service as soon as the head is parsed, before the body is read.
    let received_unix_ns =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let host = parts.headers.get("host").map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    let entry = serde_json::json!({
        "server": args.name,
        "peer": peer.to_string(),
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "host": host,
        "body_len": body.len(),
        "body_sha256": hex::encode(Sha256::digest(&body)),
        "received_unix_ns": received_unix_ns,
    });
    {
        let mut f = log.lock().await;
        let _ = writeln!(f, "{entry}");
        let _ = f.flush();
    }
    if args.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.delay_ms)).await;
    }
    if let (Some(variant), Some(path)) = (&args.variant, parts.uri.path().strip_prefix("/cmp/")) {
        return Ok(variant_response(variant == "v2", path, &args.name));
    }
    let status = parts
        .uri
        .path()
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
        .unwrap_or(hyper::StatusCode::OK);
    let reply = serde_json::json!({"served_by": args.name, "method": parts.method.as_str(), "uri": parts.uri.to_string(), "host": host, "body_len": body.len()});
    Ok(Response::builder()
        .status(status)
        .header("x-served-by", &args.name)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .expect("valid response"))
}

/// A `/cmp/` path as version 1 (`v2` false) or 2 of a service answers it.
fn variant_response(v2: bool, path: &str, name: &str) -> Response<Full<Bytes>> {
    let json = |v: serde_json::Value| Bytes::from(v.to_string());
    let mut status = hyper::StatusCode::OK;
    let mut version = "1";
    let mut gzip = false;
    // A body already gzip-encoded (made once).
    let mut gzip_done = false;
    let body = match path {
        "status" => {
            if v2 {
                status = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            }
            json(serde_json::json!({"ok": true}))
        }
        "header" => {
            if v2 {
                version = "2";
            }
            json(serde_json::json!({"ok": true}))
        }
        "json" => json(serde_json::json!({"name": "x", "count": if v2 { 2 } else { 1 }})),
        "cookie" => json(serde_json::json!({"ok": true})),
        "order" => json(serde_json::json!({"items": if v2 { [3, 2, 1] } else { [1, 2, 3] }})),
        "gzip" => {
            gzip = v2;
            json(serde_json::json!({"a": [1, 2], "b": "text"}))
        }
        // About 50 kB of JSON (the comparison benchmark's larger bodies), made once so that
        // serving it costs little; v2 gzip-encodes `large-gzip` (also made once).
        "large" => large_body().0.clone(),
        "large-gzip" if v2 => {
            gzip_done = true;
            large_body().1.clone()
        }
        "large-gzip" => large_body().0.clone(),
        // Larger than one perf sample: the primary's side comes in pieces (GSO tails).
        "big" => json(serde_json::json!({"data": "0123456789".repeat(200_000)})),
        "time" => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            json(serde_json::json!({"now": now.to_string(), "v": 1}))
        }
        _ => json(serde_json::json!({"a": 1, "b": [true, null]})),
    };
    let mut r = Response::builder();
    if path == "cookie" {
        r = r.header("set-cookie", if v2 { "session=secret-v2" } else { "session=secret-v1" });
    }
    r = r
        .status(status)
        .header("x-served-by", name)
        .header("x-version", version)
        .header("content-type", "application/json");
    let body = if gzip_done {
        r = r.header("content-encoding", "gzip");
        body
    } else if gzip {
        r = r.header("content-encoding", "gzip");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&body).expect("in memory");
        Bytes::from(enc.finish().expect("in memory"))
    } else {
        body
    };
    r.body(Full::new(body)).expect("valid response")
}

/// The `large` body: 700 items of JSON (about 50 kB), and the same gzip-encoded.
fn large_body() -> &'static (Bytes, Bytes) {
    static LARGE: std::sync::OnceLock<(Bytes, Bytes)> = std::sync::OnceLock::new();
    LARGE.get_or_init(|| {
        let items: Vec<_> = (0..700)
            .map(|i| serde_json::json!({"id": i, "name": format!("item-{i}"), "price": i * 7 % 1000, "tags": ["a", "b"], "active": i % 3 == 0}))
            .collect();
        let plain = serde_json::json!({ "items": items }).to_string();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(plain.as_bytes()).expect("in memory");
        (Bytes::from(plain), Bytes::from(enc.finish().expect("in memory")))
    })
}
