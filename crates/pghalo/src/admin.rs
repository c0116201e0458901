//! The ctl API, the PCP-compatible server, SQL SHOW commands, HTTP JSON and Prometheus metrics. Must not decide (it asks the coordinator).
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
