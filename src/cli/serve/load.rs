//! A bounded load run against a server on loopback (`detris serve-load`):
//! N requests from C client threads, one in ten malformed, then a report of
//! latency percentiles, status counts and peak memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use base64::Engine;
use detris::device::peak_rss_kib;

use crate::cli::http_client::{self, Form};

pub struct LoadOptions {
    pub requests: usize,
    pub concurrency: usize,
    /// Every `malformed_every`-th request is malformed (0 = none).
    pub malformed_every: usize,
    /// A photo (PNG/JPEG/WebP bytes) and sentences for the valid requests.
    pub image: Vec<u8>,
    pub sentences: Vec<String>,
}

#[derive(Debug)]
pub struct LoadReport {
    pub requests: usize,
    pub malformed: usize,
    pub wall: Duration,
    /// Count per HTTP status; 0 = the connection failed.
    pub statuses: BTreeMap<u16, usize>,
    /// Percentiles over every request, milliseconds: p50, p95, p99, max.
    pub all_ms: [f64; 4],
    /// The same over the 200 answers only.
    pub ok_ms: [f64; 4],
    /// VmHWM of this process in KiB (None off Linux).
    pub peak_rss_kib: Option<u64>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.wall.as_secs_f64();
        writeln!(
            f,
            "{} requests ({} malformed) in {s:.2} s: {:.1} requests/s",
            self.requests,
            self.malformed,
            self.requests as f64 / s
        )?;
        let p = |v: &[f64; 4]| format!("p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}", v[0], v[1], v[2], v[3]);
        writeln!(f, "latency ms, all:      {}", p(&self.all_ms))?;
        writeln!(f, "latency ms, 200 only: {}", p(&self.ok_ms))?;
        let counts: Vec<String> = self.statuses.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        writeln!(f, "statuses: {}", counts.join(", "))?;
        match self.peak_rss_kib {
            Some(k) => write!(f, "peak RSS (VmHWM, server and client in one process): {:.1} MiB", k as f64 / 1024.0),
            None => write!(f, "peak RSS: unknown (no /proc/self/status)"),
        }
    }
}

/// The i-th request: `(content_type, body, malformed)`.
fn build(i: usize, o: &LoadOptions) -> (String, Vec<u8>, bool) {
    if o.malformed_every > 0 && i % o.malformed_every == o.malformed_every - 1 {
        let (ct, body) = match (i / o.malformed_every) % 4 {
            // Not an image.
            0 => Form::new()
                .file("image", "x.png", "image/png", b"this is not a picture")
                .text("text", "the cup")
                .finish(),
            // Missing text.
            1 => Form::new().file("image", "photo.png", "image/png", &o.image).finish(),
            // Broken JSON.
            2 => ("application/json".into(), br#"{"image": "abc", "texts": ["the cup""#.to_vec()),
            // Empty sentence.
            _ => Form::new().file("image", "photo.png", "image/png", &o.image).text("text", "   ").finish(),
        };
        return (ct, body, true);
    }
    if i % 2 == 0 {
        let mut form = Form::new().file("image", "photo.png", "image/png", &o.image);
        for s in &o.sentences {
            form = form.text("text", s);
        }
        let (ct, body) = form.finish();
        (ct, body, false)
    } else {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&o.image);
        let body = serde_json::json!({ "image": b64, "texts": o.sentences });
        ("application/json".into(), body.to_string().into_bytes(), false)
    }
}

fn percentiles(v: &mut [f64]) -> [f64; 4] {
    if v.is_empty() {
        return [f64::NAN; 4];
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    [at(0.50), at(0.95), at(0.99), v[v.len() - 1]]
}

/// Sends the requests and waits for every answer.
pub fn run(addr: SocketAddr, o: &LoadOptions) -> Result<LoadReport> {
    ensure!(addr.ip().is_loopback(), "the load run only talks to loopback addresses, not {addr}");
    ensure!(o.concurrency > 0 && o.requests > 0, "requests and concurrency must be positive");
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(u16, f64, bool)>> = Mutex::new(Vec::with_capacity(o.requests));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..o.concurrency {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= o.requests {
                    break;
                }
                let (ct, body, malformed) = build(i, o);
                let t = Instant::now();
                let status =
                    http_client::request(addr, "POST", "/v1/segment", Some(&ct), &body).map(|r| r.status).unwrap_or(0);
                let ms = t.elapsed().as_secs_f64() * 1e3;
                results.lock().unwrap().push((status, ms, malformed));
            });
        }
    });
    let wall = t0.elapsed();
    let results = results.into_inner().unwrap();
    let mut statuses = BTreeMap::new();
    for (st, _, _) in &results {
        *statuses.entry(*st).or_insert(0) += 1;
    }
    let mut all: Vec<f64> = results.iter().map(|r| r.1).collect();
    let mut ok: Vec<f64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    Ok(LoadReport {
        requests: results.len(),
        malformed: results.iter().filter(|r| r.2).count(),
        wall,
        statuses,
        all_ms: percentiles(&mut all),
        ok_ms: percentiles(&mut ok),
        peak_rss_kib: peak_rss_kib(),
    })
}
