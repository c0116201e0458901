//! TOML schema, validation, reload into a new snapshot, pgpool.conf import. Must not open sockets or spawn tasks.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
