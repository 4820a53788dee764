//! Naming a peer that failed the HTTP/2 handshake by what it sent back: the first bytes of its
//! answer to an HTTP/2 client preface, read over a connection of our own.
//!
//! The HTTP/2 stack only says that the peer's bytes were not valid frames (or that the
//! connection ended), and how it says so depends on timing; the bytes themselves say whether the
//! peer is an HTTP/1.1 server, expects TLS, or accepted the connection only to drop it.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::text::clean;
use crate::verdict::OtherProtocol;

/// The client connection preface (RFC 9113 §3.4), followed by an empty SETTINGS frame.
const CLIENT_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// At most this many bytes of the answer are read: enough for an HTTP/1.x status line and the
/// start of its body, which says whether the port expects TLS.
const MAX_ANSWER: usize = 512;

/// The length of an HTTP/2 frame header.
const FRAME_HEADER: usize = 9;

/// What the peer did with an HTTP/2 client preface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// It answered with an HTTP/2 SETTINGS frame: it speaks HTTP/2.
    Http2,
    /// It answered in another protocol.
    Other(OtherProtocol),
    /// It accepted the connection, then reset it before sending a byte.
    Reset,
    /// It accepted the connection, then closed it before sending a byte.
    Closed,
    /// It sent nothing within the step's bound, or the connection could not be made again.
    Unknown,
}

/// How the read of the answer ended.
enum Ending {
    Enough,
    Closed,
    Reset,
    Failed,
}

/// Sends an HTTP/2 client preface to `addr` and names the peer by its answer, within `step`.
pub(crate) async fn sniff(addr: SocketAddr, step: Duration) -> Sniffed {
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    let ending = tokio::time::timeout(step, exchange(addr, &mut answer))
        .await
        .unwrap_or(Ending::Failed);
    judge(&answer, ending)
}

async fn exchange(addr: SocketAddr, answer: &mut Vec<u8>) -> Ending {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(error) => return ending_of(&error),
    };
    // A peer that already closed fails this write; what it sent before closing is still to be
    // read, and the read says how the connection ended.
    let _ = stream.write_all(CLIENT_PREFACE).await;
    let mut chunk = [0u8; MAX_ANSWER];
    loop {
        let room = MAX_ANSWER - answer.len();
        match stream.read(&mut chunk[..room]).await {
            Ok(0) => return Ending::Closed,
            Ok(read) => {
                answer.extend_from_slice(&chunk[..read]);
                if answer.len() >= MAX_ANSWER || decided(answer) {
                    return Ending::Enough;
                }
            }
            Err(error) => return ending_of(&error),
        }
    }
}

fn ending_of(error: &io::Error) -> Ending {
    match error.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => Ending::Reset,
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => Ending::Closed,
        _ => Ending::Failed,
    }
}

/// Whether the bytes so far already name the peer, so that no more need be waited for.
fn decided(answer: &[u8]) -> bool {
    is_settings_frame(answer)
        || is_tls_record(answer)
        || (answer.starts_with(b"HTTP/") && answer.windows(4).any(|w| w == b"\r\n\r\n"))
}

/// Names the peer by its answer, or by how the connection ended when it sent nothing.
fn judge(answer: &[u8], ending: Ending) -> Sniffed {
    if answer.is_empty() {
        return match ending {
            Ending::Reset => Sniffed::Reset,
            Ending::Closed => Sniffed::Closed,
            Ending::Enough | Ending::Failed => Sniffed::Unknown,
        };
    }
    if is_settings_frame(answer) {
        return Sniffed::Http2;
    }
    if is_tls_record(answer) {
        return Sniffed::Other(OtherProtocol::Tls);
    }
    if answer.starts_with(b"HTTP/") || is_html(answer) {
        let text = String::from_utf8_lossy(answer);
        // Go's TLS servers (and others) answer plaintext with an HTTP/1.x 400 that says so.
        if text.contains("HTTPS") || text.contains("TLS") || text.contains("SSL") {
            return Sniffed::Other(OtherProtocol::Tls);
        }
        let status_line = text.lines().next().unwrap_or_default();
        return Sniffed::Other(OtherProtocol::Http1(clean(status_line, 100)));
    }
    let first = &answer[..answer.len().min(32)];
    Sniffed::Other(OtherProtocol::Unknown(clean(
        &first.escape_ascii().to_string(),
        140,
    )))
}

/// A frame header of a SETTINGS frame on stream 0: what an HTTP/2 server sends first.
fn is_settings_frame(answer: &[u8]) -> bool {
    let Some(header) = answer.get(..FRAME_HEADER) else {
        return false;
    };
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    header[3] == 0x04 && stream == 0 && length.is_multiple_of(6) && length <= 16_384
}

/// An HTML page with no HTTP head: what some HTTP/1.x servers (Python's `http.server`) answer
/// a request line they read as HTTP/0.9.
fn is_html(answer: &[u8]) -> bool {
    let lowercase = answer.trim_ascii_start().to_ascii_lowercase();
    lowercase.starts_with(b"<!doctype html") || lowercase.starts_with(b"<html")
}

/// A TLS record header: an alert (21) or a handshake (22), protocol version 3.x.
fn is_tls_record(answer: &[u8]) -> bool {
    matches!(answer, [0x15 | 0x16, 0x03, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_named_by_their_first_bytes() {
        let settings = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64";
        assert_eq!(judge(settings, Ending::Enough), Sniffed::Http2);
        assert_eq!(
            judge(b"HTTP/1.1 400 Bad Request\r\n\r\n", Ending::Closed),
            Sniffed::Other(OtherProtocol::Http1("HTTP/1.1 400 Bad Request".to_owned()))
        );
        let go_tls =
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";
        assert_eq!(
            judge(go_tls, Ending::Closed),
            Sniffed::Other(OtherProtocol::Tls)
        );
        assert_eq!(
            judge(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46], Ending::Closed),
            Sniffed::Other(OtherProtocol::Tls)
        );
        assert_eq!(
            judge(b"\x00\x01garbage\n", Ending::Reset),
            Sniffed::Other(OtherProtocol::Unknown("\\x00\\x01garbage\\n".to_owned()))
        );
        assert_eq!(
            judge(b"<!DOCTYPE HTML>\n<html lang=\"en\">", Ending::Closed),
            Sniffed::Other(OtherProtocol::Http1("<!DOCTYPE HTML>".to_owned()))
        );
        assert_eq!(judge(b"", Ending::Reset), Sniffed::Reset);
        assert_eq!(judge(b"", Ending::Closed), Sniffed::Closed);
        assert_eq!(judge(b"", Ending::Failed), Sniffed::Unknown);
    }

    proptest::proptest! {
        /// No answer makes the judge panic, and what it prints of an answer stays short.
        #[test]
        fn any_answer_is_judged(answer in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let judged = judge(&answer, Ending::Closed);
            proptest::prop_assert_eq!(judged == Sniffed::Http2, is_settings_frame(&answer));
            match judged {
                Sniffed::Other(OtherProtocol::Http1(text) | OtherProtocol::Unknown(text)) => {
                    proptest::prop_assert!(text.chars().count() <= 141);
                }
                Sniffed::Closed => proptest::prop_assert!(answer.is_empty()),
                _ => {}
            }
        }
    }
}
