//! The demo page in a real browser: Debian's headless Chromium, driven by
//! `tests/browser/driver.mjs` (playwright-core, which downloads no browser).
//! The script only acts and reports what the page shows; the decisions and
//! assertions are here.
//!
//! Needs `/usr/bin/chromium` (or `TINYSSE_CHROMIUM`), `node` and
//! `npm ci` in `tests/browser` (`.ci/browser-setup` does all three). When one
//! is missing the tests say so and pass, unless `TINYSSE_REQUIRE_BROWSER=1`.
//! `TINYSSE_SCREENSHOTS=DIR` saves what the page looked like.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::support::*;

const TOKEN: &str = "s3cret";

/// A running `driver.mjs` with its browser.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Browser {
    /// Starts the driver and Chromium, or says why not: `None` means skip.
    fn launch(test: &str) -> Option<Browser> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let chromium = std::env::var_os("TINYSSE_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        let node = Command::new("node").arg("--version").output();
        let missing = if !chromium.exists() {
            Some(format!("no Chromium at {}", chromium.display()))
        } else if !node.is_ok_and(|o| o.status.success()) {
            Some("no node on PATH".to_string())
        } else if !dir.join("node_modules/playwright-core/package.json").exists() {
            Some(format!(
                "playwright-core is not installed (npm ci in {})",
                dir.display()
            ))
        } else {
            None
        };
        if let Some(missing) = missing {
            assert!(
                std::env::var("TINYSSE_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "{test}: {missing}, and TINYSSE_REQUIRE_BROWSER=1 (run .ci/browser-setup)"
            );
            // Straight to stderr: the test harness does not capture this.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test}: {missing}; run .ci/browser-setup to install it"
            );
            return None;
        }

        let mut child = Command::new("node")
            .arg("driver.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node driver.mjs");
        let (answer_tx, answers) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if answer_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut browser = Browser {
            stdin: child.stdin.take(),
            child,
            answers,
            stderr,
        };
        browser.call(
            json!({"cmd": "launch", "executablePath": chromium}),
            Duration::from_secs(60),
        );
        Some(browser)
    }

    /// Sends one command and returns its answer; fails the test with the
    /// driver's error, what the page showed and the driver's stderr.
    fn call(&mut self, command: Value, timeout: Duration) -> Value {
        let line = format!("{command}\n");
        let stdin = self.stdin.as_mut().expect("driver stdin open");
        stdin.write_all(line.as_bytes()).expect("write to the driver");
        stdin.flush().expect("flush to the driver");
        let answer = match self.answers.recv_timeout(timeout) {
            Ok(answer) => answer,
            Err(e) => panic!(
                "no answer from the driver to {command} within {timeout:?} ({e});\ndriver stderr:\n{}",
                self.driver_log()
            ),
        };
        let answer: Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("driver answered {answer:?}, not JSON: {e}"));
        if answer["ok"] != json!(true) {
            panic!(
                "driver failed {command}: {}\npage showed: {:#}\ndriver stderr:\n{}",
                answer["error"],
                answer["page"],
                self.driver_log()
            );
        }
        answer
    }

    /// What the driver wrote on stderr so far (the page's console among it).
    fn driver_log(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn wait_state(&mut self, state: &str, timeout: Duration) -> Value {
        self.call(
            json!({"cmd": "waitState", "state": state, "timeoutMs": timeout.as_millis() as u64}),
            timeout + Duration::from_secs(15),
        )
    }

    /// Waits until an event with exactly `data` is listed; returns what the
    /// page shows then.
    fn wait_event(&mut self, data: &str, timeout: Duration) -> Value {
        self.call(
            json!({"cmd": "waitEvent", "data": data, "timeoutMs": timeout.as_millis() as u64}),
            timeout + Duration::from_secs(15),
        )
    }

    /// Saves a screenshot when `TINYSSE_SCREENSHOTS` names a folder.
    fn screenshot(&mut self, name: &str) {
        if let Some(dir) = std::env::var_os("TINYSSE_SCREENSHOTS") {
            let path = Path::new(&dir).join(format!("{name}.png"));
            self.call(
                json!({"cmd": "screenshot", "path": path, "fullPage": true}),
                Duration::from_secs(30),
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End of input makes the driver close the browser and exit.
        drop(self.stdin.take());
        let exited = wait_until(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Publishes with the token; returns the event id.
fn publish_event(addr: std::net::SocketAddr, channel: &str, event: Option<&str>, data: &str) -> String {
    let path = match event {
        Some(name) => format!("/publish?channel={channel}&event={name}"),
        None => format!("/publish?channel={channel}"),
    };
    let bearer = format!("Bearer {TOKEN}");
    let response = http(
        addr,
        "POST",
        &path,
        &[("Authorization", &bearer)],
        data.as_bytes(),
    );
    assert_eq!(response.status, 200, "publish failed: {response:?}");
    response.json()["id"].as_str().expect("an id").to_string()
}

/// `HH:MM:SS.mmm`.
fn is_clock(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 12
        && b.iter().enumerate().all(|(i, c)| match i {
            2 | 5 => *c == b':',
            8 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
}

/// (id, event name, data) of each event the page lists, oldest first,
/// checking that each shows its name, id and a clock time.
fn shown_events(page: &Value) -> Vec<(String, String, String)> {
    let events = page["events"].as_array().expect("an events list");
    events
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            let (id, name) = (text("id"), text("event"));
            assert_eq!(text("shownName"), name, "{e}");
            assert_eq!(text("shownId"), format!("id {id}"), "{e}");
            assert!(is_clock(&text("time")), "time of {e}");
            (id, name, text("data"))
        })
        .collect()
}

#[test]
fn demo_page_shows_events_and_reconnects_after_a_restart() {
    let Some(mut browser) = Browser::launch("demo_page_shows_events_and_reconnects_after_a_restart") else {
        return;
    };
    let args = ["--publish-token", TOKEN, "--log", "info"];
    let mut first = TestServer::start(&args);
    let port = first.addr.port();
    let wait = Duration::from_secs(30);

    let opened = browser.call(
        json!({"cmd": "open", "url": first.url("/demo?channel=browser&event=greeting")}),
        Duration::from_secs(60),
    );
    assert_eq!(opened["status"], json!(200), "{opened}");
    browser.wait_state("open", wait);

    // Events published by someone else appear, named or not.
    let mut expected = vec![
        (
            publish_event(first.addr, "browser", None, "before restart: one"),
            "message".to_string(),
            "before restart: one".to_string(),
        ),
        (
            publish_event(first.addr, "browser", Some("greeting"), "before restart: two"),
            "greeting".to_string(),
            "before restart: two".to_string(),
        ),
    ];
    let page = browser.wait_event("before restart: two", wait);
    assert_eq!(shown_events(&page), expected, "{page:#}");
    assert_eq!(page["count"], json!("2"), "{page:#}");
    assert_eq!(page["stateText"], json!("open"), "{page:#}");

    // The form: refused without the token, published with it.
    let form = |data: &str, token: &str| {
        json!({"cmd": "publishForm", "channel": "browser", "event": "greeting", "data": data,
               "token": token, "timeoutMs": 20_000})
    };
    let refused = browser.call(form("from the form", ""), wait);
    assert_eq!(refused["status"], json!("error"), "{refused}");
    assert!(
        refused["text"].as_str().unwrap_or_default().starts_with("401"),
        "{refused}"
    );
    let accepted = browser.call(form("from the form", TOKEN), wait);
    assert_eq!(accepted["status"], json!("ok"), "{accepted}");
    let text = accepted["text"].as_str().unwrap_or_default();
    let form_id = text
        .strip_prefix("published id ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no id in {accepted}"))
        .to_string();
    expected.push((form_id, "greeting".into(), "from the form".into()));
    let page = browser.wait_event("from the form", wait);
    assert_eq!(shown_events(&page), expected, "{page:#}");
    browser.screenshot("desktop-before-restart");

    // The server goes away: the page says it is reconnecting.
    first.stop();
    let page = browser.wait_state("reconnecting", wait);
    assert_eq!(page["stateText"], json!("reconnecting"), "{page:#}");
    browser.screenshot("desktop-reconnecting");

    // A new server on the same port. Events published at once, before the
    // page is back, come by replay after its Last-Event-ID; later ones live.
    let second = TestServer::start_on_port(port, &args);
    assert_eq!(second.addr, first.addr);
    expected.push((
        publish_event(second.addr, "browser", None, "after restart: one"),
        "message".into(),
        "after restart: one".into(),
    ));
    browser.wait_state("open", Duration::from_secs(60));
    expected.push((
        publish_event(second.addr, "browser", Some("greeting"), "after restart: two"),
        "greeting".into(),
        "after restart: two".into(),
    ));
    let page = browser.wait_event("after restart: two", wait);
    let shown = shown_events(&page);
    assert_eq!(shown, expected, "server logs:\n{}\npage: {page:#}", second.logs());
    assert_eq!(page["count"], json!("5"), "{page:#}");
    let ids: Vec<u64> = shown
        .iter()
        .map(|(id, _, _)| id.parse().expect("numeric id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing: {ids:?}");
    browser.screenshot("desktop-after-restart");
    assert!(
        second.logs().contains("stream opened"),
        "the page never reconnected:\n{}",
        second.logs()
    );
}

#[test]
fn demo_page_fits_a_phone_and_a_desktop() {
    let Some(mut browser) = Browser::launch("demo_page_fits_a_phone_and_a_desktop") else {
        return;
    };
    let server = TestServer::start(&[]);
    let channel = "phone.channel-with-a-rather-long-name/for:layout";
    let long_word = "unbroken".repeat(40);
    for (name, width, height, mobile) in [("phone", 360, 740, true), ("desktop", 1280, 800, false)] {
        let url = server.url(&format!("/demo?channel={channel}"));
        browser.call(
            json!({"cmd": "open", "url": url, "width": width, "height": height, "mobile": mobile}),
            Duration::from_secs(60),
        );
        browser.wait_state("open", Duration::from_secs(30));
        publish(server.addr, channel, &format!("{name}: {long_word}"));
        browser.wait_event(&format!("{name}: {long_word}"), Duration::from_secs(30));
        browser.screenshot(name);
        let layout = browser.call(json!({"cmd": "layout"}), Duration::from_secs(30));
        let number = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("not a number in {layout}"));
        // Nothing sticks out sideways, however long the data.
        assert!(
            number(&layout["scrollWidth"]) <= number(&layout["clientWidth"]),
            "{name}: the page scrolls sideways: {layout}"
        );
        let (feed, form) = (&layout["feed"], &layout["publish"]);
        if mobile {
            // One column: the form on top, the newest events right below.
            assert!(
                number(&form["bottom"]) <= number(&feed["top"]),
                "{name}: {layout}"
            );
        } else {
            // Two columns: the events, and the form beside them.
            assert!(
                number(&feed["right"]) <= number(&form["left"]),
                "{name}: {layout}"
            );
            assert!(number(&form["top"]) < number(&feed["bottom"]), "{name}: {layout}");
        }
    }
}

#[test]
fn demo_page_says_why_its_stream_is_refused_and_retries_only_when_that_can_help() {
    let Some(mut browser) =
        Browser::launch("demo_page_says_why_its_stream_is_refused_and_retries_only_when_that_can_help")
    else {
        return;
    };
    let server = TestServer::start(&["--max-connections", "1", "--tick-interval", "0"]);
    let wait = Duration::from_secs(30);

    // A channel name the server refuses: 400, which asking again cannot
    // change. The page says so, and stays refused.
    browser.call(
        json!({"cmd": "open", "url": server.url("/demo?channel=no%20spaces")}),
        Duration::from_secs(60),
    );
    let page = browser.wait_state("refused", wait);
    let text = page["stateText"].as_str().unwrap_or_default().to_string();
    assert!(text.starts_with("refused: 400: "), "{page:#}");
    assert!(text.contains("channel"), "{page:#}");

    // The server full (one stream allowed, held here): 503, retried until
    // the slot is free.
    let holder = SseClient::connect(server.addr, "/events?channel=held", &[]);
    assert!(wait_until(wait, || open_streams(server.addr) == 1));
    browser.call(
        json!({"cmd": "open", "url": server.url("/demo?channel=later")}),
        Duration::from_secs(60),
    );
    let page = browser.wait_state("closed", wait);
    let text = page["stateText"].as_str().unwrap_or_default().to_string();
    assert!(text.starts_with("closed: 503: "), "{page:#}");
    assert!(text.ends_with("trying again in 5 s"), "{page:#}");
    drop(holder);
    browser.wait_state("open", wait);
    publish(server.addr, "later", "came through");
    browser.wait_event("came through", wait);
}
