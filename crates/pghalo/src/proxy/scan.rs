//! Finding message boundaries in a byte stream that is forwarded as it
//! arrives. The relay must notice a few message kinds (ReadyForQuery and its
//! status, Terminate, the requests that will be answered by one) without
//! buffering whole messages: a 100 MB DataRow passes through in read-sized
//! pieces.

/// Where a scan of a buffer stopped, and what it saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Bytes from the start of the buffer that may be forwarded now.
    pub forward: usize,
    /// Messages whose header was fully seen, in order: (tag, first body
    /// byte for the kinds that need it).
    pub events: Vec<(u8, Option<u8>)>,
    /// A Terminate ('X') was found at `forward`: the bytes before it are
    /// the client's last.
    pub terminate: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("message '{tag}' has invalid length {len}")]
pub struct ScanError {
    pub tag: char,
    pub len: i64,
}

/// Scans one direction of a connection; keeps the position inside a
/// message that continues into the next read.
#[derive(Debug)]
pub struct Scanner {
    /// Body bytes of the current message not yet seen.
    skip: usize,
    /// Tags whose first body byte the caller needs (held back until it
    /// arrives).
    peek: &'static [u8],
    /// Whether 'X' ends the stream (client side).
    stop_at_terminate: bool,
    max_len: usize,
}

impl Scanner {
    pub fn server() -> Scanner {
        Scanner {
            skip: 0,
            peek: b"Z",
            stop_at_terminate: false,
            max_len: usize::MAX,
        }
    }

    pub fn client(max_len: usize) -> Scanner {
        Scanner {
            skip: 0,
            peek: b"",
            stop_at_terminate: true,
            max_len,
        }
    }

    /// Whether the stream is between messages (nothing of one is pending).
    #[cfg(test)]
    pub fn at_boundary(&self) -> bool {
        self.skip == 0
    }

    pub fn scan(&mut self, buf: &[u8]) -> Result<Scan, ScanError> {
        let mut scan = Scan::default();
        let mut pos = self.skip.min(buf.len());
        self.skip -= pos;
        while pos < buf.len() {
            let Some(header) = buf.get(pos..pos + 5) else {
                break;
            };
            let tag = header[0];
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if len < 4 || (len as usize) > self.max_len {
                return Err(ScanError {
                    tag: tag as char,
                    len: i64::from(len),
                });
            }
            let total = 1 + len as usize;
            if self.stop_at_terminate && tag == b'X' {
                scan.terminate = true;
                break;
            }
            let first = if self.peek.contains(&tag) && len > 4 {
                match buf.get(pos + 5) {
                    Some(b) => Some(*b),
                    None => break, // wait for the byte that matters
                }
            } else {
                None
            };
            scan.events.push((tag, first));
            let available = buf.len() - pos;
            if available >= total {
                pos += total;
            } else {
                self.skip = total - available;
                pos = buf.len();
            }
        }
        scan.forward = pos;
        Ok(scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn finds_ready_for_query_split_anywhere() {
        let mut stream = msg(b'D', &[7; 100]);
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'Z', b"I"));
        for split in 0..stream.len() {
            let mut scanner = Scanner::server();
            let (a, b) = stream.split_at(split);
            let first = scanner.scan(a).unwrap();
            let mut rest = a[first.forward..].to_vec();
            rest.extend_from_slice(b);
            let second = scanner.scan(&rest).unwrap();
            assert_eq!(second.forward, rest.len(), "split at {split}");
            let mut events = first.events.clone();
            events.extend(second.events);
            assert_eq!(
                events,
                vec![(b'D', None), (b'C', None), (b'Z', Some(b'I'))],
                "split at {split}"
            );
            assert!(scanner.at_boundary());
        }
    }

    #[test]
    fn large_messages_flow_without_buffering() {
        let big = msg(b'D', &vec![1; 1_000_000]);
        let mut scanner = Scanner::server();
        let scan = scanner.scan(&big[..16 * 1024]).unwrap();
        assert_eq!(scan.forward, 16 * 1024);
        assert!(!scanner.at_boundary());
        let scan = scanner.scan(&big[16 * 1024..]).unwrap();
        assert_eq!(scan.forward, big.len() - 16 * 1024);
        assert!(scanner.at_boundary());
    }

    #[test]
    fn terminate_stops_the_client_stream() {
        let mut stream = msg(b'Q', b"SELECT 1\0");
        let before = stream.len();
        stream.extend(msg(b'X', b""));
        let scan = Scanner::client(1 << 20).scan(&stream).unwrap();
        assert!(scan.terminate);
        assert_eq!(scan.forward, before);
        assert_eq!(scan.events, vec![(b'Q', None)]);
    }

    #[test]
    fn lying_lengths_are_errors() {
        assert!(Scanner::server().scan(&[b'Z', 0, 0, 0, 3]).is_err());
        assert!(
            Scanner::server()
                .scan(&[b'Z', 0xff, 0xff, 0xff, 0xff])
                .is_err()
        );
        assert!(Scanner::client(1000).scan(&[b'Q', 0, 1, 0, 0]).is_err());
    }
}
