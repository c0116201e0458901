//! Plain and TLS streams, framed reads and writes, keepalives. Must not route or pool.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
