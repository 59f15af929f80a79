//! session (stub; replaced by its owner)
