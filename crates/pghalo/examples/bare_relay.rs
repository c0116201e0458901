//! The ceiling of any proxy on this machine: a relay that copies bytes
//! between each client and its own server connection and does nothing
//! else (no protocol, no authentication, no pooling). bench/run measures it
//! as `bare-relay` beside pghalo and PgBouncer, so a ratio a proxy cannot
//! reach shows as one the bare relay does not reach either.
//!
//! Shaped like pghalo's own data path so the two compare: sessions run on
//! single-threaded workers (bench/run starts one per CPU, as pghalo does),
//! TCP_NODELAY both ways. Unlike pghalo, one thread accepts and hands the
//! sockets over; that costs only when connecting (`-C`).
//!
//! Usage: bare_relay LISTEN_ADDR UPSTREAM_ADDR [WORKERS]

use std::net::SocketAddr;
use std::sync::mpsc;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_relay LISTEN_ADDR UPSTREAM_ADDR [WORKERS]";
    let listen: SocketAddr = args.next().context(usage)?.parse().context(usage)?;
    let upstream: SocketAddr = args.next().context(usage)?.parse().context(usage)?;
    let workers: usize = match args.next() {
        Some(n) => n.parse().context(usage)?,
        None => 2,
    };

    let mut senders = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let (tx, rx) = mpsc::channel::<std::net::TcpStream>();
        senders.push(tx);
        std::thread::spawn(move || run_worker(rx, upstream));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        for next in (0..senders.len()).cycle() {
            // A failed accept (out of file descriptors, a reset in the
            // backlog) costs that client only.
            let client = match listener.accept().await.and_then(|(c, _)| c.into_std()) {
                Ok(client) => client,
                Err(error) => {
                    eprintln!("bare_relay: accept: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            senders[next].send(client)?;
        }
        Ok(())
    })
}

fn run_worker(sessions: mpsc::Receiver<std::net::TcpStream>, upstream: SocketAddr) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bare_relay: worker runtime: {error}");
            return;
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The std channel blocks, so it is drained on a plain thread that hands
    // each socket over to the runtime's own channel.
    std::thread::spawn(move || {
        while let Ok(client) = sessions.recv() {
            if tx.send(client).is_err() {
                return;
            }
        }
    });
    runtime.block_on(async move {
        while let Some(client) = rx.recv().await {
            tokio::spawn(async move {
                if let Err(error) = relay(client, upstream).await {
                    eprintln!("bare_relay: {error}");
                }
            });
        }
    });
}

async fn relay(client: std::net::TcpStream, upstream: SocketAddr) -> anyhow::Result<()> {
    client.set_nonblocking(true)?;
    let mut client = TcpStream::from_std(client)?;
    client.set_nodelay(true)?;
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    // A reset at the end of a pgbench run is how sessions end here.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    let _ = server.shutdown().await;
    Ok(())
}
