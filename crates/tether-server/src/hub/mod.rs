//! hub (stub; replaced by its owner)
