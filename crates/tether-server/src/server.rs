//! server (stub)
