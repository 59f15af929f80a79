//! auth (stub; replaced by its owner)
