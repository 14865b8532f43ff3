//! Movement along straight legs with the noise real handsets add: GPS scatter, jumps, gaps.

use chrono::FixedOffset;
use fleet_host::event::{Event, EventType, Geo};
use rand::Rng;
use rand::rngs::SmallRng;

use super::at;

const EARTH_RADIUS_KM: f64 = 6371.0;

/// Great-circle distance in km.
pub(crate) fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1, la2, lo2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

/// The point `km` away from `p` on `bearing` (radians), flat-earth (fine below ~50 km).
pub(crate) fn offset_km(p: (f64, f64), km: f64, bearing: f64) -> (f64, f64) {
    let dlat = km * bearing.cos() / 111.32;
    let dlon = km * bearing.sin() / (111.32 * p.0.to_radians().cos());
    (p.0 + dlat, p.1 + dlon)
}

/// How a handset's fixes go wrong.
#[derive(Clone, Copy, Debug)]
pub struct GpsNoise {
    /// Standard deviation of the scatter, metres.
    pub sigma_m: f64,
    /// Chance that a fix lands 0.3-1.5 km off.
    pub jump_rate: f64,
    /// Chance, per fix, that the next 1-5 minutes of fixes are lost.
    pub gap_rate: f64,
}

impl Default for GpsNoise {
    fn default() -> Self {
        Self {
            sigma_m: 8.0,
            jump_rate: 0.002,
            gap_rate: 0.005,
        }
    }
}

/// Builds one courier's events with ids `{courier}-{n}`.
pub(crate) struct Emitter {
    pub courier: String,
    pub offset: FixedOffset,
    pub noise: GpsNoise,
    pub next_id: u64,
    /// No fixes before this time (a gap in progress).
    pub gap_until_ms: i64,
}

impl Emitter {
    pub(crate) fn event(
        &mut self,
        kind: EventType,
        task: Option<&str>,
        time_ms: i64,
        pos: (f64, f64),
    ) -> Event {
        self.next_id += 1;
        Event::new(
            format!("{}-{}", self.courier, self.next_id),
            self.courier.clone(),
            task.map(str::to_string),
            kind,
            at(time_ms, self.offset),
            pos.0,
            pos.1,
        )
    }

    /// A `task_assigned` at `pos`: a single-stop task from `pickup` to `dropoff`, promised
    /// by `promised_ms`. Order context is left to the caller.
    pub(crate) fn assigned(
        &mut self,
        task: &str,
        time_ms: i64,
        pos: (f64, f64),
        pickup: (f64, f64),
        dropoff: (f64, f64),
        promised_ms: i64,
    ) -> Event {
        let mut e = self.event(EventType::TaskAssigned, Some(task), time_ms, pos);
        e.pickup = Some(Geo {
            lat: pickup.0,
            lon: pickup.1,
        });
        e.dropoff = Some(Geo {
            lat: dropoff.0,
            lon: dropoff.1,
        });
        e.promised_at = Some(at(promised_ms, self.offset));
        e.stops_remaining = Some(0);
        e
    }

    /// A location fix at the true position `pos`, with scatter, maybe a jump; `None` inside
    /// a gap (and sometimes a gap starts here).
    pub(crate) fn ping(
        &mut self,
        rng: &mut SmallRng,
        task: Option<&str>,
        time_ms: i64,
        pos: (f64, f64),
        speed_kmh: f32,
    ) -> Option<Event> {
        if time_ms < self.gap_until_ms {
            return None;
        }
        if rng.random::<f64>() < self.noise.gap_rate {
            self.gap_until_ms = time_ms + rng.random_range(60_000..300_000);
            return None;
        }
        let scatter_km = gaussian(rng) * self.noise.sigma_m / 1000.0;
        let mut fix = offset_km(pos, scatter_km, rng.random::<f64>() * std::f64::consts::TAU);
        if rng.random::<f64>() < self.noise.jump_rate {
            fix = offset_km(
                fix,
                rng.random_range(0.3..1.5),
                rng.random::<f64>() * std::f64::consts::TAU,
            );
        }
        let mut e = self.event(EventType::Location, task, time_ms, fix);
        e.speed_kmh = Some((speed_kmh + gaussian(rng) as f32 * 1.5).max(0.0));
        e.accuracy_m = Some((self.noise.sigma_m * rng.random_range(0.5..2.0)) as f32);
        Some(e)
    }
}

/// A standard normal draw (Box-Muller).
pub(crate) fn gaussian(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Position at `t` on the leg from `a` (at `t0`) to `b` (at `t1`).
pub(crate) fn along(a: (f64, f64), b: (f64, f64), t0: i64, t1: i64, t: i64) -> (f64, f64) {
    if t1 <= t0 {
        return b;
    }
    let f = ((t - t0) as f64 / (t1 - t0) as f64).clamp(0.0, 1.0);
    (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_and_haversine_agree() {
        let p = (12.97, 77.59);
        let q = offset_km(p, 3.0, 1.0);
        assert!((haversine_km(p, q) - 3.0).abs() < 0.01);
    }
}
