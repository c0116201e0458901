//! Membership, heartbeat and lifecheck, Raft transport and storage, leader lease, VIP up/down. Must not touch the data path.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
