//! Failover, follow-primary, failback and switchover as explicit state machines; built-in SQL actions; command templates with pgpool placeholders. Must not talk to clients.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
