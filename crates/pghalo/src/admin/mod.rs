//! The ctl API, the PCP-compatible server, SQL SHOW commands, HTTP JSON and
//! Prometheus metrics. Must not decide (it asks the coordinator).
//!
//! # Layout
//! - `show.rs`: pgpool-II's SQL SHOW commands (`SHOW POOL_NODES` and its
//!   kin): [`show::parse_show`] recognises one in a client's query text,
//!   cheaply enough for every Query and Parse, and [`show::render`] builds
//!   the result set from plain data the proxy gathers. Pure: no I/O, no
//!   locks; the proxy answers the client with what it renders.
//! - `ctl.rs`: the control socket `pghalo ctl` talks to ([`ctl::CtlServer`],
//!   [`ctl::send`]), one JSON line each way, for the daemon's own user.
//! - `ctl_commands.rs`: what nodes, events, attach, detach and promote do
//!   and print.
//!
//! Not built yet: the PCP server, HTTP JSON and metrics.

pub mod ctl;
mod ctl_commands;
pub mod show;
