//! config (stub; replaced by its owner)
