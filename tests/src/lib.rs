//! Shared helpers for the workspace-level tests: in-process clusters on
//! loopback TCP.

#![deny(missing_docs)]
