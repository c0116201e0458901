//! One client session after authentication: the relay set up for the
//! configured pooling mode, the client's startup settings applied to its
//! first server connection, the welcome sent, then the relay run to the end.

use std::sync::Arc;

use bytes::BytesMut;
use pghalo_protocol::{SqlState, StartupMessage};

use super::Proxy;
use super::cancel::CancelHandle;
use super::client_auth::Authenticated;
use super::error::ClientError;
use super::relay::{ClientSettings, Relay};
use super::route::{SessionIdentity, SessionRoute};
use super::startup_params::requested_settings;
use crate::net::Stream;
use crate::pool::PoolKey;

pub(super) async fn run(
    proxy: Arc<Proxy>,
    client: &mut Stream,
    client_buf: BytesMut,
    who: Authenticated,
    startup: StartupMessage,
    cancel: CancelHandle,
) -> Result<(), ClientError> {
    let settings = proxy.settings();
    let node = proxy.primary_node();
    let addr = settings.backends.get(node).cloned().ok_or_else(|| {
        ClientError::fatal(SqlState::CONNECTION_FAILURE, "no backend is configured")
    })?;
    let key = PoolKey {
        node,
        database: who.database.clone(),
        user: who.user.clone(),
    };
    let requested = requested_settings(&startup)?;
    if settings.pool_mode == crate::config::PoolMode::Transaction
        && let Some(why) = super::tx_policy::startup_refusal(&requested)
    {
        return Err(ClientError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!("{why} is not supported in transaction pooling mode"),
        ));
    }
    let wanted = ClientSettings::new(requested);
    let route = SessionRoute::new(SessionIdentity {
        database: who.database.clone(),
        user: who.user.clone(),
        application_name: startup.param("application_name").map(str::to_owned),
    });
    let mut relay = Relay::new(
        proxy.clone(),
        settings.pool_mode,
        key,
        addr,
        who.credentials,
        client,
        &cancel,
        wanted,
        client_buf,
        route,
    );
    // The first server connection proves the settings are valid and gives
    // the ParameterStatus values the client expects before its first query.
    relay.attach().await?;
    relay.welcome()?;
    let end = relay.run().await;
    tracing::debug!(user = %who.user, ?end, "session ended");
    Ok(())
}
