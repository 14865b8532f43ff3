//! Promises. `Quoted`, as delivery platforms quote them at assignment: the platform's
//! estimate of the time to deliver (from what it knows when the order comes: distances, the
//! speed it expects at that hour, its usual kitchen time) plus a buffer that grows with the
//! estimate and with how loaded the fleet is, rounded up to 5 minutes; so promises vary from
//! task to task, as in the field, and a task is late against its own promise. `Fixed`:
//! assignment + 30 minutes for every task, what the late-risk model 1.0 was trained on.

use rand::Rng;
use rand::rngs::SmallRng;

/// How a scenario's tasks are promised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Promises {
    /// Assignment + 30 minutes.
    #[default]
    Fixed,
    /// The platform's estimate plus a buffer for the load, rounded up to 5 minutes.
    Quoted,
}

/// The fixed promise, minutes after assignment.
pub const FIXED_MIN: i64 = 30;

impl Promises {
    /// The promise of a task assigned at `assigned_ms`; `estimate` gives the platform's
    /// estimate (minutes) and the local hour, and is asked (and `rng` drawn from) only for a
    /// quoted promise, so that fixed promises leave a scenario's other draws as they were.
    pub(crate) fn promise(
        self,
        assigned_ms: i64,
        estimate: impl FnOnce() -> (f64, u32),
        rng: &mut SmallRng,
    ) -> i64 {
        match self {
            Self::Fixed => assigned_ms + FIXED_MIN * 60_000,
            Self::Quoted => {
                let (eta_min, hour) = estimate();
                let load = load_at(hour, rng);
                quote(assigned_ms, eta_min, load, rng)
            }
        }
    }
}

/// Minutes a courier takes to hand an order over at the door.
pub(crate) const HANDOVER_MIN: f64 = 2.0;

/// The promise for a task assigned at `assigned_ms` that the platform expects to take
/// `eta_min`, when the fleet is `load` busy (0 idle .. 1 saturated).
fn quote(assigned_ms: i64, eta_min: f64, load: f64, rng: &mut SmallRng) -> i64 {
    let buffer = 1.0 + 0.1 * eta_min + 5.0 * load.clamp(0.0, 1.0) + rng.random_range(0.0..3.0);
    let minutes = ((eta_min.max(1.0) + buffer) / 5.0).ceil() * 5.0;
    assigned_ms + (minutes * 60_000.0) as i64
}

/// How busy the fleet is at a local hour: lunch and dinner peaks, quiet nights.
fn load_at(hour: u32, rng: &mut SmallRng) -> f64 {
    let base = match hour {
        12..=14 | 19..=21 => 0.7,
        8..=11 | 15..=18 => 0.4,
        _ => 0.15,
    };
    base + rng.random_range(0.0..0.3)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn promises_grow_with_the_estimate_and_the_load_in_steps_of_five_minutes() {
        let mut rng = SmallRng::seed_from_u64(1);
        let minutes = |eta: f64, load: f64, rng: &mut SmallRng| quote(0, eta, load, rng) / 60_000;
        for _ in 0..100 {
            let (short, long) = (minutes(15.0, 0.2, &mut rng), minutes(45.0, 0.2, &mut rng));
            assert_eq!(short % 5, 0);
            // 15 + 1 + 1.5 + 1 + [0, 3) = 18.5..21.5, up to 20 or 25.
            assert!((20..=25).contains(&short), "{short}");
            assert!(long >= short + 25, "{long} vs {short}");
            let busy = minutes(15.0, 1.0, &mut rng);
            assert!(busy >= short, "{busy} vs {short}");
        }
    }
}
