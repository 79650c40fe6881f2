//! Benchmark support: the unreplicated baseline server, the metrics file a
//! benchmark server writes and the harness reads, readings of the machine
//! from /proc, and SVG charts. The in-memory cluster that measures
//! the core alone is the testkit's (`palisade_testkit::cluster`), on the
//! same host drivers as everything else.

#![deny(missing_docs)]

pub mod baseline;
pub mod metrics_file;
pub mod procstat;
pub mod svg;
