//! A server connection: startup and authentication to PostgreSQL, the queue of replies it still expects (in sync only when empty). Must not know about clients.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
