//! The scenarios of issue 6, one module each, and what they share: run
//! settings and the step-by-step search for the highest sustained rate.
//!
//! - [`s1`]: 1,000 devices → 1,000 SSE clients 1:1 plus a wildcard reader
//!   (on rumqttd and Mosquitto the readers are MQTT subscribers: that is S4).
//! - [`s2`]: fan-out of one topic to N readers (Nchan's column is S5).
//! - [`s3`]: idle connections and what each costs in memory.
//! - [`s6`]: HTTP publishes to 1,000 subscribed devices.
//! - [`s7`]: slow consumers during a fan-out at half capacity.
//! - [`smoke`]: a seconds-long end-to-end check for CI.

pub mod s1;
pub mod s2;
pub mod s3;
pub mod s6;
pub mod s7;
pub mod smoke;

use crate::load::{median, trial, Outcome, Pace, Publisher};
use crate::recorder::Recorder;
use crate::report::Report;
use crate::servers::{Launch, System};

/// Sizes and durations, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub launch: Launch,
    pub step_secs: f64,
    pub warmup_secs: f64,
    pub reps: usize,
    pub payload_bytes: usize,
    pub devices: usize,
    pub s1_steps: Vec<f64>,
    pub s1_reference: f64,
    pub fanouts: Vec<usize>,
    pub s2_steps: Vec<f64>,
    pub idle_sse: usize,
    pub idle_ws: usize,
    pub idle_mqtt: usize,
    pub s6_steps: Vec<f64>,
    pub s6_reference: f64,
    pub http_connections: usize,
    pub s7_clients: usize,
    pub stall_secs: f64,
}

/// Where a search for the highest sustained rate ended.
#[derive(Debug, Default)]
pub struct Ascent {
    /// The highest step sustained (median of repetitions).
    pub best: Option<Outcome>,
    /// The first step not sustained, if the search reached one.
    pub failed: Option<Outcome>,
    /// The reference step's median, if it was run.
    pub reference: Option<Outcome>,
}

/// Tries `steps` in increasing order until one is not sustained; the
/// reference step and the best one are repeated `reps` times (medians).
#[allow(clippy::too_many_arguments)]
pub async fn ascend(
    label: &str,
    server: &crate::servers::Server,
    publisher: &Publisher,
    recorder: &Recorder,
    steps: &[f64],
    reference: Option<f64>,
    fanout: u64,
    settings: &Settings,
    topic_of: &(dyn Fn(u64) -> String + Sync),
    report: &mut Report,
) -> Ascent {
    let pace = |rate: f64, secs: f64| Pace {
        rate,
        secs,
        fanout,
        payload_bytes: settings.payload_bytes,
    };
    if let Some(&first) = steps.first() {
        let warm = trial(
            server,
            publisher,
            recorder,
            pace(first, settings.warmup_secs),
            topic_of,
        )
        .await;
        report.detail(format!("{label} warm-up   {}", warm.line()));
    }
    let mut ascent = Ascent::default();
    let mut best_repeated = false;
    for &rate in steps {
        let repeated = reference == Some(rate);
        let runs = if repeated { settings.reps.max(1) } else { 1 };
        let mut outcomes = Vec::new();
        for rep in 0..runs {
            let o = trial(
                server,
                publisher,
                recorder,
                pace(rate, settings.step_secs),
                topic_of,
            )
            .await;
            report.detail(format!("{label} step {}/{} {}", rep + 1, runs, o.line()));
            outcomes.push(o);
        }
        let outcome = median(&outcomes);
        if repeated {
            ascent.reference = Some(outcome);
        }
        if outcome.sustained() {
            ascent.best = Some(outcome);
            best_repeated = repeated;
        } else {
            ascent.failed = Some(outcome);
            break;
        }
    }
    if let (Some(best), false) = (ascent.best, best_repeated) {
        let mut outcomes = vec![best];
        for rep in 1..settings.reps {
            let o = trial(
                server,
                publisher,
                recorder,
                pace(best.target_rate, settings.step_secs),
                topic_of,
            )
            .await;
            report.detail(format!(
                "{label} best {}/{} {}",
                rep + 1,
                settings.reps,
                o.line()
            ));
            outcomes.push(o);
        }
        let outcome = median(&outcomes);
        ascent.best = Some(outcome);
    }
    ascent
}

/// "75k (next step 100k: 97.1 % delivered)" style summary of an ascent.
pub fn summarize(ascent: &Ascent, per: &str) -> String {
    use crate::load::fmt_rate;
    let best = match ascent.best {
        Some(best) => format!("{}{per}", fmt_rate(best.target_rate)),
        None => "below the first step".into(),
    };
    let best = match ascent.best {
        Some(b) if !b.sustained() => format!(
            "{best} (unstable on repetition: {:.2} %)",
            b.ratio() * 100.0
        ),
        _ => best,
    };
    match ascent.failed {
        Some(f) => format!("{best}; at {}: {}", fmt_rate(f.target_rate), why_not(&f)),
        None => format!("{best} (highest step tried)"),
    }
}

/// Why a step was not sustained, in a few words.
pub fn why_not(o: &Outcome) -> String {
    use crate::load::{fmt_rate, fmt_us};
    let mut reasons = vec![format!("{:.2} % delivered", o.ratio() * 100.0)];
    if !o.keeping_up() {
        reasons.push(format!(
            "falling behind (p50 {} → {}, p99 {})",
            fmt_us(o.early_p50_us),
            fmt_us(o.late_p50_us),
            fmt_us(o.p99_us)
        ));
    }
    if o.not_sent * 1000 > o.attempted || (o.attempted as f64) < 0.97 * o.target_rate * o.secs {
        reasons.push(format!("generator sent only {}/s", fmt_rate(o.sent_rate())));
    }
    if o.ended > 0 {
        reasons.push(format!("{} streams ended by the server", o.ended));
    }
    reasons.join(", ")
}

/// Systems a scenario cannot run on get a reason in every row instead.
pub fn unavailable(report: &mut Report, rows: &[(&str, &str, &str)], system: System, why: &str) {
    for (scenario, measure, goal) in rows {
        report.set(scenario, measure, goal, system, format!("— ({why})"));
    }
}
