//! Frame management (in progress).
