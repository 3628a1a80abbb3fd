//! The library half of the `osa` command: what other crates and tests
//! reuse. [`embedded`] renders in one process exactly what the cluster
//! renders (`osa render` without `--server`).

pub mod embedded;
