//! ws (stub; replaced by its owner)
