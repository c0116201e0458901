//! Pure functions: classify a statement (pg_query behind a trait, cached) and choose a node from a cluster snapshot. Must not do I/O or take locks.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
