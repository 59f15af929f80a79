//! handshake (stub; replaced by its owner)
