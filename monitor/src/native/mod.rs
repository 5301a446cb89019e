//! placeholder, replaced by the native runner
