//! One client session after authentication: a server connection checked
//! out for the session (pgpool's model), the client's startup settings
//! applied, then bytes relayed both ways until either side ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};

use bytes::{Buf, BytesMut};
use pghalo_protocol::SqlState;
use pghalo_protocol::backend::{self as be, TransactionStatus};
use pghalo_protocol::{StartupMessage, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Proxy;
use super::cancel::{CancelHandle, CancelTarget};
use super::client_auth::Authenticated;
use super::error::ClientError;
use super::scan::Scanner;
use super::startup_params::{requested_settings, set_statements};
use crate::backend::ServerConnection;
use crate::net::{READ_CHUNK, Stream};
use crate::pool::{PoolKey, PooledConnection};

/// How a relay ended.
#[derive(Debug)]
enum End {
    /// Terminate received at a message boundary.
    ClientTerminated,
    /// The client closed its socket or it failed.
    ClientGone,
    /// The client sent something that is not the protocol.
    ClientProtocol(String),
    /// The server closed its socket or it failed.
    ServerGone,
}

pub(super) async fn run(
    proxy: Arc<Proxy>,
    client: &mut Stream,
    mut client_buf: BytesMut,
    who: Authenticated,
    startup: StartupMessage,
    cancel: CancelHandle,
) -> Result<(), ClientError> {
    let settings = proxy.settings();
    let node = settings.primary;
    let addr = settings.backends.get(node).cloned().ok_or_else(|| {
        ClientError::fatal(SqlState::CONNECTION_FAILURE, "no backend is configured")
    })?;
    let key = PoolKey {
        node,
        database: who.database.clone(),
        user: who.user.clone(),
    };
    let mut pooled = proxy
        .pools
        .checkout(&key, &addr, &who.credentials)
        .await
        .map_err(ClientError::from)?;
    let welcome = prepare(&mut pooled, &startup, &cancel).await?;
    client.write_all(&welcome).await.map_err(|_| gone())?;
    let Some(server) = pooled.get() else {
        return Ok(());
    };
    cancel.set_target(server.key.clone().map(|key| CancelTarget {
        addr: server.addr.clone(),
        key,
    }));

    let outstanding = AtomicI64::new(0);
    let status = AtomicU8::new(b'I');
    let end = relay(
        client,
        &mut client_buf,
        server,
        &outstanding,
        &status,
        proxy.max_message_len(),
    )
    .await;
    cancel.set_target(None);
    tracing::debug!(user = %who.user, ?end, "session ended");

    match end {
        End::ClientTerminated | End::ClientGone if outstanding.load(Ordering::Relaxed) == 0 => {
            if server.tx_status != TransactionStatus::Idle {
                // A client that left inside a transaction: roll it back so
                // the connection can serve someone else.
                let rolled_back = server.execute("ROLLBACK").await.is_ok();
                if !rolled_back {
                    return Ok(()); // pooled drops: closed, never reused
                }
            }
            pooled.release(true).await;
        }
        End::ServerGone => {
            let mut out = BytesMut::new();
            ClientError::fatal(
                SqlState::CONNECTION_FAILURE,
                "server closed the connection unexpectedly",
            )
            .write(&mut out);
            let _ = client.write_all(&out).await;
        }
        End::ClientProtocol(why) => {
            let mut out = BytesMut::new();
            ClientError::fatal(SqlState::PROTOCOL_VIOLATION, why).write(&mut out);
            let _ = client.write_all(&out).await;
        }
        // Mid-request: dropping the guard closes the server connection.
        End::ClientTerminated | End::ClientGone => {}
    }
    Ok(())
}

/// Applies the client's startup settings and builds what the client
/// expects after AuthenticationOk: every ParameterStatus, BackendKeyData,
/// ReadyForQuery.
async fn prepare(
    pooled: &mut PooledConnection,
    startup: &StartupMessage,
    cancel: &CancelHandle,
) -> Result<BytesMut, ClientError> {
    let server = pooled
        .get()
        .ok_or_else(|| ClientError::fatal(SqlState::INTERNAL_ERROR, "server connection missing"))?;
    let wanted = requested_settings(startup)?;
    let sql = set_statements(&wanted, &server.params);
    if !sql.is_empty() {
        server.execute(&sql).await.map_err(|e| match e {
            crate::backend::BackendError::Query(error, _) => ClientError::fatal(
                SqlState::from_code(&error.code).unwrap_or(SqlState::INVALID_PARAMETER_VALUE),
                error.message,
            ),
            other => ClientError::from_backend(&other),
        })?;
    }
    let mut out = BytesMut::new();
    for (name, value) in &server.params {
        be::write_parameter_status(&mut out, name, value)
            .map_err(|e| ClientError::fatal(SqlState::INTERNAL_ERROR, e.to_string()))?;
    }
    be::write_backend_key_data(&mut out, cancel.pid, &cancel.key);
    be::write_ready_for_query(&mut out, server.tx_status);
    Ok(out)
}

/// Relays until one side ends. The two directions run concurrently, each
/// reading and forwarding on its own, so a peer that is busy writing never
/// stops us reading from the other (no deadlock on full socket buffers).
async fn relay(
    client: &mut Stream,
    client_buf: &mut BytesMut,
    server: &mut ServerConnection,
    outstanding: &AtomicI64,
    status: &AtomicU8,
    max_message_len: usize,
) -> End {
    let (server_stream, server_buf) = server.io();
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server_stream);

    let upstream = async {
        let mut scanner = Scanner::client(max_message_len);
        loop {
            if client_buf.is_empty() {
                client_buf.reserve(READ_CHUNK);
                match client_read.read_buf(client_buf).await {
                    Ok(0) | Err(_) => return End::ClientGone,
                    Ok(_) => {}
                }
            }
            let scan = match scanner.scan(client_buf) {
                Ok(scan) => scan,
                Err(e) => return End::ClientProtocol(e.to_string()),
            };
            for (tag, _) in &scan.events {
                if matches!(
                    *tag,
                    frontend::QUERY | frontend::SYNC | frontend::FUNCTION_CALL
                ) {
                    outstanding.fetch_add(1, Ordering::Relaxed);
                }
            }
            if scan.forward > 0 {
                if server_write
                    .write_all(&client_buf[..scan.forward])
                    .await
                    .is_err()
                {
                    return End::ServerGone;
                }
                client_buf.advance(scan.forward);
            }
            if scan.terminate {
                return End::ClientTerminated;
            }
            if scan.forward == 0 {
                // An incomplete header: read more behind it.
                client_buf.reserve(READ_CHUNK);
                match client_read.read_buf(client_buf).await {
                    Ok(0) | Err(_) => return End::ClientGone,
                    Ok(_) => {}
                }
            }
        }
    };

    let downstream = async {
        let mut scanner = Scanner::server();
        loop {
            server_buf.reserve(READ_CHUNK);
            match server_read.read_buf(server_buf).await {
                Ok(0) | Err(_) => return End::ServerGone,
                Ok(_) => {}
            }
            let scan = match scanner.scan(server_buf) {
                Ok(scan) => scan,
                Err(_) => return End::ServerGone,
            };
            for (tag, first) in &scan.events {
                if *tag == be::READY_FOR_QUERY {
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                    if let Some(byte) = first {
                        status.store(*byte, Ordering::Relaxed);
                    }
                }
            }
            if scan.forward > 0 {
                if client_write
                    .write_all(&server_buf[..scan.forward])
                    .await
                    .is_err()
                {
                    return End::ClientGone;
                }
                server_buf.advance(scan.forward);
            }
        }
    };

    let end = tokio::select! {
        end = upstream => end,
        end = downstream => end,
    };
    server.tx_status = TransactionStatus::from_byte(status.load(Ordering::Relaxed))
        .unwrap_or(TransactionStatus::Failed);
    end
}

fn gone() -> ClientError {
    ClientError::fatal(SqlState::CONNECTION_FAILURE, "client went away")
}
