//! The server's TCP connections as the kernel's socket table lists them:
//! the listing's entries, and the text form of `/proc/net/tcp` and
//! `/proc/net/tcp6` parsed a line at a time (the netlink form is
//! `sock_diag`'s).

use std::io::{self, BufRead};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP_ESTABLISHED in `/proc/net/tcp`'s `st` column.
const ESTABLISHED: u8 = 0x01;

/// TCP_CLOSE_WAIT in `/proc/net/tcp`'s `st` column: the peer closed its
/// side (sent its FIN), this side is still open.
const CLOSE_WAIT: u8 = 0x08;

/// An ESTABLISHED connection to the server, as listed in `/proc/net/tcp*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The socket's inode (`socket:[INODE]` in `/proc/self/fd`).
    pub inode: u64,
    /// The client's address.
    pub peer: SocketAddr,
}

/// A connection to the server in a listing of the socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// ESTABLISHED.
    Open(Seen),
    /// CLOSE_WAIT: the client closed its side; the peer's address.
    PeerClosed(SocketAddr),
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps, so that a
/// dual-stack socket and tiny_http agree on a peer.
pub(crate) fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Calls `each` with the ESTABLISHED and CLOSE_WAIT sockets of `table`
/// (the text of `/proc/net/tcp` or `/proc/net/tcp6`) whose local port is
/// `port` and whose inode is not 0. Lines that do not parse are skipped.
///
/// Addresses are printed by the kernel as 32-bit words in the machine's
/// byte order (`%08X` of a network-order word), ports in plain hex.
///
/// The table is read a line at a time, never held whole: it is 150 bytes
/// per socket of the network namespace, TIME_WAIT included, megabytes at
/// 10,000 connections, and a buffer grown that big would stay in the
/// server's RSS for good. `line` is a reused buffer.
pub fn parse_table(
    mut table: impl BufRead,
    port: u16,
    line: &mut String,
    mut each: impl FnMut(Listed),
) -> io::Result<()> {
    // The first line is the column header.
    line.clear();
    table.read_line(line)?;
    loop {
        line.clear();
        if table.read_line(line)? == 0 {
            return Ok(());
        }
        if let Some(listed) = parse_line(line.trim_end(), port) {
            each(listed);
        }
    }
}

fn parse_line(line: &str, port: u16) -> Option<Listed> {
    let mut fields = line.split_whitespace();
    let _slot = fields.next()?;
    let (_, local_port) = parse_endpoint(fields.next()?)?;
    if local_port != port {
        return None;
    }
    let (peer_ip, peer_port) = parse_endpoint(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    if state != ESTABLISHED && state != CLOSE_WAIT {
        return None;
    }
    // tx:rx queues, timer, retransmits, uid, timeout, then the inode.
    let inode: u64 = fields.nth(5)?.parse().ok()?;
    if inode == 0 {
        return None;
    }
    let peer = normalize(SocketAddr::new(peer_ip, peer_port));
    Some(if state == CLOSE_WAIT {
        Listed::PeerClosed(peer)
    } else {
        Listed::Open(Seen { inode, peer })
    })
}

/// `0100007F:1F40` (IPv4) or 32 hex digits and a port (IPv6).
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F40 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D431 0100007F:1F40 01 00000000:00000000 00:00000000 00000000  1000        0 3333 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F40 0100007F:D432 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000
   4: 0100007F:1F40 0200A8C0:0050 01 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
   5: 0100007F:1F41 0100007F:D433 01 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0000000000000000 20 4 30 10 -1
   6: 0101A8C0:1F40 0A01A8C0:FFFF 01 00000000:00000000 00:00000000 00000000  1000        0 5555 1 0000000000000000 20 4 30 10 -1
   7: garbage
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 6666 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F40 00000000000000000000000001000000:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 7777 1 0000000000000000 20 4 30 10 -1
   2: 0000000000000000FFFF00000100007F:1F40 0000000000000000FFFF00000100007F:9C41 01 00000000:00000000 00:00000000 00000000  1000        0 8888 1 0000000000000000 20 4 30 10 -1
   3: B80D0120000000000000000001000000:1F40 B80D0120000000000000000002000000:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 9999 1 0000000000000000 20 4 30 10 -1
";

    /// Parses through a 16-byte buffer, so that lines straddle reads.
    fn parse_text(table: &str, port: u16, out: &mut Vec<Seen>) {
        let reader = io::BufReader::with_capacity(16, table.as_bytes());
        parse_table(reader, port, &mut String::new(), |listed| {
            if let Listed::Open(seen) = listed {
                out.push(seen);
            }
        })
        .unwrap();
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_socket_whose_client_closed_its_side_is_listed_as_such() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 2222 1 0000000000000000 20 4 30 10 -1
   1: 0100007F:1F40 0100007F:D432 08 00000000:00000000 00:00000000 00000000  1000        0 3333 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D432 0100007F:1F40 05 00000000:00000000 00:00000000 00000000  1000        0 0 1 0000000000000000 20 4 30 10 -1
";
        let mut listed = Vec::new();
        parse_table(table.as_bytes(), 8000, &mut String::new(), |l| listed.push(l)).unwrap();
        assert_eq!(
            listed,
            vec![
                Listed::Open(Seen {
                    inode: 2222,
                    peer: addr("127.0.0.1:54321")
                }),
                Listed::PeerClosed(addr("127.0.0.1:54322")),
            ],
            "CLOSE_WAIT (08) listed by its peer; the client's FIN_WAIT2 (05) end is another port's"
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn ipv4_table_keeps_established_server_sockets_with_an_inode() {
        let mut seen = Vec::new();
        parse_text(TCP, 8000, &mut seen);
        assert_eq!(
            seen,
            vec![
                Seen {
                    inode: 2222,
                    peer: addr("127.0.0.1:54321")
                },
                Seen {
                    inode: 5555,
                    peer: addr("192.168.1.10:65535")
                },
            ],
            "not: the listener (0A), the client end (local port 54321), TIME_WAIT (06), inode 0, another port"
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn ipv6_table_and_mapped_ipv4_peers() {
        let mut seen = Vec::new();
        parse_text(TCP6, 8000, &mut seen);
        assert_eq!(
            seen,
            vec![
                Seen {
                    inode: 7777,
                    peer: addr("[::1]:40000")
                },
                Seen {
                    inode: 8888,
                    peer: addr("127.0.0.1:40001")
                },
                Seen {
                    inode: 9999,
                    peer: addr("[2001:db8::2]:443")
                },
            ]
        );
        assert_eq!(
            normalize(addr("[::ffff:10.0.0.1]:5")),
            addr("10.0.0.1:5"),
            "tiny_http's view of a mapped peer matches the table's"
        );
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let mut seen = Vec::new();
        parse_text(
            "header\n\n 0: zz:1F40 0100007F:1 01 x x x x x 5\n 1: 0100007F:1F40\n",
            8000,
            &mut seen,
        );
        assert!(seen.is_empty(), "{seen:?}");
    }
}
