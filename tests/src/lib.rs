//! This package holds the workspace-level tests in `tests/` (simulator
//! sweeps, planted bugs, whole clusters over loopback TCP). Cargo needs a
//! target to attach them to; there is no library code here.
