//! The startup phase of a client connection: SSLRequest answered (with a
//! TLS handshake when TLS is on) and GSSENCRequest refused, a CancelRequest
//! recognised, protocol versions negotiated, all within
//! `authentication_timeout`.

use bytes::BytesMut;
use pghalo_protocol::{SqlState, StartupMessage, StartupPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ClientError;
use crate::net::Stream;
use crate::net::tls::ServerTls;

/// The newest 3.x minor version pghalo speaks to clients.
const NEWEST_MINOR: u16 = 0;

/// What a new connection turned out to be.
pub enum Opening {
    Startup(StartupMessage),
    Cancel {
        pid: i32,
        key: pghalo_protocol::CancelKey,
    },
}

/// Why the startup phase ended without a session.
pub enum StartupFailure {
    /// The client went away or sent bytes that are not a startup packet:
    /// nothing sensible to answer.
    Gone,
    /// A well-formed request pghalo refuses: tell the client on `stream`
    /// (encrypted if the handshake already happened), then close.
    Refuse(Stream, ClientError),
}

/// Reads until the client's startup packet or cancel request. With `tls`,
/// an SSLRequest on TCP is answered 'S' and the stream comes back
/// encrypted; without, it is answered 'N'. The stream is taken and given
/// back because the handshake replaces it.
pub async fn read_opening(
    mut stream: Stream,
    buf: &mut BytesMut,
    tls: Option<&ServerTls>,
) -> Result<(Stream, Opening), StartupFailure> {
    let mut answered_ssl = false;
    let mut answered_gss = false;
    loop {
        let packet = match StartupPacket::decode(buf) {
            Ok(Some(packet)) => packet,
            Ok(None) => {
                buf.reserve(1024);
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return Err(StartupFailure::Gone),
                    Ok(_) => continue,
                }
            }
            Err(e) => {
                tracing::debug!("bad startup packet: {e}");
                let error = ClientError::fatal(e.sqlstate(), e.to_string());
                return Err(StartupFailure::Refuse(stream, error));
            }
        };
        match packet {
            StartupPacket::SslRequest if !answered_ssl => {
                answered_ssl = true;
                match tls.filter(|_| stream.can_start_tls()) {
                    Some(tls) => {
                        // CVE-2021-23214: bytes that came with the SSLRequest
                        // were sent in clear before the handshake and may
                        // have been injected by a man in the middle; they
                        // must never be read as if they were protected.
                        if !buf.is_empty() {
                            tracing::warn!("unencrypted data after an SSLRequest refused");
                            return Err(StartupFailure::Refuse(stream, unencrypted_after_ssl()));
                        }
                        write(&mut stream, b"S").await?;
                        stream = stream.accept_tls(tls).await.map_err(|e| {
                            tracing::debug!("TLS handshake with a client failed: {e}");
                            StartupFailure::Gone
                        })?;
                        // Encrypted now: GSSAPI encryption cannot follow,
                        // as in PostgreSQL.
                        answered_gss = true;
                    }
                    None => write(&mut stream, b"N").await?,
                }
            }
            StartupPacket::GssEncRequest if !answered_gss => {
                answered_gss = true;
                write(&mut stream, b"N").await?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let error =
                    ClientError::fatal(SqlState::PROTOCOL_VIOLATION, "encryption requested twice");
                return Err(StartupFailure::Refuse(stream, error));
            }
            StartupPacket::CancelRequest { pid, key } => {
                return Ok((stream, Opening::Cancel { pid, key }));
            }
            StartupPacket::Startup(msg) => {
                if !buf.is_empty() {
                    // A client must wait for the answer to its startup
                    // packet: bytes sent before it are refused rather than
                    // guessed at (in plain text, they may be injected).
                    let error = ClientError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        if stream.is_encrypted() {
                            "received data after the startup packet before the server's answer"
                        } else {
                            "received unencrypted data after the startup packet"
                        },
                    );
                    return Err(StartupFailure::Refuse(stream, error));
                }
                if let Some(negotiation) = msg.negotiation(NEWEST_MINOR, &[]) {
                    let mut out = BytesMut::new();
                    if negotiation.encode(&mut out).is_ok() {
                        write(&mut stream, &out).await?;
                    }
                }
                return Ok((stream, Opening::Startup(msg)));
            }
        }
    }
}

/// PostgreSQL's words for the same refusal.
fn unencrypted_after_ssl() -> ClientError {
    ClientError::fatal(
        SqlState::PROTOCOL_VIOLATION,
        "received unencrypted data after SSL request",
    )
    .with_detail(
        "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack.",
    )
}

async fn write(stream: &mut Stream, bytes: &[u8]) -> Result<(), StartupFailure> {
    stream
        .write_all(bytes)
        .await
        .map_err(|_| StartupFailure::Gone)
}
