//! The README's nginx configuration ("Behind nginx"), run as it is written:
//! streams come through unbuffered, publishes and replays pass, and this
//! server's own page behind the proxy may publish.
//!
//! The configuration is read from `README.md` itself, so the README cannot
//! drift from what is tested; only the upstream's address and a `listen`
//! line are filled in. Without `nginx` installed a test says it skipped and
//! passes, unless `TINYSSE_REQUIRE_NGINX=1` (CI) makes that a failure.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::support::*;

const SECOND: Duration = Duration::from_secs(1);

/// Where Debian and most others install it, for a `PATH` without `sbin`.
const NGINX_PATHS: [&str; 3] = ["nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx"];

/// An nginx started for one test with the README's configuration in front
/// of `upstream`, killed when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nginx binary, or `None` (the test then skips) when none is installed
/// and nginx is not required.
fn nginx_or_skip(test: &str) -> Option<&'static str> {
    let found = NGINX_PATHS.into_iter().find(|path| {
        Command::new(path)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if found.is_none() {
        if std::env::var("TINYSSE_REQUIRE_NGINX").as_deref() == Ok("1") {
            panic!("{test}: nginx is not installed and TINYSSE_REQUIRE_NGINX=1");
        }
        // Straight to stderr, past the test harness's capture, so that the
        // skip shows in the output of a passing run.
        let _ = writeln!(std::io::stderr(), "skipped {test}: nginx is not installed");
    }
    found
}

/// The README's `nginx` block of its "Behind nginx" section.
fn readme_configuration() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let section = readme
        .split("## Behind nginx")
        .nth(1)
        .expect("the README has a section 'Behind nginx'");
    let block = section
        .split("```nginx\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("an nginx block in 'Behind nginx'");
    block.to_string()
}

impl Nginx {
    /// Starts nginx with the README's configuration in front of `upstream`
    /// on a free loopback port.
    fn start(binary: &str, upstream: SocketAddr) -> Nginx {
        let configuration = readme_configuration();
        let upstream_line = "server 127.0.0.1:8000;";
        let listen_line = "# ... listen / server_name / TLS ...";
        assert!(
            configuration.contains(upstream_line) && configuration.contains(listen_line),
            "the README's nginx block changed: the test fills in '{upstream_line}' and '{listen_line}':\n{configuration}"
        );
        let dir = std::env::temp_dir().join(format!(
            "tinysse-nginx-{}-{}",
            std::process::id(),
            upstream.port()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for nginx");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let server_block = configuration
                .replace(upstream_line, &format!("server {upstream};"))
                .replace(listen_line, &format!("listen 127.0.0.1:{port};"));
            let d = dir.display();
            let conf = format!(
                "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n \
                 fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
                 {server_block}\n}}\n"
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let mut child = Command::new(binary)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nginx");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let up = wait_until(10 * SECOND, || {
                matches!(child.try_wait(), Ok(None)) && std::net::TcpStream::connect(addr).is_ok()
            });
            if up {
                return Nginx { child, addr, dir };
            }
            // The port was taken meanwhile: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        panic!("nginx did not start on any of 5 free ports; its log:\n{log}");
    }
}

#[test]
fn the_readme_nginx_configuration_passes_streams_unbuffered() {
    let test = "the_readme_nginx_configuration_passes_streams_unbuffered";
    let Some(binary) = nginx_or_skip(test) else {
        return;
    };
    let server = TestServer::start(&["--ping-interval", "1s", "--tick-interval", "1m"]);
    let nginx = Nginx::start(binary, server.addr);

    // The demo stream: its head and first event at once, through nginx.
    let mut demo = SseClient::connect(nginx.addr, "/", &[]);
    assert_eq!(demo.status(), 200, "{}", demo.head);
    assert_eq!(
        demo.header("Content-Type").as_deref(),
        Some("text/event-stream; charset=utf-8"),
        "{}",
        demo.head
    );
    let first = demo.events(1, 5 * SECOND);
    assert_eq!(first[0].id_number(), 1, "{first:?}");

    // A channel stream gets a published event (a few bytes, which a
    // buffering proxy would hold back) and its pings.
    let mut news = SseClient::connect(nginx.addr, "/events?channel=news", &[]);
    assert_eq!(news.status(), 200, "{}", news.head);
    let published = http(nginx.addr, "POST", "/publish?channel=news", &[], b"hi");
    assert_eq!(published.status, 200, "{published:?}");
    assert_eq!(published.json()["subscribers"], 1, "{}", published.body);
    let event = news.events(1, 5 * SECOND);
    assert_eq!(event[0].data, "hi");
    let ping = news
        .next_block(5 * SECOND)
        .expect("a ping through nginx within 5 s");
    assert!(ping.starts_with(": ping - "), "{ping:?}");

    // Reconnecting with Last-Event-ID replays what was missed.
    let missed = http(nginx.addr, "POST", "/publish?channel=news", &[], b"missed");
    assert_eq!(missed.status, 200, "{missed:?}");
    let last_seen = event[0].id_number().to_string();
    let mut again = SseClient::connect(
        nginx.addr,
        "/events?channel=news",
        &[("Last-Event-ID", &last_seen)],
    );
    assert_eq!(again.events(1, 5 * SECOND)[0].data, "missed");

    // This server's own page, served through nginx, may publish: its
    // origin is the proxy's address, and nginx passes `Host` without port.
    let origin = format!("http://{}", nginx.addr);
    let from_page = http(
        nginx.addr,
        "POST",
        "/publish?channel=news",
        &[("Origin", &origin)],
        b"from the page",
    );
    assert_eq!(from_page.status, 200, "{from_page:?}");
    let other_page = http(
        nginx.addr,
        "POST",
        "/publish?channel=news",
        &[("Origin", "http://evil.example")],
        b"x",
    );
    assert_eq!(other_page.status, 403, "{other_page:?}");

    // The rest: health, the demo page, metrics (allowed from 127.0.0.1),
    // and a JSON 404.
    assert_eq!(get(nginx.addr, "/health").json()["status"], "ok");
    let page = get(nginx.addr, "/demo");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("EventSource"), "{}", page.body);
    let metrics = get(nginx.addr, "/metrics");
    assert!(
        metrics.body.contains("tinysse_events_published_total 3"),
        "{}",
        metrics.body
    );
    let missing = get(nginx.addr, "/nope");
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(missing.json()["error"].is_string(), "{}", missing.body);
}
