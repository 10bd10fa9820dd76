//! A small authoritative DNS server for the tests, on a free loopback UDP port: A, AAAA and SRV
//! records that a test sets and changes at will, answered with a TTL of 1 s; stopped, it no
//! longer answers (a DNS outage).
//!
//! Only what the gateway's resolver asks is understood: one question, class IN; names are
//! compared without case, with their final dot. A name without records of the asked type gets
//! an empty answer (NODATA); an unknown name gets NXDOMAIN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const A: u16 = 1;
const AAAA: u16 = 28;
const SRV: u16 = 33;
const TTL: u32 = 1;

#[derive(Clone, Debug)]
enum Data {
    Ip(IpAddr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

type Records = Arc<Mutex<HashMap<String, Vec<Data>>>>;

/// The server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Records,
    stop: Arc<AtomicBool>,
}

fn canonical(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

impl DnsServer {
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = socket.local_addr().expect("addr");
        let records: Records = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (served, stopped) = (Arc::clone(&records), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = answer(&buf[..n], &served.lock().unwrap()) {
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        DnsServer {
            addr,
            records,
            stop,
        }
    }

    /// `name`'s A/AAAA records are now `ips`.
    pub fn set_ips(&self, name: &str, ips: &[IpAddr]) {
        let mut records = self.records.lock().unwrap();
        let list = records.entry(canonical(name)).or_default();
        list.retain(|d| !matches!(d, Data::Ip(_)));
        list.extend(ips.iter().map(|ip| Data::Ip(*ip)));
    }

    /// `name`'s SRV records are now these `(priority, weight, port, target)`.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let mut all = self.records.lock().unwrap();
        let list = all.entry(canonical(name)).or_default();
        list.retain(|d| !matches!(d, Data::Srv { .. }));
        list.extend(
            records
                .iter()
                .map(|(priority, weight, port, target)| Data::Srv {
                    priority: *priority,
                    weight: *weight,
                    port: *port,
                    target: canonical(target),
                }),
        );
    }

    /// Stops answering.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The question's name (dotted, lower case) and where the question ends.
fn question(query: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut name = String::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        let label = query.get(at..at + len)?;
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        name.push('.');
        at += len;
    }
    Some((name, at + 4))
}

fn encode_name(name: &str, out: &mut Vec<u8>) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
}

fn answer(query: &[u8], records: &HashMap<String, Vec<Data>>) -> Option<Vec<u8>> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let (name, end) = question(query)?;
    let qtype = u16::from_be_bytes([*query.get(end - 4)?, *query.get(end - 3)?]);
    let known = records.get(&name);
    let mut answers = Vec::new();
    for data in known.into_iter().flatten() {
        let rdata = match (data, qtype) {
            (Data::Ip(IpAddr::V4(ip)), A) => ip.octets().to_vec(),
            (Data::Ip(IpAddr::V6(ip)), AAAA) => ip.octets().to_vec(),
            (
                Data::Srv {
                    priority,
                    weight,
                    port,
                    target,
                },
                SRV,
            ) => {
                let mut r = Vec::new();
                r.extend_from_slice(&priority.to_be_bytes());
                r.extend_from_slice(&weight.to_be_bytes());
                r.extend_from_slice(&port.to_be_bytes());
                encode_name(target, &mut r);
                r
            }
            _ => continue,
        };
        let mut record = vec![0xc0, 0x0c];
        record.extend_from_slice(&qtype.to_be_bytes());
        record.extend_from_slice(&1u16.to_be_bytes());
        record.extend_from_slice(&TTL.to_be_bytes());
        record.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        record.extend_from_slice(&rdata);
        answers.push(record);
    }
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, the opcode and RD as asked, AA, RA; NXDOMAIN for a name without any record.
    let rcode = if known.is_some() { 0 } else { 3 };
    out.push(0x80 | (query[2] & 0x79) | 0x04);
    out.push(0x80 | rcode);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query[12..end]);
    for a in answers {
        out.extend_from_slice(&a);
    }
    Some(out)
}
