//! Listeners, one task per client, the client session state machine, session and transaction state tracking, the cancel map. Must not dial servers itself (it asks `pool`) or decide topology.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
