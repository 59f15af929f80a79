//! tether-proto
