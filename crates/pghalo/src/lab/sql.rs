//! SQL to the lab's nodes over tokio-postgres (the control path's client; the
//! data path never uses it).

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use super::error::LabError;
use super::layout::HOST;

/// Connects as `user` to the `postgres` database of the node on `port`.
pub async fn connect(
    node: &str,
    port: u16,
    user: &str,
    password: &str,
) -> Result<Client, LabError> {
    let mut config = Config::new();
    config
        .host(HOST)
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .application_name("pghalo-lab")
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| LabError::Sql {
        node: node.to_string(),
        detail: describe(&e),
    })?;
    tokio::spawn(async move {
        // The client half reports any failure; the connection only has to run.
        let _ = connection.await;
    });
    Ok(client)
}

/// tokio-postgres's Display hides the server's message behind "db error".
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

pub fn sql_error(node: &str) -> impl Fn(tokio_postgres::Error) -> LabError + '_ {
    move |e| LabError::Sql {
        node: node.to_string(),
        detail: describe(&e),
    }
}
