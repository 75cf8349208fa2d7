//! Sampling: which sessions of a route are recorded when its policy says `sample` < 1.
//! Each route draws from its own sequence (splitmix64 over a counter), so that with
//! `capture.sample_seed` set the same sessions of a route are chosen on every run, whatever
//! the other routes carry.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One draw sequence per route, in config order.
pub struct Samplers(Vec<AtomicU64>);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Samplers {
    /// Sequences for `routes` routes, from `seed` (or, without one, from the clock).
    pub fn new(routes: usize, seed: Option<u64>) -> Samplers {
        let seed = seed.unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        });
        Samplers((0..routes as u64).map(|i| AtomicU64::new(mix(seed ^ i.wrapping_mul(GOLDEN)))).collect())
    }

    /// Whether the next session of route `route` is recorded, with `fraction` of them.
    pub fn pick(&self, route: usize, fraction: f64) -> bool {
        if fraction >= 1.0 {
            return true;
        }
        if fraction <= 0.0 {
            return false;
        }
        let Some(state) = self.0.get(route) else { return true };
        let draw = mix(state.fetch_add(GOLDEN, Relaxed));
        ((draw >> 11) as f64 / (1u64 << 53) as f64) < fraction
    }
}

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_repeats_the_choice_and_the_fraction_holds() {
        let picks = |seed| {
            let s = Samplers::new(2, Some(seed));
            (0..10_000).map(|_| s.pick(1, 0.25)).collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7), "the same seed chooses the same sessions");
        assert_ne!(picks(7), picks(8));
        let n = picks(7).iter().filter(|p| **p).count();
        assert!((2300..2700).contains(&n), "about a quarter: {n}");
        let s = Samplers::new(1, None);
        assert!(s.pick(0, 1.0) && !s.pick(0, 0.0));
    }
}
