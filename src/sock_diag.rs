//! The server's established TCP connections, from the kernel's socket
//! diagnostics (netlink `NETLINK_SOCK_DIAG`), for the head guard.
//!
//! `/proc/net/tcp` formats a 150-byte text line per socket of the network
//! namespace; at 10,000 streams with their clients on the same host that is
//! 20,000 lines, 100-200 ms of kernel time per read, and the head guard's
//! share of a core showed in the benchmark's CPU per delivery and latency.
//! The same dump through netlink is 72 binary bytes per socket, with no text
//! to format or parse. The guard falls back to `/proc/net/tcp` where
//! netlink is not allowed.
//!
//! Messages (`linux/netlink.h`, `linux/inet_diag.h`) are built and read as
//! bytes here: a request per address family (`SOCK_DIAG_BY_FAMILY`, dump of
//! the ESTABLISHED and CLOSE_WAIT TCP sockets), answered by one `inet_diag_msg` per socket
//! and a closing `NLMSG_DONE`.
//!
//! A stream asks about its own connection alone ([`bytes_acknowledged`]):
//! a request naming the connection's addresses, answered with that one
//! socket's `inet_diag_msg` and `tcp_info`, whose count of bytes the peer
//! acknowledged is read, or with `ENOENT` once the kernel has let go of it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};
use nix::sys::time::TimeVal;

use crate::socket_table::{normalize, Listed, Seen};

const NLMSG_HEADER: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const TCP_ESTABLISHED: u32 = 1;
/// The peer closed its side, this side is open.
const TCP_CLOSE_WAIT: u32 = 8;
/// `struct inet_diag_msg`, without its attributes.
const DIAG_MSG: usize = 72;
/// The attribute carrying a socket's `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;
/// Where `tcpi_bytes_acked` (a `u64`, Linux 4.1 and later) sits in
/// `struct tcp_info`.
const TCP_INFO_BYTES_ACKED: usize = 120;
/// `TCP_LISTEN`: what a lookup finds when no connection has the addresses
/// but a listening socket has the local one (the kernel looks up a
/// connection as it does for an arriving packet).
const TCP_LISTEN: u8 = 10;
/// `INET_DIAG_NOCOOKIE`: a lookup by addresses, whatever the socket's cookie.
const NO_COOKIE: u32 = u32::MAX;

/// How long a reply may take before the dump is given up.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Datagrams read per dump at most: a dump of 20,000 sockets is ~50 of
/// 32 KiB; the bound only keeps a misbehaving reply from looping for ever.
const MAX_DATAGRAMS: usize = 100_000;

/// Calls `each` with the ESTABLISHED and CLOSE_WAIT TCP sockets, IPv4 and
/// IPv6, whose local port is `port`.
///
/// # Errors
/// When netlink socket diagnostics cannot be used (no such socket family,
/// not allowed, an error reply or no reply in time).
pub fn connections(port: u16, mut each: impl FnMut(Listed)) -> io::Result<()> {
    let fd = diag_socket()?;
    let kernel = NetlinkAddr::new(0, 0);
    let mut buffer = vec![0u8; 32 * 1024];
    for (seq, family) in [(1u32, AF_INET), (2, AF_INET6)] {
        sendto(fd.as_raw_fd(), &request(family, seq), &kernel, MsgFlags::empty())?;
        let mut done = false;
        for _ in 0..MAX_DATAGRAMS {
            let n = recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty())?;
            if parse_datagram(&buffer[..n], seq, port, &mut each)? {
                done = true;
                break;
            }
        }
        if !done {
            return Err(io::Error::other("sock_diag: dump without an end"));
        }
    }
    Ok(())
}

/// How many bytes the peer of the TCP connection from `local` to `peer` has
/// acknowledged (`tcpi_bytes_acked`); `Ok(None)` when the kernel has no such
/// connection: it was closed, reset, or aborted for want of
/// acknowledgements (`TCP_USER_TIMEOUT`). Both addresses of the same family.
///
/// # Errors
/// When netlink socket diagnostics cannot be used, the addresses are of two
/// families, or the reply is not about that connection.
pub fn bytes_acknowledged(local: SocketAddr, peer: SocketAddr) -> io::Result<Option<u64>> {
    let mut shared = LOOKUP.lock().unwrap_or_else(|p| p.into_inner());
    let lookup = match &mut *shared {
        Some(lookup) => lookup,
        empty => empty.insert(Lookup::open()?),
    };
    let seq = lookup.seq.wrapping_add(1);
    // A request that cannot be made is no reason to drop the socket: nothing
    // was sent on it.
    let request = lookup_request(local, peer, seq)?;
    lookup.seq = seq;
    let result = lookup.ask(&request, seq, peer.port());
    if result.is_err() {
        // A fresh socket next time: no reply of this one is left to come.
        *shared = None;
    }
    result
}

/// Opens the socket of [`bytes_acknowledged`] now, if it can be: the
/// server does at start, so that its descriptor is there from the start
/// rather than appearing with the first stream's check.
pub fn open_lookup_socket() {
    let mut shared = LOOKUP.lock().unwrap_or_else(|p| p.into_inner());
    if shared.is_none() {
        *shared = Lookup::open().ok();
    }
}

/// The netlink socket of every [`bytes_acknowledged`], which the streams
/// take in turns: one socket, not one per lookup (a socket, its option and
/// its close were most of a lookup's cost).
static LOOKUP: Mutex<Option<Lookup>> = Mutex::new(None);

/// A netlink socket for lookups, with the last request's sequence number
/// and a buffer for the reply.
struct Lookup {
    fd: OwnedFd,
    seq: u32,
    buffer: Vec<u8>,
}

impl Lookup {
    fn open() -> io::Result<Lookup> {
        Ok(Lookup {
            fd: diag_socket()?,
            seq: 0,
            buffer: vec![0u8; 2048],
        })
    }

    /// Sends `request` (made by [`lookup_request`] with `seq`) and reads
    /// its reply about the connection to `peer_port`.
    fn ask(&mut self, request: &[u8], seq: u32, peer_port: u16) -> io::Result<Option<u64>> {
        sendto(
            self.fd.as_raw_fd(),
            request,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        // One socket's message: 72 bytes, its tcp_info (~250) and a few
        // small attributes the kernel adds. The socket is fresh after any
        // failure, so no earlier reply can come first.
        let n = recv(self.fd.as_raw_fd(), &mut self.buffer, MsgFlags::empty())?;
        parse_lookup_reply(&self.buffer[..n], seq, peer_port)
    }
}

/// A netlink socket for socket diagnostics, its replies awaited at most
/// [`REPLY_TIMEOUT`].
fn diag_socket() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout)?;
    Ok(fd)
}

/// True for a failure that may not happen again (no descriptor or buffer
/// left, no reply in time, a signal): netlink is worth trying next time.
/// Other failures (no such protocol, not allowed) last.
pub fn is_transient(error: &io::Error) -> bool {
    use nix::errno::Errno;
    let transient = [
        Errno::EMFILE,
        Errno::ENFILE,
        Errno::ENOMEM,
        Errno::ENOBUFS,
        Errno::EAGAIN,
        Errno::EINTR,
    ];
    error
        .raw_os_error()
        .is_some_and(|code| transient.iter().any(|e| *e as i32 == code))
}

/// A dump request for the ESTABLISHED and CLOSE_WAIT TCP sockets of `family`.
fn request(family: u8, seq: u32) -> Vec<u8> {
    let mut message = request_head(NLM_F_REQUEST | NLM_F_DUMP, seq);
    // struct inet_diag_req_v2: family, protocol, extensions, pad, states,
    // then a zeroed inet_diag_sockid (48 bytes: match any).
    message.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    message.extend_from_slice(&((1u32 << TCP_ESTABLISHED) | (1u32 << TCP_CLOSE_WAIT)).to_ne_bytes());
    message.resize(REQUEST_LENGTH, 0);
    message
}

/// Length of a request: its netlink header and a `struct inet_diag_req_v2`.
const REQUEST_LENGTH: usize = NLMSG_HEADER + 56;

/// The netlink header of a `SOCK_DIAG_BY_FAMILY` request of
/// [`REQUEST_LENGTH`] bytes, with room for the rest.
fn request_head(flags: u16, seq: u32) -> Vec<u8> {
    let mut message = Vec::with_capacity(REQUEST_LENGTH);
    message.extend_from_slice(&(REQUEST_LENGTH as u32).to_ne_bytes());
    message.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message
}

/// The error number of an `NLMSG_ERROR` message's payload (0 if cut).
fn error_number(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map_or(0, |b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// A request for the one TCP socket from `local` to `peer`, with its
/// `tcp_info`.
fn lookup_request(local: SocketAddr, peer: SocketAddr, seq: u32) -> io::Result<Vec<u8>> {
    let (family, local_ip, peer_ip) = match (local.ip(), peer.ip()) {
        (IpAddr::V4(l), IpAddr::V4(p)) => (AF_INET, l.octets().to_vec(), p.octets().to_vec()),
        (IpAddr::V6(l), IpAddr::V6(p)) => (AF_INET6, l.octets().to_vec(), p.octets().to_vec()),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "sock_diag: local and peer addresses of two families",
            ))
        }
    };
    let mut message = request_head(NLM_F_REQUEST, seq);
    // struct inet_diag_req_v2, its inet_diag_sockid naming the connection
    // from the socket's side: source = local, destination = peer, each
    // address in 16 bytes, ports in network order; any interface; no cookie.
    message.extend_from_slice(&[family, IPPROTO_TCP, 1u8 << (INET_DIAG_INFO - 1), 0]);
    message.extend_from_slice(&u32::MAX.to_ne_bytes());
    message.extend_from_slice(&local.port().to_be_bytes());
    message.extend_from_slice(&peer.port().to_be_bytes());
    for ip in [local_ip, peer_ip] {
        let mut field = [0u8; 16];
        field[..ip.len()].copy_from_slice(&ip);
        message.extend_from_slice(&field);
    }
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    message.extend_from_slice(&NO_COOKIE.to_ne_bytes());
    debug_assert_eq!(message.len(), REQUEST_LENGTH);
    Ok(message)
}

/// The reply to [`lookup_request`]: the bytes acknowledged, `None` for
/// `ENOENT`.
fn parse_lookup_reply(datagram: &[u8], seq: u32, peer_port: u16) -> io::Result<Option<u64>> {
    let unexpected = |what: &str| Err(io::Error::other(format!("sock_diag lookup: {what}")));
    if datagram.len() < NLMSG_HEADER {
        return unexpected("truncated reply");
    }
    let length = u32_at(datagram, 0) as usize;
    if length < NLMSG_HEADER || length > datagram.len() {
        return unexpected("truncated message");
    }
    if u32_at(datagram, 8) != seq {
        return unexpected("reply to another request");
    }
    let payload = &datagram[NLMSG_HEADER..length];
    match u16::from_ne_bytes([datagram[4], datagram[5]]) {
        NLMSG_ERROR => {
            let errno = error_number(payload);
            if errno == nix::libc::ENOENT {
                Ok(None)
            } else {
                Err(io::Error::from_raw_os_error(errno))
            }
        }
        SOCK_DIAG_BY_FAMILY if payload.len() >= DIAG_MSG => {
            let state = payload[1];
            let found_peer_port = u16::from_be_bytes([payload[6], payload[7]]);
            if state == TCP_LISTEN {
                return Ok(None);
            }
            if found_peer_port != peer_port {
                return unexpected("another connection found");
            }
            match tcp_info_u64(&payload[DIAG_MSG..], TCP_INFO_BYTES_ACKED) {
                Some(acked) => Ok(Some(acked)),
                None => unexpected("no tcp_info (kernel before 4.1?)"),
            }
        }
        _ => unexpected("unexpected message"),
    }
}

/// Reads the messages of one reply datagram: each socket whose local port
/// is `port` goes to `each`. True once the dump's end came.
fn parse_datagram(
    mut datagram: &[u8],
    seq: u32,
    port: u16,
    each: &mut impl FnMut(Listed),
) -> io::Result<bool> {
    while datagram.len() >= NLMSG_HEADER {
        let length = u32_at(datagram, 0) as usize;
        if length < NLMSG_HEADER || length > datagram.len() {
            return Err(io::Error::other("sock_diag: truncated message"));
        }
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        let payload = &datagram[NLMSG_HEADER..length];
        if u32_at(datagram, 8) == seq {
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    return Err(io::Error::from_raw_os_error(error_number(payload)));
                }
                SOCK_DIAG_BY_FAMILY => {
                    if let Some(listed) = parse_socket(payload, port) {
                        each(listed);
                    }
                }
                _ => {}
            }
        }
        // Messages are aligned to 4 bytes.
        let next = (length + 3) & !3;
        datagram = datagram.get(next..).unwrap_or(&[]);
    }
    Ok(false)
}

/// One `inet_diag_msg`: the socket if its local port is `port`.
fn parse_socket(message: &[u8], port: u16) -> Option<Listed> {
    if message.len() < DIAG_MSG {
        return None;
    }
    let family = message[0];
    let local_port = u16::from_be_bytes([message[4], message[5]]);
    if local_port != port {
        return None;
    }
    let peer_port = u16::from_be_bytes([message[6], message[7]]);
    let peer = &message[24..40];
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(peer[0], peer[1], peer[2], peer[3])),
        AF_INET6 => {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(peer);
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    let inode = u64::from(u32_at(message, 68));
    let peer = normalize(SocketAddr::new(ip, peer_port));
    if inode == 0 {
        None
    } else if u32::from(message[1]) == TCP_CLOSE_WAIT {
        Some(Listed::PeerClosed(peer))
    } else {
        Some(Listed::Open(Seen { inode, peer }))
    }
}

/// The `u64` at `offset` of the `tcp_info` in the attributes that follow an
/// `inet_diag_msg`, if its `tcp_info` is there and long enough.
fn tcp_info_u64(mut attributes: &[u8], offset: usize) -> Option<u64> {
    // Each attribute: length (header included) and type, 2 bytes each,
    // then its payload, padded to 4 bytes.
    while attributes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]);
        if length < 4 || length > attributes.len() {
            return None;
        }
        if kind == INET_DIAG_INFO {
            let info = &attributes[4..length];
            let field = info.get(offset..offset + 8)?;
            return Some(u64::from_ne_bytes(field.try_into().ok()?));
        }
        attributes = attributes.get((length + 3) & !3..).unwrap_or(&[]);
    }
    None
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A netlink message as the kernel sends it, padded to 4 bytes.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HEADER + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    /// An attribute after an `inet_diag_msg`, padded to 4 bytes.
    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn finds_an_accepted_connection_as_the_socket_table_lists_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server_side, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        match connections(port, |s| seen.push(s)) {
            Ok(()) => {}
            Err(e) => {
                // Sandboxes may refuse netlink; the guard then reads
                // /proc/net/tcp, which its own tests cover.
                eprintln!("sock_diag unavailable here ({e}): skipped");
                return;
            }
        }
        let mut listed = Vec::new();
        let table = std::fs::File::open("/proc/net/tcp").unwrap();
        crate::socket_table::parse_table(io::BufReader::new(table), port, &mut String::new(), |s| {
            listed.push(s)
        })
        .unwrap();
        assert_eq!(seen, listed, "the same sockets, peers and inodes");
        assert_eq!(seen.len(), 1, "the server's end only, not the client's");
        assert!(
            matches!(seen[0], Listed::Open(s) if s.peer == client.local_addr().unwrap()),
            "{seen:?}"
        );
    }

    #[test]
    fn only_passing_failures_are_worth_a_retry() {
        let os = io::Error::from_raw_os_error;
        assert!(is_transient(&os(nix::libc::EMFILE)));
        assert!(is_transient(&os(nix::libc::EAGAIN)), "no reply in time");
        assert!(!is_transient(&os(nix::libc::EPROTONOSUPPORT)));
        assert!(!is_transient(&os(nix::libc::EACCES)));
        assert!(!is_transient(&io::Error::other("sock_diag: truncated message")));
    }

    #[test]
    fn replies_are_read_message_by_message() {
        let socket = |local: u16, peer: [u8; 4], peer_port: u16, inode: u32| {
            let mut s = vec![0u8; DIAG_MSG];
            s[0] = AF_INET;
            s[1] = 1;
            s[4..6].copy_from_slice(&local.to_be_bytes());
            s[6..8].copy_from_slice(&peer_port.to_be_bytes());
            s[24..28].copy_from_slice(&peer);
            s[68..72].copy_from_slice(&inode.to_ne_bytes());
            s
        };
        let mut datagram = message(SOCK_DIAG_BY_FAMILY, 7, &socket(8000, [10, 0, 0, 1], 5000, 42));
        datagram.extend(message(
            SOCK_DIAG_BY_FAMILY,
            7,
            &socket(9000, [10, 0, 0, 2], 5001, 43),
        ));
        datagram.extend(message(
            SOCK_DIAG_BY_FAMILY,
            7,
            &socket(8000, [10, 0, 0, 3], 5002, 0),
        ));
        datagram.extend(message(
            SOCK_DIAG_BY_FAMILY,
            6,
            &socket(8000, [10, 0, 0, 4], 5003, 44),
        ));
        let mut closed = socket(8000, [10, 0, 0, 5], 5004, 45);
        closed[1] = TCP_CLOSE_WAIT as u8;
        datagram.extend(message(SOCK_DIAG_BY_FAMILY, 7, &closed));
        let mut seen = Vec::new();
        assert!(!parse_datagram(&datagram, 7, 8000, &mut |s| seen.push(s)).unwrap());
        assert_eq!(
            seen,
            vec![
                Listed::Open(Seen {
                    inode: 42,
                    peer: "10.0.0.1:5000".parse().unwrap()
                }),
                Listed::PeerClosed("10.0.0.5:5004".parse().unwrap()),
            ],
            "not: another port, inode 0, another request's reply"
        );
        let done = message(NLMSG_DONE, 7, &0i32.to_ne_bytes());
        assert!(parse_datagram(&done, 7, 8000, &mut |_| {}).unwrap());
        let refused = message(NLMSG_ERROR, 7, &(-1i32).to_ne_bytes());
        let error = parse_datagram(&refused, 7, 8000, &mut |_| {}).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(1));
        let cut = &datagram[..20];
        assert!(
            parse_datagram(cut, 7, 8000, &mut |_| {}).is_err(),
            "a truncated message is an error"
        );
    }

    #[test]
    fn a_lookup_finds_the_bytes_a_peer_acknowledged_and_then_no_connection() {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(local).unwrap();
        let (mut server_side, peer) = listener.accept().unwrap();
        server_side.write_all(&[b'x'; 5000]).unwrap();
        client.read_exact(&mut [0u8; 5000]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let acknowledged = loop {
            let found = match bytes_acknowledged(local, peer) {
                Ok(found) => found,
                Err(e) => {
                    eprintln!("sock_diag unavailable here ({e}): skipped");
                    return;
                }
            };
            if found == Some(5000) || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(acknowledged, Some(5000));
        let elsewhere = SocketAddr::new(peer.ip(), peer.port().wrapping_add(1).max(1));
        assert_eq!(
            bytes_acknowledged(local, elsewhere).unwrap(),
            None,
            "another peer port: not this connection, nor the listener"
        );
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let socket = |shared: &Option<Lookup>| shared.as_ref().map(|l| l.fd.as_raw_fd());
        let before = socket(&LOOKUP.lock().unwrap());
        assert!(bytes_acknowledged(local, v6).is_err(), "two families");
        assert_eq!(
            socket(&LOOKUP.lock().unwrap()),
            before,
            "nothing was sent: the shared socket stays"
        );
        assert!(before.is_some());
        drop(client);
        drop(server_side);
        // The server's side, closed after its peer, goes at once.
        let gone = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            bytes_acknowledged(local, peer).unwrap().is_none()
        });
        assert!(gone, "a closed connection is not found");
    }

    #[test]
    fn a_lookup_reply_is_the_acknowledged_count_or_no_connection() {
        let socket = |state: u8, peer_port: u16, acked: Option<u64>| {
            let mut s = vec![0u8; DIAG_MSG];
            s[0] = AF_INET;
            s[1] = state;
            s[6..8].copy_from_slice(&peer_port.to_be_bytes());
            if let Some(acked) = acked {
                let mut info = vec![0u8; 232];
                info[TCP_INFO_BYTES_ACKED..TCP_INFO_BYTES_ACKED + 8].copy_from_slice(&acked.to_ne_bytes());
                s.extend(attribute(INET_DIAG_INFO, &info));
            }
            s
        };
        let found = message(SOCK_DIAG_BY_FAMILY, 1, &socket(1, 5000, Some(777)));
        assert_eq!(parse_lookup_reply(&found, 1, 5000).unwrap(), Some(777));
        let no_such = message(NLMSG_ERROR, 1, &(-nix::libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_lookup_reply(&no_such, 1, 5000).unwrap(), None);
        let refused = message(NLMSG_ERROR, 1, &(-nix::libc::EPERM).to_ne_bytes());
        assert!(parse_lookup_reply(&refused, 1, 5000).is_err());
        let listener = message(SOCK_DIAG_BY_FAMILY, 1, &socket(TCP_LISTEN, 0, Some(0)));
        assert_eq!(
            parse_lookup_reply(&listener, 1, 5000).unwrap(),
            None,
            "the listener: no such connection"
        );
        let other = message(SOCK_DIAG_BY_FAMILY, 1, &socket(1, 5001, Some(777)));
        assert!(parse_lookup_reply(&other, 1, 5000).is_err(), "another connection");
        let no_info = message(SOCK_DIAG_BY_FAMILY, 1, &socket(1, 5000, None));
        assert!(parse_lookup_reply(&no_info, 1, 5000).is_err());
        assert!(
            parse_lookup_reply(&found, 2, 5000).is_err(),
            "another request's reply"
        );
        assert!(parse_lookup_reply(&found[..20], 1, 5000).is_err(), "truncated");
    }

    #[test]
    fn reads_a_count_from_the_tcp_info_attribute() {
        let mut info = vec![0u8; 232];
        info[TCP_INFO_BYTES_ACKED..TCP_INFO_BYTES_ACKED + 8].copy_from_slice(&123_456u64.to_ne_bytes());
        let mut attributes = attribute(1, &[7, 7, 7]);
        attributes.extend(attribute(INET_DIAG_INFO, &info));
        assert_eq!(tcp_info_u64(&attributes, TCP_INFO_BYTES_ACKED), Some(123_456));
        assert_eq!(
            tcp_info_u64(&attribute(INET_DIAG_INFO, &info[..100]), TCP_INFO_BYTES_ACKED),
            None,
            "too old a kernel"
        );
        assert_eq!(tcp_info_u64(&attribute(1, &info), TCP_INFO_BYTES_ACKED), None);
        assert_eq!(
            tcp_info_u64(&attributes[..6], TCP_INFO_BYTES_ACKED),
            None,
            "truncated"
        );
    }
}
