//! Health probes and the replication monitor, sending observations to `cluster` and `coordinator`. Must not touch pools or run failover.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
