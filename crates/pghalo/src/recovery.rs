//! Online recovery (pg_rewind, pg_basebackup) as a resumable state machine; the local node agent's host actions. Must not route.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
