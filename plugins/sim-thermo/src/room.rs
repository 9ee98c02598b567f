//! One simulated room: a temperature and a humidity that wander slowly and
//! stay plausible, reproducible from a seed.

/// A small xorshift generator: reproducible, dependency-free, and plenty
/// for a simulation (not for anything secret).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's one fixed point.
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in [-1, 1].
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

/// FNV-1a, to give each room its own stream from one configured seed.
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub const TEMPERATURE_RANGE: (f64, f64) = (15.0, 30.0);
pub const HUMIDITY_RANGE: (f64, f64) = (20.0, 80.0);

#[derive(Debug, Clone)]
pub struct Room {
    pub name: String,
    pub temperature: f64,
    pub humidity: f64,
    rng: Rng,
}

impl Room {
    pub fn new(name: &str, seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ hash(name));
        let temperature = 21.0 + 2.0 * rng.unit();
        let humidity = 45.0 + 8.0 * rng.unit();
        Self {
            name: name.to_owned(),
            temperature,
            humidity,
            rng,
        }
    }

    /// One step of the walk: a small random change pulled back towards a
    /// comfortable value, clamped to a plausible range.
    pub fn step(&mut self) {
        self.temperature = wander(
            self.temperature,
            21.0,
            0.2,
            TEMPERATURE_RANGE,
            &mut self.rng,
        );
        self.humidity = wander(self.humidity, 45.0, 1.0, HUMIDITY_RANGE, &mut self.rng);
    }

    /// The payloads: plain numbers with one decimal, e.g. `21.5`.
    pub fn readings(&self) -> [(&'static str, String); 2] {
        [
            ("temperature", format!("{:.1}", self.temperature)),
            ("humidity", format!("{:.1}", self.humidity)),
        ]
    }
}

fn wander(value: f64, centre: f64, step: f64, (low, high): (f64, f64), rng: &mut Rng) -> f64 {
    let pull = (centre - value) * 0.05;
    (value + pull + step * rng.unit()).clamp(low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same seed and name give the same readings: runs are reproducible.
    #[test]
    fn rooms_are_reproducible() {
        let mut a = Room::new("kitchen", 7);
        let mut b = Room::new("kitchen", 7);
        for _ in 0..100 {
            a.step();
            b.step();
        }
        assert_eq!(a.readings(), b.readings());
        assert_ne!(
            Room::new("hall", 7).readings(),
            Room::new("kitchen", 7).readings()
        );
    }

    /// However long it runs, the values stay within their plausible ranges.
    #[test]
    fn values_stay_in_range() {
        let mut room = Room::new("attic", 1);
        for _ in 0..100_000 {
            room.step();
            assert!((TEMPERATURE_RANGE.0..=TEMPERATURE_RANGE.1).contains(&room.temperature));
            assert!((HUMIDITY_RANGE.0..=HUMIDITY_RANGE.1).contains(&room.humidity));
        }
    }

    /// Payloads are plain numbers with one decimal.
    #[test]
    fn readings_are_plain_numbers() {
        let room = Room::new("x", 3);
        for (_, payload) in room.readings() {
            let value: f64 = payload.parse().expect("numeric payload");
            assert_eq!(format!("{value:.1}"), payload);
        }
    }
}
