//! Simulated node harness (in progress).
