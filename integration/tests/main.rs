//! The integration tests: one test binary, a module per area, the helpers they share in
//! `common`. They run as root, on real filesystems (loop devices), with real processes and
//! real CRIU: `cargo test --test integration -- --test-threads=2`, or one area with a filter
//! (`cargo test --test integration core::`).
//!
//! All areas share one process: tests that use loop devices, mounts or other global state
//! take `common::serial()`, one lock for the whole binary.

mod apps;
mod common;
mod core;
mod criu_btrfs;
mod failures;
mod fidelity;
mod freeze;
mod migrate;
mod operators;
mod snapshot_btrfs;
mod sockets;
mod trust;
mod writeback;
