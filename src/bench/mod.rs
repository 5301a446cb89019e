//! `vmm bench`: measurements reported as ratios against a baseline measured in the same run.
//! These machines are shared and noisy: absolute numbers drift, ratios much less.

pub mod bt;
pub mod direct;
pub mod interp;
pub mod kernel;
pub mod nano;
pub mod nano_guest;

/// Median of a few samples (seconds).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
