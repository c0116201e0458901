//! Server connections per (node, database, user), checked out through a guard whose Drop checks in, cleans or closes; FIFO waiters; limits. Must not change node health.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
