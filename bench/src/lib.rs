//! Benchmark support: the unreplicated baseline server, readings of the
//! machine from /proc, and SVG charts. The in-memory cluster that measures
//! the core alone is the testkit's (`palisade_testkit::cluster`), on the
//! same host drivers as everything else.

#![deny(missing_docs)]

pub mod baseline;
pub mod procstat;
pub mod svg;
