//! The HAProxy PROXY protocol header that a gateway sends first on an upstream connection.
//!
//! A layer-4 proxy opens its own connection to the upstream, so the upstream sees the gateway's
//! address, not the client's. The PROXY protocol fixes that: before any relayed byte, the gateway
//! writes one header naming the original client (source) and the address the client connected to
//! (destination). The format is HAProxy's `doc/proxy-protocol.txt`; the sections quoted below are
//! from that text.
//!
//! This module only builds headers (the sending side). When to send one and on which connection
//! is `proxy::tcp`'s business; which services ask for it, and the version, is the config's
//! ([`ProxyProtocol`] is defined with the config model, which imports nothing from `proxy`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use crate::config::ProxyProtocol;

/// The longest header [`ProxyProtocol::write_header`] can produce, in bytes.
///
/// Spec 2.1: the longest v1 line a receiver must accept is 107 bytes (the `UNKNOWN` form with
/// addresses); a `TCP6` line is at most 104. A v2 header with TCP/IPv6 addresses is 16 + 36 = 52.
/// Callers can size a buffer once with this.
pub const MAX_HEADER_LEN: usize = 107;

/// Spec 2.2: "a constant 12 bytes block containing the protocol signature". It holds a NUL byte,
/// so it is never treated as a C string.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Spec 2.2, 13th byte: version 2 in the high nibble, command PROXY (`\x1`) in the low one.
const V2_VERSION_PROXY: u8 = 0x21;
/// Version 2, command LOCAL (`\x0`): "the receiver must accept this connection as valid and must
/// use the real connection endpoints and discard the protocol block including the family".
const V2_VERSION_LOCAL: u8 = 0x20;
/// Spec 2.2, 14th byte: `\x11` is TCP over IPv4.
const V2_TCP4: u8 = 0x11;
/// `\x21` is TCP over IPv6.
const V2_TCP6: u8 = 0x21;
/// `\x00` is UNSPEC: "the sender should use this family when sending LOCAL commands or when
/// dealing with unsupported protocol families".
const V2_UNSPEC: u8 = 0x00;
/// Address block lengths: 2*4 + 2*2 for IPv4, 2*16 + 2*2 for IPv6.
const V2_TCP4_LEN: u16 = 12;
const V2_TCP6_LEN: u16 = 36;

/// The two endpoints as the header will present them, after IPv4-mapped IPv6 addresses were
/// turned back into IPv4.
enum Endpoints {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
    /// One IPv4 and one (non-mapped) IPv6 address: the header cannot say this, so it says
    /// nothing.
    Mixed,
}

impl Endpoints {
    fn of(client: IpAddr, local: IpAddr) -> Self {
        // A dual-stack listener (bound to `[::]`) reports IPv4 clients as `::ffff:a.b.c.d`.
        // Upstreams expect to see them as the IPv4 clients they are, so when both ends are
        // IPv4 at heart the header says TCP4.
        match (as_ipv4(client), as_ipv4(local)) {
            (Some(src), Some(dst)) => Endpoints::V4(src, dst),
            _ => match (client, local) {
                (IpAddr::V6(src), IpAddr::V6(dst)) => Endpoints::V6(src, dst),
                _ => Endpoints::Mixed,
            },
        }
    }
}

fn as_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

impl ProxyProtocol {
    /// The header announcing that `client` connected to `local` (the gateway's own address on
    /// the accepted connection), to be written before any relayed byte.
    pub fn header(self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_HEADER_LEN);
        self.write_header(client, local, &mut out);
        out
    }

    /// Appends the header to `out` (at most [`MAX_HEADER_LEN`] bytes), for callers that reuse
    /// a buffer.
    pub fn write_header(self, client: SocketAddr, local: SocketAddr, out: &mut Vec<u8>) {
        let endpoints = Endpoints::of(client.ip(), local.ip());
        match self {
            ProxyProtocol::V1 => write_v1(endpoints, client.port(), local.port(), out),
            ProxyProtocol::V2 => write_v2(endpoints, client.port(), local.port(), out),
        }
    }
}

/// Spec 2.1: `"PROXY" SP family SP src SP dst SP sport SP dport CRLF`, each separator exactly
/// one space, numbers in decimal without leading zeros.
fn write_v1(endpoints: Endpoints, sport: u16, dport: u16, out: &mut Vec<u8>) {
    match endpoints {
        Endpoints::V4(src, dst) => {
            out.extend_from_slice(b"PROXY TCP4 ");
            push_ipv4(out, src);
            out.push(b' ');
            push_ipv4(out, dst);
        }
        Endpoints::V6(src, dst) => {
            out.extend_from_slice(b"PROXY TCP6 ");
            push_ipv6(out, src);
            out.push(b' ');
            push_ipv6(out, dst);
        }
        Endpoints::Mixed => {
            // "For \"UNKNOWN\", the rest of the line before the CRLF may be omitted by the
            // sender": the short form, which the receiver answers by using the real endpoints.
            out.extend_from_slice(b"PROXY UNKNOWN\r\n");
            return;
        }
    }
    out.push(b' ');
    push_decimal(out, sport);
    out.push(b' ');
    push_decimal(out, dport);
    out.extend_from_slice(b"\r\n");
}

/// Spec 2.2: signature, version/command, family/protocol, a big-endian length of the address
/// block, then source address, destination address, source port, destination port, all in
/// network byte order.
fn write_v2(endpoints: Endpoints, sport: u16, dport: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    match endpoints {
        Endpoints::V4(src, dst) => {
            out.extend_from_slice(&[V2_VERSION_PROXY, V2_TCP4]);
            out.extend_from_slice(&V2_TCP4_LEN.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        Endpoints::V6(src, dst) => {
            out.extend_from_slice(&[V2_VERSION_PROXY, V2_TCP6]);
            out.extend_from_slice(&V2_TCP6_LEN.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        Endpoints::Mixed => {
            // No family fits, so LOCAL with UNSPEC and no address block: "When a sender presents
            // a LOCAL connection, it should not present any address so it sets this field to
            // zero." The receiver then uses the real endpoints, which is the best it can get.
            out.extend_from_slice(&[V2_VERSION_LOCAL, V2_UNSPEC, 0, 0]);
            return;
        }
    }
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
}

/// Spec 2.1: "exactly 4 integers in the range [0..255] ... in decimal ... separated by exactly
/// one dot", no leading zeros.
fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        push_decimal(out, u16::from(octet));
    }
}

/// Spec 2.1: "series of sets of 4 hexadecimal digits ... delimited by colons ... with the
/// acceptance of one double colon sequence to replace the largest acceptable range of
/// consecutive zeroes".
///
/// We write the RFC 5952 form (lowercase, no leading zeros, the longest run of two or more zero
/// groups as `::`), like `inet_ntop`, but never the dotted-quad tail that `inet_ntop` and std's
/// `Display` use for `::ffff:a.b.c.d`: the spec allows only hex groups, and that address can
/// reach here when the other end is a real IPv6 address.
fn push_ipv6(out: &mut Vec<u8>, ip: Ipv6Addr) {
    let groups = ip.segments();

    // The longest run of zero groups; the first one wins a tie (RFC 5952 4.2.3).
    let (mut best_start, mut best_len) = (0, 0);
    let mut i = 0;
    while i < groups.len() {
        if groups[i] == 0 {
            let start = i;
            while i < groups.len() && groups[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best_start, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    // A single zero group is written as `0`, not `::` (RFC 5952 4.2.2).
    let elided = if best_len >= 2 {
        best_start..best_start + best_len
    } else {
        0..0
    };

    let mut i = 0;
    while i < groups.len() {
        if i == elided.start && !elided.is_empty() {
            out.extend_from_slice(b"::");
            i = elided.end;
            continue;
        }
        if i > 0 && i != elided.end {
            out.push(b':');
        }
        push_hex(out, groups[i]);
        i += 1;
    }
}

fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let mut digits = [0u8; 5];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn push_hex(out: &mut Vec<u8>, n: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut started = false;
    for shift in [12u16, 8, 4, 0] {
        let nibble = usize::from((n >> shift) & 0xf);
        if nibble != 0 || started || shift == 0 {
            out.push(HEX[nibble]);
            started = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{SocketAddrV4, SocketAddrV6};

    /// What a receiver learns from a header.
    #[derive(Debug, PartialEq, Eq)]
    enum Parsed {
        /// The original endpoints.
        Proxy { src: SocketAddr, dst: SocketAddr },
        /// v1 `UNKNOWN` or v2 LOCAL: use the real connection's endpoints.
        UseReal,
    }

    /// A strict receiver for both versions, written from the spec text; returns what it parsed
    /// and how many bytes the header took.
    fn parse(bytes: &[u8]) -> Result<(Parsed, usize), String> {
        if bytes.starts_with(&V2_SIGNATURE) {
            parse_v2(bytes)
        } else {
            parse_v1(bytes)
        }
    }

    fn parse_v1(bytes: &[u8]) -> Result<(Parsed, usize), String> {
        let end = bytes
            .windows(2)
            .take(MAX_HEADER_LEN - 1)
            .position(|w| w == b"\r\n")
            .ok_or("no CRLF in the first 107 bytes")?;
        let line = std::str::from_utf8(&bytes[..end]).map_err(|e| e.to_string())?;
        if !line.is_ascii() {
            return Err("not US-ASCII".into());
        }
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["PROXY", "UNKNOWN", ..] => Ok((Parsed::UseReal, end + 2)),
            ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
                let ip = |s: &str| -> Result<IpAddr, String> {
                    if *family == "TCP4" {
                        // std's parser already refuses leading zeros in IPv4 octets.
                        s.parse::<Ipv4Addr>()
                            .map(IpAddr::V4)
                            .map_err(|e| e.to_string())
                    } else {
                        if s.contains('.') {
                            return Err(format!("{s}: IPv6 must be hex groups only"));
                        }
                        s.parse::<Ipv6Addr>()
                            .map(IpAddr::V6)
                            .map_err(|e| e.to_string())
                    }
                };
                let port = |s: &str| -> Result<u16, String> {
                    if s.len() > 1 && s.starts_with('0') {
                        return Err(format!("{s}: leading zero"));
                    }
                    s.parse::<u16>().map_err(|e| e.to_string())
                };
                let src = SocketAddr::new(ip(src)?, port(sport)?);
                let dst = SocketAddr::new(ip(dst)?, port(dport)?);
                Ok((Parsed::Proxy { src, dst }, end + 2))
            }
            _ => Err(format!("malformed line {line:?}")),
        }
    }

    fn parse_v2(bytes: &[u8]) -> Result<(Parsed, usize), String> {
        let head = bytes.get(..16).ok_or("short v2 header")?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        let block = bytes.get(16..16 + len).ok_or("short v2 address block")?;
        let total = 16 + len;
        match head[12] {
            V2_VERSION_LOCAL => return Ok((Parsed::UseReal, total)),
            V2_VERSION_PROXY => {}
            other => return Err(format!("bad version/command {other:#04x}")),
        }
        let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
        match head[13] {
            V2_TCP4 if len >= 12 => {
                let ip = |at: usize| {
                    IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).expect("4 bytes"))
                };
                Ok((
                    Parsed::Proxy {
                        src: SocketAddr::new(ip(0), port(8)),
                        dst: SocketAddr::new(ip(4), port(10)),
                    },
                    total,
                ))
            }
            V2_TCP6 if len >= 36 => {
                let ip = |at: usize| {
                    IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).expect("16 bytes"))
                };
                Ok((
                    Parsed::Proxy {
                        src: SocketAddr::new(ip(0), port(32)),
                        dst: SocketAddr::new(ip(16), port(34)),
                    },
                    total,
                ))
            }
            V2_UNSPEC => Ok((Parsed::UseReal, total)),
            other => Err(format!("bad family {other:#04x} with length {len}")),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn parses_config_values() {
        assert_eq!(ProxyProtocol::parse("v1"), Some(ProxyProtocol::V1));
        assert_eq!(ProxyProtocol::parse("v2"), Some(ProxyProtocol::V2));
        assert_eq!(ProxyProtocol::parse("V1"), None);
        assert_eq!(ProxyProtocol::parse("v3"), None);
        assert_eq!(ProxyProtocol::parse(""), None);
        for p in [ProxyProtocol::V1, ProxyProtocol::V2] {
            assert_eq!(ProxyProtocol::parse(p.as_str()), Some(p));
        }
    }

    #[test]
    fn v1_ipv4_is_the_spec_example() {
        let header = ProxyProtocol::V1.header(addr("192.168.0.1:56324"), addr("192.168.0.11:443"));
        assert_eq!(header, b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    }

    #[test]
    fn v1_extremes_of_ipv4() {
        let header = ProxyProtocol::V1.header(addr("255.255.255.255:65535"), addr("0.0.0.0:0"));
        assert_eq!(header, b"PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n");
        let longest =
            ProxyProtocol::V1.header(addr("255.255.255.255:65535"), addr("255.255.255.255:65535"));
        assert_eq!(
            longest.len(),
            56,
            "spec 2.1 says the longest TCP4 line is 56 bytes"
        );
    }

    #[test]
    fn v1_ipv6() {
        let header = ProxyProtocol::V1.header(
            addr("[2001:db8::1]:40000"),
            addr("[2001:db8:0:1:0:0:0:2]:8443"),
        );
        assert_eq!(
            header,
            b"PROXY TCP6 2001:db8::1 2001:db8:0:1::2 40000 8443\r\n"
        );

        let header = ProxyProtocol::V1.header(addr("[::1]:1"), addr("[::]:2"));
        assert_eq!(header, b"PROXY TCP6 ::1 :: 1 2\r\n");

        // The longest line: every group ffff.
        let all = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let header = ProxyProtocol::V1.header(addr(all), addr(all));
        assert_eq!(
            header.len(),
            104,
            "spec 2.1 says the longest TCP6 line is 104 bytes"
        );
    }

    #[test]
    fn ipv6_text_compresses_the_longest_zero_run_only() {
        let cases = [
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),      // longest run wins
            ("1:0:0:2:3:0:0:4", "1::2:3:0:0:4"),    // first of equal runs wins
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"), // a single zero group stays
            ("0:0:0:0:0:0:0:1", "::1"),
            ("1:0:0:0:0:0:0:0", "1::"),
            (
                "abcd:ef01:2345:6789:abcd:ef01:2345:6789",
                "abcd:ef01:2345:6789:abcd:ef01:2345:6789",
            ),
            // std would print `::ffff:192.0.2.1`; the spec allows hex groups only.
            ("::ffff:192.0.2.1", "::ffff:c000:201"),
        ];
        for (input, expected) in cases {
            let mut out = Vec::new();
            push_ipv6(&mut out, input.parse().expect("test address"));
            assert_eq!(String::from_utf8_lossy(&out), expected, "{input}");
        }
    }

    #[test]
    fn v4_mapped_addresses_become_tcp4() {
        let client = addr("[::ffff:10.0.0.7]:5000");
        let local = addr("[::ffff:10.0.0.1]:80");
        assert_eq!(
            ProxyProtocol::V1.header(client, local),
            b"PROXY TCP4 10.0.0.7 10.0.0.1 5000 80\r\n"
        );
        let v2 = ProxyProtocol::V2.header(client, local);
        assert_eq!(v2[13], V2_TCP4);
        // A plain IPv4 end with a mapped one is still IPv4 on both sides.
        assert_eq!(
            ProxyProtocol::V1.header(addr("10.0.0.7:5000"), local),
            b"PROXY TCP4 10.0.0.7 10.0.0.1 5000 80\r\n"
        );
    }

    #[test]
    fn a_mapped_address_beside_real_ipv6_stays_ipv6() {
        let header =
            ProxyProtocol::V1.header(addr("[::ffff:10.0.0.7]:5000"), addr("[2001:db8::1]:80"));
        assert_eq!(header, b"PROXY TCP6 ::ffff:a00:7 2001:db8::1 5000 80\r\n");
    }

    #[test]
    fn mixed_families_say_unknown_or_local() {
        let client = addr("10.0.0.7:5000");
        let local = addr("[2001:db8::1]:80");
        assert_eq!(
            ProxyProtocol::V1.header(client, local),
            b"PROXY UNKNOWN\r\n"
        );
        assert_eq!(
            ProxyProtocol::V2.header(local, client),
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"
        );
    }

    #[test]
    fn v2_ipv4_bytes() {
        let header = ProxyProtocol::V2.header(addr("192.168.0.1:56324"), addr("192.168.0.11:443"));
        let expected: Vec<u8> = [
            &b"\r\n\r\n\0\r\nQUIT\n"[..],
            &[0x21, 0x11, 0x00, 0x0c],
            &[192, 168, 0, 1],
            &[192, 168, 0, 11],
            &[0xdc, 0x04], // 56324
            &[0x01, 0xbb], // 443
        ]
        .concat();
        assert_eq!(header, expected);
        assert_eq!(header.len(), 28);
    }

    #[test]
    fn v2_ipv6_bytes() {
        let header = ProxyProtocol::V2.header(addr("[2001:db8::1]:40000"), addr("[::1]:8443"));
        let expected: Vec<u8> = [
            &b"\r\n\r\n\0\r\nQUIT\n"[..],
            &[0x21, 0x21, 0x00, 0x24],
            &[
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            ],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01],
            &[0x9c, 0x40], // 40000
            &[0x20, 0xfb], // 8443
        ]
        .concat();
        assert_eq!(header, expected);
        assert_eq!(header.len(), 52);
    }

    #[test]
    fn write_header_appends() {
        let mut out = b"before".to_vec();
        ProxyProtocol::V1.write_header(addr("1.2.3.4:5"), addr("6.7.8.9:10"), &mut out);
        assert_eq!(out, b"beforePROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n");
    }

    /// The address a receiver should arrive at: what the header means, mapped addresses folded
    /// to IPv4 as the sender does.
    fn expected(client: SocketAddr, local: SocketAddr) -> Parsed {
        match Endpoints::of(client.ip(), local.ip()) {
            Endpoints::V4(s, d) => Parsed::Proxy {
                src: SocketAddr::V4(SocketAddrV4::new(s, client.port())),
                dst: SocketAddr::V4(SocketAddrV4::new(d, local.port())),
            },
            Endpoints::V6(s, d) => Parsed::Proxy {
                src: SocketAddr::V6(SocketAddrV6::new(s, client.port(), 0, 0)),
                dst: SocketAddr::V6(SocketAddrV6::new(d, local.port(), 0, 0)),
            },
            Endpoints::Mixed => Parsed::UseReal,
        }
    }

    fn any_socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            any::<([u8; 4], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            any::<([u16; 8], u16)>().prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            // Zero runs and mapped addresses are where the text form has choices to make.
            (any::<[bool; 8]>(), any::<u16>()).prop_map(|(zeros, port)| {
                let mut groups = [0xffff_u16; 8];
                for (g, zero) in groups.iter_mut().zip(zeros) {
                    if zero {
                        *g = 0;
                    }
                }
                SocketAddr::from((groups, port))
            }),
            any::<([u8; 4], u16)>().prop_map(|(ip, port)| {
                SocketAddr::from((Ipv4Addr::from(ip).to_ipv6_mapped(), port))
            }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips_through_a_strict_receiver(
            client in any_socket_addr(),
            local in any_socket_addr(),
            trailing in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
                let mut wire = version.header(client, local);
                prop_assert!(wire.len() <= MAX_HEADER_LEN);
                let header_len = wire.len();
                // Relayed bytes follow at once; the receiver must stop exactly at the header.
                wire.extend_from_slice(&trailing);
                let (parsed, used) = parse(&wire).map_err(TestCaseError::fail)?;
                prop_assert_eq!(used, header_len);
                prop_assert_eq!(parsed, expected(client, local));
            }
        }
    }
}
