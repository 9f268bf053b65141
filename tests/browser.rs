//! The web page end to end in headless Chromium, driven over the DevTools
//! protocol (no network: loopback only): pick coffee.png in the file input,
//! type a sentence, click Segment, wait for the overlay, check its size and
//! that it is the API's overlay, and save a screenshot to
//! `target/test-artifacts/serve.png`.
//!
//! Chromium is `DETRIS_CHROMIUM`, else `chromium`, `chromium-browser` or
//! `google-chrome` on PATH. Without one the test fails when the environment
//! variable `CI` is set (.ci/run installs Debian's chromium), and elsewhere
//! passes with a printed notice.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use common::http_client::{self as client, Form};
use detris::serve::{self, Limits, ServeOptions};
use detris::weights::{self, ConfigChoice, WeightFiles};
use detris_io::fixtures;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const SENTENCE: &str = "the cup on the table";

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DETRIS_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Chromium killed on drop, whatever the test's outcome.
struct Browser {
    child: Child,
    _profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._profile);
    }
}

/// Starts Chromium without network and returns it with its DevTools websocket URL.
fn launch(bin: &Path) -> Result<(Browser, String)> {
    let profile = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chromium-profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile)?;
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stderr = child.stderr.take().unwrap();
    let browser = Browser { child, _profile: profile };
    // Chromium prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID" on stderr.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                let _ = tx.send(Ok(url.trim().to_string()));
            }
            seen.push(line);
            if seen.len() > 200 {
                seen.remove(0);
            }
        }
        let _ = tx.send(Err(seen.join("\n")));
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(url)) => Ok((browser, url)),
        Ok(Err(log)) => bail!("chromium exited without a DevTools URL:\n{log}"),
        Err(_) => bail!("chromium printed no DevTools URL in 60 s"),
    }
}

/// A DevTools protocol connection (one browser websocket, flattened sessions).
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn connect(url: &str) -> Result<Cdp> {
        let hostport = url.trim_start_matches("ws://").split('/').next().unwrap_or("");
        let addr: SocketAddr = hostport.parse().with_context(|| format!("DevTools address {hostport:?}"))?;
        anyhow::ensure!(addr.ip().is_loopback(), "DevTools is not on loopback: {addr}");
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let (ws, _) = tungstenite::client(url, stream).map_err(|e| anyhow!("websocket handshake: {e}"))?;
        Ok(Cdp { ws, next_id: 1 })
    }

    /// Sends a command and waits for its answer (events in between are skipped).
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string()))?;
        loop {
            let text = match self.ws.read()? {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                _ => continue,
            };
            let v: Value = serde_json::from_str(&text)?;
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Evaluates a JS expression in the page and returns its value.
    fn eval(&mut self, session: &str, expr: &str) -> Result<Value> {
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            bail!("{expr}: {ex}");
        }
        Ok(r["result"]["value"].clone())
    }

    fn wait_for(&mut self, session: &str, expr: &str, timeout: Duration) -> Result<Value> {
        let t0 = Instant::now();
        loop {
            let v = self.eval(session, expr)?;
            if v.as_bool() != Some(false) && !v.is_null() {
                return Ok(v);
            }
            if t0.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {expr}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn load_tiny() -> anyhow::Result<detris::Detris> {
    weights::load_model(
        &WeightFiles { checkpoint: Some(fixtures::path("tiny/detris_ckpt.pth")), dinov2: None, clip: None },
        &ConfigChoice { config: Some(fixtures::path("tiny/config.json")), ..Default::default() },
        tch::Device::Cpu,
    )
}

#[test]
fn page_segments_an_uploaded_photo_in_chromium() {
    let Some(bin) = find_chromium() else {
        let why = "no chromium binary (install Debian's `chromium`, or set DETRIS_CHROMIUM)";
        assert!(std::env::var_os("CI").is_none(), "CI is set and the browser test cannot run: {why}");
        println!("SKIPPED page_segments_an_uploaded_photo_in_chromium: {why}");
        return;
    };
    let options =
        ServeOptions { bind: SocketAddr::from(([127, 0, 0, 1], 0)), limits: Limits::default(), ..Default::default() };
    let server = serve::spawn(load_tiny, options).unwrap();
    let addr = server.addr();
    let photo_path = std::fs::canonicalize(fixtures::images_dir().join("coffee.png")).unwrap();

    let (browser, ws_url) = launch(&bin).unwrap();
    let mut cdp = Cdp::connect(&ws_url).unwrap();
    let target = cdp.call(None, "Target.createTarget", json!({ "url": format!("http://{addr}/") })).unwrap();
    let target_id = target["targetId"].as_str().unwrap().to_string();
    let attached = cdp.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).unwrap();
    let s = attached["sessionId"].as_str().unwrap().to_string();
    let s = s.as_str();
    cdp.call(
        Some(s),
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    )
    .unwrap();
    cdp.wait_for(s, "document.readyState === 'complete' && !!document.getElementById('go')", Duration::from_secs(30))
        .unwrap();
    // The model line comes from GET /v1/model; the input size is the fixture config's.
    let input_size = detris::weights::read_config_file(&fixtures::path("tiny/config.json")).unwrap().input_size;
    cdp.wait_for(
        s,
        &format!("document.getElementById('model').textContent.includes('{input_size} px')"),
        Duration::from_secs(10),
    )
    .unwrap();

    // Pick the photo in the file input, as a person choosing a file does.
    let doc = cdp.call(Some(s), "DOM.getDocument", json!({})).unwrap();
    let root = doc["root"]["nodeId"].as_i64().unwrap();
    let input = cdp.call(Some(s), "DOM.querySelector", json!({ "nodeId": root, "selector": "#file" })).unwrap();
    cdp.call(
        Some(s),
        "DOM.setFileInputFiles",
        json!({ "files": [photo_path.to_string_lossy()], "nodeId": input["nodeId"] }),
    )
    .unwrap();
    cdp.wait_for(
        s,
        "!!document.querySelector('#drop img') && document.querySelector('#drop img').complete",
        Duration::from_secs(10),
    )
    .unwrap();

    // Type the sentence, then click the button with the mouse.
    cdp.eval(s, "document.getElementById('texts').focus()").unwrap();
    cdp.call(Some(s), "Input.insertText", json!({ "text": SENTENCE })).unwrap();
    assert_eq!(cdp.eval(s, "document.getElementById('go').disabled").unwrap(), json!(false));
    let rect = cdp
        .eval(s, "(() => { const r = document.getElementById('go').getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        .unwrap();
    let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
    for kind in ["mousePressed", "mouseReleased"] {
        cdp.call(
            Some(s),
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
        )
        .unwrap();
    }

    // Wait for the overlay.
    let state = cdp
        .wait_for(
            s,
            "(() => { const st = document.body.dataset.state; if (st === 'error') return 'error: ' + document.getElementById('status').textContent; \
             const imgs = [...document.querySelectorAll('#results img.overlay')]; \
             return st === 'done' && imgs.length > 0 && imgs.every((i) => i.complete && i.naturalWidth > 0) ? 'done' : false; })()",
            Duration::from_secs(120),
        )
        .unwrap();
    assert_eq!(state, json!("done"));
    let seen = cdp
        .eval(
            s,
            "(() => { const imgs = [...document.querySelectorAll('#results img.overlay')]; \
             return { n: imgs.length, w: imgs[0].naturalWidth, h: imgs[0].naturalHeight, shown: imgs[0].getBoundingClientRect().width, \
                      src: imgs[0].src, caption: document.querySelector('#results figcaption').textContent, \
                      mask: document.querySelector('#results a.download').href, download: document.querySelector('#results a.download').download }; })()",
        )
        .unwrap();
    assert_eq!(seen["n"], 1);
    let photo = image::image_dimensions(&photo_path).unwrap();
    let (w, h) = (u64::from(photo.0), u64::from(photo.1));
    assert_eq!((seen["w"].as_u64().unwrap(), seen["h"].as_u64().unwrap()), (w, h), "overlay size");
    assert!(seen["shown"].as_f64().unwrap() > 100.0, "the overlay is visible: {seen}");
    let caption = seen["caption"].as_str().unwrap();
    assert!(caption.contains(SENTENCE) && caption.contains(" px") && caption.contains(" ms"), "{caption}");
    assert!(seen["download"].as_str().unwrap().ends_with(".mask.png"));

    // The page shows the API's overlay and offers the API's mask for the same photo and sentence.
    let bytes = std::fs::read(&photo_path).unwrap();
    let (ct, body) = Form::new().file("image", "coffee.png", "image/png", &bytes).text("text", SENTENCE).finish();
    let api = client::request(addr, "POST", "/v1/segment", Some(&ct), &body).unwrap().json().unwrap();
    assert_eq!(
        seen["src"].as_str().unwrap(),
        format!("data:image/png;base64,{}", api["results"][0]["overlay_png"].as_str().unwrap())
    );
    assert_eq!(
        seen["mask"].as_str().unwrap(),
        format!("data:image/png;base64,{}", api["results"][0]["mask_png"].as_str().unwrap())
    );

    // Screenshot as a test artifact.
    let shot = cdp.call(Some(s), "Page.captureScreenshot", json!({ "format": "png" })).unwrap();
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("serve.png");
    std::fs::write(&out, &png).unwrap();
    let shot_img = image::load_from_memory(&png).unwrap();
    assert_eq!((shot_img.width(), shot_img.height()), (1280, 900));
    println!("screenshot: {}", out.display());

    let _ = cdp.call(None, "Browser.close", json!({}));
    drop(browser);
    server.stop().unwrap();
}
