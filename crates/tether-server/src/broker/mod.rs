//! broker (stub; replaced by its owner)
