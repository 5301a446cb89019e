//! interpreter (in progress)
