//! The startup phase of a client connection: SSLRequest and GSSENCRequest
//! answered, a CancelRequest recognised, protocol versions negotiated, all
//! within `authentication_timeout`.

use bytes::BytesMut;
use pghalo_protocol::{SqlState, StartupMessage, StartupPacket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::ClientError;
use crate::net::Stream;

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
    /// A well-formed request pghalo refuses: tell the client, then close.
    Refuse(ClientError),
}

pub async fn read_opening(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Opening, StartupFailure> {
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
                return Err(StartupFailure::Refuse(ClientError::fatal(
                    e.sqlstate(),
                    e.to_string(),
                )));
            }
        };
        match packet {
            StartupPacket::SslRequest if !answered_ssl => {
                answered_ssl = true;
                write(stream, b"N").await?;
            }
            StartupPacket::GssEncRequest if !answered_gss => {
                answered_gss = true;
                write(stream, b"N").await?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                return Err(StartupFailure::Refuse(ClientError::fatal(
                    SqlState::PROTOCOL_VIOLATION,
                    "encryption requested twice",
                )));
            }
            StartupPacket::CancelRequest { pid, key } => return Ok(Opening::Cancel { pid, key }),
            StartupPacket::Startup(msg) => {
                if !buf.is_empty() {
                    // PostgreSQL refuses pipelined bytes after an SSLRequest
                    // answer too: they could not have been encrypted.
                    return Err(StartupFailure::Refuse(ClientError::fatal(
                        SqlState::PROTOCOL_VIOLATION,
                        "received unencrypted data after the startup packet",
                    )));
                }
                if let Some(negotiation) = msg.negotiation(NEWEST_MINOR, &[]) {
                    let mut out = BytesMut::new();
                    if negotiation.encode(&mut out).is_ok() {
                        write(stream, &out).await?;
                    }
                }
                return Ok(Opening::Startup(msg));
            }
        }
    }
}

async fn write(stream: &mut Stream, bytes: &[u8]) -> Result<(), StartupFailure> {
    stream
        .write_all(bytes)
        .await
        .map_err(|_| StartupFailure::Gone)
}
