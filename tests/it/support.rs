//! What the integration tests share: the real `tinysse` binary started on a
//! free port, an SSE client and a plain HTTP client over real TCP, and
//! waiting for a condition with a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `tinysse` process started for one test, killed when dropped.
pub struct TestServer {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    logs: Arc<Mutex<String>>,
    args: Vec<String>,
}

impl TestServer {
    /// Starts the binary on `127.0.0.1:0` with `args` and waits until it
    /// listens.
    pub fn start(args: &[&str]) -> TestServer {
        Self::start_with_env(args, &[])
    }

    /// Like [`TestServer::start`], with environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> TestServer {
        Self::spawn(0, args, env)
    }

    /// Starts the binary on `127.0.0.1:port` (a port a previous server of the
    /// test used, say) with `args` and waits until it listens. While the
    /// port is taken (a client socket of another test may have been given
    /// it as its local port) it tries again, for up to 30 s.
    pub fn start_on_port(port: u16, args: &[&str]) -> TestServer {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Self::try_spawn(port, args, &[]) {
                Ok(server) => return server,
                Err(logs) if logs.contains("cannot listen") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(logs) => panic!("tinysse did not start on port {port}; logs:\n{logs}"),
            }
        }
    }

    fn spawn(port: u16, args: &[&str], env: &[(&str, &str)]) -> TestServer {
        Self::try_spawn(port, args, env)
            .unwrap_or_else(|logs| panic!("tinysse {args:?} did not print its address; logs:\n{logs}"))
    }

    /// Starts the binary; on failure returns what it logged.
    fn try_spawn(port: u16, args: &[&str], env: &[(&str, &str)]) -> Result<TestServer, String> {
        let mut full: Vec<String> = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
        ];
        if !args.contains(&"--log") {
            full.extend(["--log".into(), "debug".into()]);
        }
        full.extend(args.iter().map(|s| s.to_string()));
        let mut child = binary_command(&full, env)
            .spawn()
            .expect("start the tinysse binary");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("tinysse listening on http://") {
                    let _ = addr_tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().expect("a socket address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // The stderr reader ends at the process's end; give it a moment.
                wait_until(Duration::from_secs(2), || !logs.lock().unwrap().is_empty());
                return Err(format!("{full:?}\n{}", logs.lock().unwrap()));
            }
        };
        Ok(TestServer {
            child,
            addr,
            logs,
            args: full,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Its thread count, from `/proc/<pid>/status`.
    pub fn threads(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("a Threads: line")
    }

    /// How many of its threads are stream threads (named `sse-stream`).
    pub fn stream_threads(&self) -> usize {
        self.thread_names()
            .iter()
            .filter(|name| *name == "sse-stream")
            .count()
    }

    /// The names of its threads, from `/proc/<pid>/task/*/comm`, for
    /// failure messages.
    pub fn thread_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
                    .map(|name| name.trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// How many of its descriptors are its end of the connection from
    /// `client` (`/proc/net/tcp` for the socket's inode, `/proc/<pid>/fd`
    /// for the descriptors that link to it): 0 once it is closed.
    pub fn descriptors_of_connection(&self, client: SocketAddr) -> usize {
        let mut inode = None;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(file) = std::fs::File::open(table) else {
                continue;
            };
            let _ = tinysse::socket_table::parse_table(
                std::io::BufReader::new(file),
                self.addr.port(),
                &mut String::new(),
                |listed| match listed {
                    tinysse::socket_table::Listed::Open(seen) if seen.peer == client => {
                        inode = Some(seen.inode)
                    }
                    _ => {}
                },
            );
        }
        let Some(inode) = inode else {
            return 0;
        };
        let link = format!("socket:[{inode}]");
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|fds| {
                fds.flatten()
                    .filter(|fd| {
                        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == link.as_str())
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// What its open file descriptors are (`/proc/<pid>/fd` links), for
    /// failure messages.
    pub fn fd_targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|fds| {
                fds.flatten()
                    .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                    .map(|target| target.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        targets.sort();
        targets
    }

    /// Its open file descriptors, from `/proc/<pid>/fd`.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read fd dir")
            .count()
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`, `STOP`, `CONT`) to it.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Waits for it to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits for a clean exit; fails the test with the
    /// logs otherwise.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "tinysse did not exit cleanly after SIGTERM ({status:?}); logs:\n{}",
            self.logs()
        );
    }

    /// True when one of its stream threads (named `sse-...`) is asleep in a
    /// socket write: the client stopped reading and the socket buffers are
    /// full.
    pub fn stream_blocked_in_write(&self) -> bool {
        self.stream_tasks().iter().any(|dir| blocked_in_write(dir))
    }

    /// Its stream threads (named `sse-...`) now, as `/proc` task folders.
    pub fn stream_tasks(&self) -> Vec<std::path::PathBuf> {
        self.tasks_named(|name| name.starts_with("sse-"))
    }

    /// Its threads named `name`, and how many of them are asleep in a
    /// socket write.
    pub fn threads_named(&self, name: &str) -> (usize, usize) {
        let tasks = self.tasks_named(|n| n == name);
        let blocked = tasks.iter().filter(|dir| blocked_in_write(dir)).count();
        (tasks.len(), blocked)
    }

    /// Its threads whose name passes `wanted`, as `/proc` task folders.
    fn tasks_named(&self, wanted: impl Fn(&str) -> bool) -> Vec<std::path::PathBuf> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return Vec::new();
        };
        tasks
            .filter_map(Result::ok)
            .map(|task| task.path())
            .filter(|dir| std::fs::read_to_string(dir.join("comm")).is_ok_and(|comm| wanted(comm.trim())))
            .collect()
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Syscall numbers of `write`, `writev`, `sendto` and `sendmsg`.
#[cfg(target_arch = "x86_64")]
const WRITE_SYSCALLS: [u64; 4] = [1, 20, 44, 46];
#[cfg(target_arch = "aarch64")]
const WRITE_SYSCALLS: [u64; 4] = [64, 66, 206, 211];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const WRITE_SYSCALLS: [u64; 0] = [];

/// Set in a test server's `env`: the open-files limit (soft and hard) it is
/// started under, through `sh`'s `ulimit -n`.
pub const OPEN_FILES_LIMIT_ENV: &str = "TEST_OPEN_FILES_LIMIT";

/// The tinysse binary with `args` and `env`, stdin closed, stdout and
/// stderr piped.
fn binary_command<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Command {
    let binary = env!("CARGO_BIN_EXE_tinysse");
    let mut command = if env.iter().any(|(k, _)| *k == OPEN_FILES_LIMIT_ENV) {
        let mut shell = Command::new("sh");
        let script = format!("ulimit -n \"${OPEN_FILES_LIMIT_ENV}\" && exec \"$0\" \"$@\"");
        shell.args(["-c", &script, binary]);
        shell
    } else {
        Command::new(binary)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// True when the thread of `/proc` task folder `task` is asleep in a socket
/// write (its peer does not read and the socket buffers are full). Read
/// from its `stat` and `syscall` (Linux).
fn blocked_in_write(task: &std::path::Path) -> bool {
    let read = |name: &str| std::fs::read_to_string(task.join(name)).unwrap_or_default();
    // The state follows the parenthesised command name.
    let stat = read("stat");
    let sleeping = stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('S'));
    let syscall = read("syscall");
    let number = syscall
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<u64>().ok());
    sleeping && number.is_some_and(|n| WRITE_SYSCALLS.contains(&n))
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it
/// held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a run of the binary to its end left behind.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

/// Runs the binary with `args` and `env` until it exits; kills it and fails
/// the test when it runs longer than `timeout`.
pub fn run_binary(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Finished {
    run_to_end(binary_command(args, env), timeout)
}

/// Runs `command` (with piped stdout and stderr) until it exits; kills it
/// and fails the test when it runs longer than `timeout`.
pub fn run_to_end(mut command: Command, timeout: Duration) -> Finished {
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} still running after {timeout:?}; stdout:\n{}\nstderr:\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The value of the sample `name` (with its labels, if any, exactly as
/// written: `tinysse_disconnects_total{reason="slow"}`) in `GET /metrics`.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let response = get(addr, "/metrics");
    assert_eq!(response.status, 200, "{response:?}");
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{}", response.body))
}

/// `open_streams` from `GET /health`.
pub fn open_streams(addr: SocketAddr) -> u64 {
    let response = get(addr, "/health");
    response.json()["open_streams"]
        .as_u64()
        .unwrap_or_else(|| panic!("no open_streams in {response:?}"))
}

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The head, status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Sends one request with `Connection: close` and reads the whole answer.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send head");
    // A server may answer (413, 401) and close before reading a whole body:
    // a failed send is then no error, the answer is what counts.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if raw.is_empty() => panic!("no answer to {method} {path}: {e}"),
            Err(_) => break,
        }
    }
    parse_response(&raw)
}

/// Parses raw response bytes (a head, a blank line, a body).
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], b"")
}

/// Publishes `data` to `channel` in the raw form; asserts `200` and returns
/// the event id.
pub fn publish(addr: SocketAddr, channel: &str, data: &str) -> u64 {
    let response = http(
        addr,
        "POST",
        &format!("/publish?channel={channel}"),
        &[],
        data.as_bytes(),
    );
    assert_eq!(response.status, 200, "publish failed: {response:?}");
    response.json()["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {:?}", response.body))
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `id:`, if the event had one.
    pub id: Option<String>,
    /// `event:`, if the event had one.
    pub event: Option<String>,
    /// The data lines joined with LF.
    pub data: String,
}

impl SseEvent {
    /// The id as a number.
    pub fn id_number(&self) -> u64 {
        self.id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no numeric id: {self:?}"))
    }
}

/// An SSE stream read over a raw TCP connection.
pub struct SseClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The response head.
    pub head: String,
    /// The body read so far, byte for byte (decoded, when chunked).
    pub received: Vec<u8>,
    /// The decoder of a chunked body.
    chunks: Option<Dechunker>,
}

/// Decodes a chunked body (RFC 9112, 7.1) as its bytes come, strictly: a
/// framing error fails the test.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

impl Dechunker {
    /// Appends the body bytes in `input` to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut input = input;
        while !input.is_empty() {
            match self.state {
                ChunkState::Size | ChunkState::Trailers | ChunkState::DataEnd => {
                    let byte = input[0];
                    input = &input[1..];
                    self.line.push(byte);
                    if byte != b'\n' {
                        assert!(self.line.len() < 64, "chunk line too long: {:?}", self.line);
                        continue;
                    }
                    let line = std::mem::take(&mut self.line);
                    assert!(line.ends_with(b"\r\n"), "chunk line without CRLF: {line:?}");
                    let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
                    self.state = match self.state {
                        ChunkState::DataEnd => {
                            assert!(text.is_empty(), "chunk data not followed by CRLF: {text:?}");
                            ChunkState::Size
                        }
                        ChunkState::Trailers if text.is_empty() => ChunkState::Done,
                        ChunkState::Trailers => ChunkState::Trailers,
                        _ => {
                            let size = usize::from_str_radix(&text, 16)
                                .unwrap_or_else(|_| panic!("bad chunk size line {text:?}"));
                            if size == 0 {
                                ChunkState::Trailers
                            } else {
                                ChunkState::Data(size)
                            }
                        }
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::Done => panic!("bytes after the last chunk: {input:?}"),
            }
        }
    }

    /// True once the last chunk and its blank line came.
    pub fn ended(&self) -> bool {
        self.state == ChunkState::Done
    }
}

impl SseClient {
    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Sends `GET path` with `headers` (HTTP/1.1) and reads the head.
    pub fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        Self::connect_version(addr, path, headers, "HTTP/1.1")
    }

    /// Like [`SseClient::connect`] with another HTTP version.
    pub fn connect_version(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        version: &str,
    ) -> SseClient {
        let stream = TcpStream::connect(addr).expect("connect");
        Self::start(stream, addr, path, headers, version)
    }

    /// Like [`SseClient::connect`] on a socket whose receive buffer is
    /// limited to about `bytes` (`SO_RCVBUF`): a client that does not read
    /// then soon makes the server's writes block.
    pub fn connect_with_receive_buffer(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        bytes: usize,
    ) -> SseClient {
        let stream = TcpStream::connect(addr).expect("connect");
        set_receive_buffer(&stream, bytes);
        Self::start(stream, addr, path, headers, "HTTP/1.1")
    }

    fn start(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        version: &str,
    ) -> SseClient {
        let mut request = format!("GET {path} {version}\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).expect("send request");
        let mut client = SseClient {
            stream,
            buffer: Vec::new(),
            head: String::new(),
            received: Vec::new(),
            chunks: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(at) = find(&client.buffer, b"\r\n\r\n") {
                client.head = String::from_utf8_lossy(&client.buffer[..at]).into_owned();
                let rest: Vec<u8> = client.buffer.drain(..).skip(at + 4).collect();
                let chunked = header_in(&client.head, "Transfer-Encoding")
                    .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
                client.chunks = chunked.then(Dechunker::default);
                client.take_body(&rest);
                break;
            }
            assert!(
                client.fill(deadline),
                "no response head for {path}; got {:?}",
                String::from_utf8_lossy(&client.buffer)
            );
        }
        client
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// A header of the response head.
    pub fn header(&self, name: &str) -> Option<String> {
        header_in(&self.head, name)
    }

    /// Reads more bytes; false on EOF, error or deadline.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                if self.head.is_empty() {
                    self.buffer.extend_from_slice(&chunk[..n]);
                } else {
                    self.take_body(&chunk[..n]);
                }
                true
            }
        }
    }

    /// Adds bytes read after the head: decoded, when the body is chunked.
    fn take_body(&mut self, bytes: &[u8]) {
        let mut body = Vec::new();
        match &mut self.chunks {
            Some(chunks) => chunks.feed(bytes, &mut body),
            None => body.extend_from_slice(bytes),
        }
        self.buffer.extend_from_slice(&body);
        self.received.extend_from_slice(&body);
    }

    /// True when the body was chunked and its last chunk came: the server
    /// ended it properly.
    pub fn body_ended(&self) -> bool {
        self.chunks.as_ref().is_some_and(Dechunker::ended)
    }

    /// The next block (event or comment, without its blank line), raw.
    pub fn next_block(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        // Only new bytes are searched: big events arrive in many reads.
        let mut searched = 0;
        loop {
            if let Some(at) = find(&self.buffer[searched..], b"\n\n") {
                let at = searched + at;
                let block = String::from_utf8_lossy(&self.buffer[..at]).into_owned();
                self.buffer.drain(..at + 2);
                return Some(block);
            }
            searched = self.buffer.len().saturating_sub(1);
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next event, skipping comments and `retry:` blocks.
    pub fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let block = self.next_block(deadline.saturating_duration_since(Instant::now()))?;
            if let Some(event) = parse_event(&block) {
                return Some(event);
            }
        }
    }

    /// Collects `n` events or fails the test saying what came.
    pub fn events(&mut self, n: usize, timeout: Duration) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match self.next_event(deadline.saturating_duration_since(Instant::now())) {
                Some(e) => got.push(e),
                None => panic!("expected {n} events, got {}: {got:?}", got.len()),
            }
        }
        got
    }

    /// True once the server closed the connection (EOF) within `timeout`,
    /// reading and keeping whatever comes first.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut got = Vec::new();
        let closed = read_until_closed(&mut self.stream, timeout, &mut got);
        self.take_body(&got);
        closed
    }

    /// The complete events already read, without reading more (after
    /// [`SseClient::closed_within`], what the client got before the end).
    pub fn buffered_events(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(at) = find(&self.buffer, b"\n\n") {
            let block = String::from_utf8_lossy(&self.buffer[..at]).into_owned();
            self.buffer.drain(..at + 2);
            events.extend(parse_event(&block));
        }
        events
    }

    /// The underlying socket.
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

/// Limits the kernel receive buffer of `stream` to about `bytes`.
fn set_receive_buffer(stream: &TcpStream, bytes: usize) {
    socket2::SockRef::from(stream)
        .set_recv_buffer_size(bytes)
        .expect("setsockopt SO_RCVBUF");
}

/// A publish to `channel` whose handler is reading its body, on the
/// connection returned: it asked `Expect: 100-continue` for a body of 2,000
/// bytes (`100 Continue` comes once the handler starts reading it) and has
/// sent 1,500 of them; writing 500 more finishes it. Reads time out after
/// 10 s.
pub fn publish_in_progress(addr: SocketAddr, channel: &str) -> TcpStream {
    publish_in_progress_of(addr, channel, 2000)
}

/// [`publish_in_progress`] with a body of `length` bytes (more than 1,500).
pub fn publish_in_progress_of(addr: SocketAddr, channel: &str, length: usize) -> TcpStream {
    let mut publishing = TcpStream::connect(addr).expect("connect");
    publishing
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let head = format!(
        "POST /publish?channel={channel} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
    );
    publishing.write_all(head.as_bytes()).expect("send the head");
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        assert_eq!(
            publishing.read(&mut byte).expect("100 Continue"),
            1,
            "{interim:?}"
        );
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{interim:?}");
    publishing
        .write_all(&[b'a'; 1500])
        .expect("send part of the body");
    publishing
}

/// Sends `request` on a connection of its own and reads until the server
/// closes it (a read waits 15 s at most); a refused write shows as a short
/// answer.
pub fn answer_to(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    let _ = s.write_all(request);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer
}

/// Writes `request` on a kept-alive `connection` and reads one answer, whole
/// by its `Content-Length`; or what came before the connection closed or
/// its read timeout passed.
pub fn answer_on(connection: &mut TcpStream, request: &[u8]) -> String {
    connection.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = header_in(head, "Content-Length").and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match connection.read(&mut buffer) {
            Ok(0) | Err(_) => return text,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Reads from `stream` into `sink` until the peer closes it; true when that
/// happened (EOF or a reset) within `timeout`.
pub fn read_until_closed(stream: &mut TcpStream, timeout: Duration, sink: &mut Vec<u8>) -> bool {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(n) => sink.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Parses one block into an event; `None` for a block with no data field
/// (comments, `retry:` only).
pub fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.split('\n') {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => event.id = Some(value.to_string()),
            "event" => event.event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return None;
    }
    event.data = data.join("\n");
    Some(event)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `signal` to process `pid` with `kill`; for `STOP`, returns once
/// every thread of it has stopped (the signal is delivered to each thread
/// as it next runs: a thread that was running may go on for a moment).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
    if signal != "STOP" {
        return;
    }
    let all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            // "TID (comm) STATE ...": the state follows the last ')'.
            std::fs::read_to_string(task.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
                })
                .unwrap_or(true)
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), all_stopped),
        "process {pid} not stopped 10 s after SIGSTOP"
    );
}
