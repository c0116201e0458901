//! The ordered, epoch-stamped topology decisions; `Solo` (one instance) and the watchdog's consensus implementation behind one trait. Must not run commands.
//!
//! Not built yet: this module is a placeholder in the layout of DESIGN.md and
//! holds no code until the issue that brings it lands.
