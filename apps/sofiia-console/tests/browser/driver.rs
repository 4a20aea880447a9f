//! Debian's Chromium driven over WebDriver: a `chromedriver` child process
//! and a fantoccini session with a fresh profile, headless, with no
//! background networking (the browser talks to nothing but the page's
//! origin), and its network and console logs kept for the checks.

use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Set to 1 (CI) to fail, not skip, when Chromium or chromedriver is missing.
pub(crate) const REQUIRE_VAR: &str = "SOFIIA_REQUIRE_BROWSER";

/// The browser binary: `SOFIIA_CHROMIUM`, else `chromium` on the PATH.
fn chromium() -> Option<PathBuf> {
    std::env::var_os("SOFIIA_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| which("chromium"))
}

/// The driver binary: `SOFIIA_CHROMEDRIVER`, else `chromedriver` on the PATH.
fn chromedriver() -> Option<PathBuf> {
    std::env::var_os("SOFIIA_CHROMEDRIVER")
        .map(PathBuf::from)
        .or_else(|| which("chromedriver"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A browser session; the driver is killed on drop.
pub(crate) struct Browser {
    pub(crate) client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a session, or `None` (with a loud note)
    /// when either binary is missing and the browser is not required.
    pub(crate) async fn start() -> Option<Self> {
        let (Some(chromium), Some(chromedriver)) = (chromium(), chromedriver()) else {
            let required = std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1");
            assert!(
                !required,
                "{REQUIRE_VAR}=1 but chromium or chromedriver is missing \
                 (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED: no chromium and chromedriver (apt-get install chromium \
                 chromium-driver; {REQUIRE_VAR}=1 makes this a failure)"
            );
            return None;
        };
        let port = free_port();
        // A process group of its own: the browser it starts goes with it.
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        wait_for_driver(&url).await;
        let profile = tempfile::tempdir().unwrap();
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities(&chromium, profile.path()))
            .connect(&url)
            .await
            .expect("a WebDriver session");
        let browser = Self {
            client,
            driver,
            _profile: profile,
        };
        // The browser's own start page is not the console's business.
        browser.client.goto("about:blank").await.unwrap();
        browser.log("performance").await;
        browser.log("browser").await;
        Some(browser)
    }

    /// Sets the viewport's outer size.
    pub(crate) async fn size(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    /// Light or dark, as the page sees `prefers-color-scheme`.
    pub(crate) async fn color_scheme(&self, scheme: &str) {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        )
        .await;
    }

    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(Custom {
                path: "goog/cdp/execute",
                body: json!({ "cmd": cmd, "params": params }),
            })
            .await
            .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
    }

    /// The log of `kind` (`performance` or `browser`) since the last read.
    pub(crate) async fn log(&self, kind: &str) -> Vec<Value> {
        let entries = self
            .client
            .issue_cmd(Custom {
                path: "se/log",
                body: json!({ "type": kind }),
            })
            .await
            .unwrap_or_else(|e| panic!("reading the {kind} log: {e}"));
        entries.as_array().cloned().unwrap_or_default()
    }

    /// Every URL the browser asked for since the last read.
    pub(crate) async fn requested_urls(&self) -> Vec<String> {
        self.log("performance")
            .await
            .iter()
            .filter_map(|entry| serde_json::from_str::<Value>(entry["message"].as_str()?).ok())
            .filter(|m| m["message"]["method"] == "Network.requestWillBeSent")
            .filter_map(|m| {
                m["message"]["params"]["request"]["url"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub(crate) async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits (up to 20 s) until `script` returns something truthy, and
    /// returns it; fails with `what` and the page's visible text.
    pub(crate) async fn until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let started = Instant::now();
        loop {
            let value = self.js(script, args.clone()).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > Duration::from_secs(20) {
                self.fail(&format!("timed out waiting for {what}")).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails with `why`, what the page shows and what the browser logged.
    async fn fail(&self, why: &str) -> ! {
        let text = self
            .client
            .execute("return document.body.innerText", vec![])
            .await
            .unwrap_or_default();
        let log: Vec<String> = self
            .log("browser")
            .await
            .iter()
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect();
        panic!(
            "{why}; the page shows:\n{text}\nthe browser logged:\n{}",
            log.join("\n")
        );
    }

    /// The element `css`, once it is there.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(el) => el,
            Err(e) => self.fail(&format!("no {css}: {e}")).await,
        }
    }

    /// The text of the first element matching `css`, once there is one.
    pub(crate) async fn text_of(&self, css: &str) -> String {
        self.until(
            &format!("an element {css} with text"),
            "const e = document.querySelector(arguments[0]); return e && e.textContent.trim();",
            vec![json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Waits until the first element matching `css` reads `text`.
    pub(crate) async fn wait_text(&self, css: &str, text: &str) {
        self.until(
            &format!("{css} to read {text:?}"),
            "const e = document.querySelector(arguments[0]); return e && e.textContent.trim() === arguments[1];",
            vec![json!(css), json!(text)],
        )
        .await;
    }

    /// Clicks the element `css` once it is there.
    pub(crate) async fn click(&self, css: &str) {
        if let Err(e) = self.element(css).await.click().await {
            self.fail(&format!("clicking {css}: {e}")).await;
        }
    }

    /// Types `text` into the element `css` (keys, as a person would).
    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let el = self.element(css).await;
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    /// A PNG of the viewport, written to `path`.
    pub(crate) async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    /// Ends chromedriver and every browser process it started, also when
    /// the test failed half-way.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

fn capabilities(chromium: &Path, profile: &Path) -> serde_json::Map<String, Value> {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
        "goog:loggingPrefs": { "performance": "ALL", "browser": "ALL" },
    });
    caps.as_object().cloned().unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_driver(url: &str) {
    let started = Instant::now();
    let http = reqwest::Client::new();
    loop {
        if let Ok(res) = http.get(format!("{url}/status")).send().await
            && res.status().is_success()
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chromedriver did not answer at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A vendor command of chromedriver's, under the session's URL.
#[derive(Debug)]
struct Custom {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Custom {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}
