//! api (stub; replaced by its owner)
