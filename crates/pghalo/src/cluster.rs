//! The node table (role, status, lag, timeline, epoch): one owner task, immutable snapshots published to readers. Must not act on nodes.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
