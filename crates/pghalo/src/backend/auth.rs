//! Logging in to a backend with whatever method it asks for: trust,
//! cleartext, md5 or SCRAM-SHA-256.

use bytes::BytesMut;
use pghalo_protocol::backend::{self as be, Authentication};
use pghalo_protocol::frontend;
use pghalo_protocol::scram::{self, Nonce, ScramClient, ScramCredentials};

use super::{BackendError, ServerConnection, ServerError};

/// What pghalo can prove to a backend on a user's behalf.
#[derive(Clone)]
pub enum BackendCredentials {
    /// Nothing: only `trust` backends accept it.
    None,
    /// The password itself (pool_passwd plain text or AES entry).
    Password(Vec<u8>),
    /// md5(password + user), enough for md5 but not for SCRAM.
    Md5Hash(String),
    /// Keys recovered from the client's own SCRAM exchange.
    Scram(ScramCredentials),
}

impl std::fmt::Debug for BackendCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendCredentials::None => "None",
            BackendCredentials::Password(_) => "Password(<redacted>)",
            BackendCredentials::Md5Hash(_) => "Md5Hash(<redacted>)",
            BackendCredentials::Scram(_) => "Scram(<redacted>)",
        })
    }
}

pub(super) async fn login(
    conn: &mut ServerConnection,
    user: &str,
    credentials: &BackendCredentials,
) -> Result<(), BackendError> {
    let mut scram: Option<scram::ClientFirstSent> = None;
    let mut scram_final: Option<scram::ClientFinalSent> = None;
    loop {
        let msg = conn.read().await?;
        if msg.tag == be::ERROR_RESPONSE {
            return Err(BackendError::Refused {
                addr: conn.addr.clone(),
                error: ServerError::from_fields(msg.body),
            });
        }
        if msg.tag != be::AUTHENTICATION {
            return Err(conn.protocol(format!(
                "expected an authentication request, got message '{}'",
                msg.tag as char
            )));
        }
        let request = Authentication::parse(&msg.body).map_err(|e| conn.protocol(e))?;
        let mut out = BytesMut::new();
        match request {
            Authentication::Ok => return Ok(()),
            Authentication::CleartextPassword => {
                let BackendCredentials::Password(password) = credentials else {
                    return Err(no_credentials(
                        conn,
                        "the backend asks for a cleartext password",
                    ));
                };
                frontend::write_password(&mut out, password).map_err(|e| conn.protocol(e))?;
            }
            Authentication::Md5Password { salt } => {
                let response = match credentials {
                    BackendCredentials::Password(password) => {
                        pghalo_protocol::md5::client_response(user, password, salt)
                    }
                    BackendCredentials::Md5Hash(hash) => {
                        pghalo_protocol::md5::Md5Secret::parse_stored(hash)
                            .map_err(|e| conn.protocol(e))?
                            .response(user, salt)
                    }
                    _ => return Err(no_credentials(conn, "the backend asks for md5")),
                };
                frontend::write_password(&mut out, response.as_bytes())
                    .map_err(|e| conn.protocol(e))?;
            }
            Authentication::Sasl { mechanisms } => {
                if !mechanisms.contains(scram::SCRAM_SHA_256) {
                    return Err(BackendError::UnsupportedAuth {
                        addr: conn.addr.clone(),
                        method: "a SASL mechanism other than SCRAM-SHA-256".into(),
                    });
                }
                let creds = match credentials {
                    BackendCredentials::Password(password) => {
                        ScramCredentials::Password(password.clone())
                    }
                    BackendCredentials::Scram(creds) => creds.clone(),
                    _ => {
                        return Err(no_credentials(
                            conn,
                            "the backend asks for SCRAM-SHA-256, which needs the password or the client's SCRAM keys",
                        ));
                    }
                };
                let nonce = Nonce::random().map_err(|e| conn.protocol(e))?;
                let (state, first) = ScramClient::new(creds, nonce).client_first();
                frontend::write_sasl_initial_response(&mut out, scram::SCRAM_SHA_256, &first)
                    .map_err(|e| conn.protocol(e))?;
                scram = Some(state);
            }
            Authentication::SaslContinue { data } => {
                let state = scram
                    .take()
                    .ok_or_else(|| conn.protocol("SASLContinue without a SASL exchange"))?;
                let (next, client_final) = state
                    .handle_server_first(data)
                    .map_err(|e| no_credentials(conn, e))?;
                frontend::write_sasl_response(&mut out, &client_final)
                    .map_err(|e| conn.protocol(e))?;
                scram_final = Some(next);
            }
            Authentication::SaslFinal { data } => {
                let state = scram_final
                    .take()
                    .ok_or_else(|| conn.protocol("SASLFinal out of order"))?;
                state
                    .handle_server_final(data)
                    .map_err(|e| conn.protocol(format!("server signature: {e}")))?;
                continue;
            }
            Authentication::Unsupported(code) => {
                return Err(BackendError::UnsupportedAuth {
                    addr: conn.addr.clone(),
                    method: format!("authentication request {code}"),
                });
            }
        }
        conn.write_all(&out).await?;
    }
}

fn no_credentials(conn: &ServerConnection, why: impl std::fmt::Display) -> BackendError {
    BackendError::NoCredentials {
        addr: conn.addr.clone(),
        why: why.to_string(),
    }
}
