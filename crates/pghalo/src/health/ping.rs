//! Is the postmaster there at all? A connection and an SSLRequest, whose
//! one-byte answer ('S' or 'N') comes from the backend the postmaster
//! forks for it: no login, no catalog, no query. Used after a check timed
//! out, to tell a server that is slow (it still forks and answers at once)
//! from one that is hung or cut off (nothing answers).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::BackendHost;

use super::Target;

/// The SSLRequest packet: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// True if `target` answered an SSLRequest within `limit`.
pub async fn postmaster_answers(target: &Target, limit: Duration) -> bool {
    let attempt = async {
        let mut answer = [0u8; 1];
        match &target.host {
            BackendHost::Tcp(host) => {
                let mut stream =
                    tokio::net::TcpStream::connect((host.as_str(), target.port)).await?;
                stream.write_all(&SSL_REQUEST).await?;
                stream.read_exact(&mut answer).await?;
            }
            BackendHost::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", target.port));
                let mut stream = tokio::net::UnixStream::connect(path).await?;
                stream.write_all(&SSL_REQUEST).await?;
                stream.read_exact(&mut answer).await?;
            }
        }
        Ok::<u8, std::io::Error>(answer[0])
    };
    matches!(
        tokio::time::timeout(limit, attempt).await,
        Ok(Ok(b'S' | b'N'))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_listener_and_a_closed_port_do_not_answer() {
        // Accepts (the kernel completes the handshake) but never replies:
        // what a stopped postmaster looks like.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let target = Target {
            name: "t".into(),
            host: BackendHost::Tcp("127.0.0.1".into()),
            port,
        };
        assert!(!postmaster_answers(&target, Duration::from_millis(200)).await);
        drop(silent);
        assert!(!postmaster_answers(&target, Duration::from_millis(200)).await);

        // Answers 'N' like a postmaster without TLS.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            port: listener.local_addr().unwrap().port(),
            ..target
        };
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 8];
            socket.read_exact(&mut request).await.unwrap();
            assert_eq!(request, SSL_REQUEST);
            socket.write_all(b"N").await.unwrap();
        });
        assert!(postmaster_answers(&target, Duration::from_secs(5)).await);
    }
}
