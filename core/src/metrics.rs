//! `GET /metrics`: the bridge's counters in the Prometheus text format.
//!
//! The counters live in [`Stats`] as plain atomics, updated on the hot path
//! without locks; this module only reads them at scrape time, through a
//! prometheus-client `Collector`, so the exposition format (names, types,
//! escaping, cumulative buckets) comes from the library, not from us.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::Action;
use crate::plugin::{PluginState, PluginStatuses};
use crate::stats::{AuthFailure, LatencyHistogram, Limit, Protocol, Stats};

/// Reads [`Stats`] at every scrape.
#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

/// Reads each plugin's status at every scrape.
#[derive(Debug)]
struct PluginCollector(PluginStatuses);

/// Reads the log's status at every scrape.
#[derive(Debug)]
struct LogCollector(Arc<dyn crate::log::Log>);

/// A registry holding the bridge's collectors; encode it per scrape.
pub fn registry(
    stats: Arc<Stats>,
    plugins: PluginStatuses,
    log: Arc<dyn crate::log::Log>,
) -> Registry {
    let mut registry = Registry::with_prefix("tidewater");
    registry.register_collector(Box::new(StatsCollector(stats)));
    registry.register_collector(Box::new(PluginCollector(plugins)));
    registry.register_collector(Box::new(LogCollector(log)));
    registry
}

impl Collector for LogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let status = self.0.status();
        let gauges: [(&str, &str, u64); 6] = [
            ("log_bytes", "Bytes of records the log holds.", status.bytes),
            (
                "log_first_position",
                "The oldest position the log still holds.",
                status.first,
            ),
            (
                "log_next_position",
                "The position the next message gets.",
                status.next,
            ),
            (
                "log_segments",
                "Segment files the log holds.",
                status.segments as u64,
            ),
            (
                "log_retained_values",
                "Retained values the log keeps.",
                status.retained as u64,
            ),
            (
                "log_failing",
                "1 while appends to the log fail (publishes are turned away), else 0.",
                u64::from(status.last_error.is_some()),
            ),
        ];
        for (name, help, value) in gauges {
            let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 4] = [
            (
                "log_appends",
                "Batches appended to the log.",
                status.appends,
            ),
            (
                "log_append_microseconds",
                "Time spent appending, in all (divide by log_appends for the mean).",
                status.append_micros,
            ),
            (
                "log_fsyncs",
                "Times the log forced its files to disk.",
                status.fsyncs,
            ),
            (
                "log_evictions",
                "Segments removed by the age or byte bound.",
                status.evictions,
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

/// The whole exposition, as served at `/metrics`.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(8 * 1024);
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One metric with a label whose values are given with their counts.
fn labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &'static str,
    values: &[(&'static str, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, count) in values {
        let labels = [(label, *value)];
        let metric = family.encode_family(&labels)?;
        encode_value(metric, kind, *count)?;
    }
    Ok(())
}

/// A counter with two labels, one series per `(a, b, count)`.
fn counter_by_two(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: (&'static str, &'static str),
    values: impl Iterator<Item = (&'static str, &'static str, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (a, b, count) in values {
        let pairs = [(labels.0, a), (labels.1, b)];
        encode_value(family.encode_family(&pairs)?, MetricType::Counter, count)?;
    }
    Ok(())
}

fn encode_value(metric: MetricEncoder<'_>, kind: MetricType, value: u64) -> std::fmt::Result {
    if matches!(kind, MetricType::Gauge) {
        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)
    } else {
        ConstCounter::new(value).encode(metric)
    }
}

fn latency(
    family: &mut MetricEncoder<'_>,
    protocol: &'static str,
    histogram: &LatencyHistogram,
) -> std::fmt::Result {
    let (sum, count, buckets) = histogram.snapshot();
    let labels = [("protocol", protocol)];
    family
        .encode_family(&labels)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let gauge = MetricType::Gauge;
        let total = MetricType::Counter;
        labelled(
            &mut encoder,
            "connections",
            "Client connections open now (MQTT: those through the gate).",
            gauge,
            "protocol",
            &[
                ("sse", read(&s.sse_streams_open)),
                ("websocket", read(&s.ws_sessions_open)),
                ("mqtt", read(&s.mqtt_connections_open)),
            ],
        )?;
        let bodies =
            ConstGauge::new(i64::try_from(read(&s.http_body_bytes_in_flight)).unwrap_or(i64::MAX));
        bodies.encode(encoder.encode_descriptor(
            "http_body_bytes_in_flight",
            "Body bytes HTTP requests have reserved while their bodies arrive (http.max_body_bytes_in_flight).",
            None,
            bodies.metric_type(),
        )?)?;
        labelled(
            &mut encoder,
            "connections_opened",
            "Client connections opened since start (MQTT: those through the gate).",
            total,
            "protocol",
            &[
                ("sse", read(&s.sse_streams_opened)),
                ("websocket", read(&s.ws_sessions_opened)),
                ("mqtt", read(&s.mqtt_connections_opened)),
            ],
        )?;
        counter(
            &mut encoder,
            "messages_routed",
            "Messages read from the broker and routed.",
            read(&s.messages_routed),
        )?;
        counter(
            &mut encoder,
            "messages_invalid",
            "Broker messages skipped because their topic was not UTF-8.",
            read(&s.messages_invalid),
        )?;
        counter(
            &mut encoder,
            "device_connects",
            "MQTT devices the broker accepted (through the gate).",
            read(&s.device_connects),
        )?;
        counter(
            &mut encoder,
            "device_disconnects",
            "MQTT device connections that ended, however they ended.",
            read(&s.device_disconnects),
        )?;
        counter(
            &mut encoder,
            "mqtt_deliveries_too_large",
            "Deliveries not sent to an MQTT 5 client because they exceed its Maximum Packet Size.",
            read(&s.mqtt_deliveries_too_large),
        )?;
        counter(
            &mut encoder,
            "mqtt_connect_retries",
            "CONNECTs the gate sent the broker again after it closed one without answering.",
            read(&s.mqtt_connect_retries),
        )?;
        counter(
            &mut encoder,
            "device_events_lagged",
            "Device events lost by a listener that fell more than mqtt.device_events_capacity behind.",
            read(&s.device_events_lagged),
        )?;
        counter(
            &mut encoder,
            "log_append_failures",
            "Messages the log could not store; they reached no subscriber.",
            read(&s.log_append_failures),
        )?;
        counter(
            &mut encoder,
            "log_resumes",
            "Resumes older than the replay ring, served from the log.",
            read(&s.log_resumes),
        )?;
        counter(
            &mut encoder,
            "log_messages_read",
            "Messages read back from the log for resumes and since= replays.",
            read(&s.log_messages_read),
        )?;
        counter(
            &mut encoder,
            "log_read_failures",
            "Reads from the log that failed; the subscriber was sent a gap.",
            read(&s.log_read_failures),
        )?;
        counter(
            &mut encoder,
            "messages_unstamped",
            "Broker messages without the bridge's QoS and retain stamp, routed as QoS 0.",
            read(&s.messages_unstamped),
        )?;
        labelled(
            &mut encoder,
            "messages_in",
            "Publishes accepted from web clients, by protocol.",
            total,
            "protocol",
            &[
                ("http", read(&s.http_publishes)),
                ("websocket", read(&s.ws_publishes)),
            ],
        )?;
        counter(
            &mut encoder,
            "presence_published",
            "Device states the bridge published on $tidewater/presence/.",
            read(&s.presence_published),
        )?;
        counter(
            &mut encoder,
            "presence_dropped",
            "Device states not published: past presence.max_devices, past the topic limits, or refused by the broker.",
            read(&s.presence_dropped),
        )?;
        labelled(
            &mut encoder,
            "commands",
            "Commands from web clients, by outcome.",
            total,
            "outcome",
            &[
                ("answered", read(&s.commands_answered)),
                ("timeout", read(&s.commands_timed_out)),
                ("no_subscriber", read(&s.commands_unrouted)),
                ("refused", read(&s.commands_refused)),
                ("failed", read(&s.commands_failed)),
            ],
        )?;
        labelled(
            &mut encoder,
            "messages_out",
            "Messages written to web clients, by protocol.",
            total,
            "protocol",
            &[
                ("sse", read(&s.sse_messages_out)),
                ("websocket", read(&s.ws_messages_out)),
            ],
        )?;
        counter(
            &mut encoder,
            "deliveries",
            "Message copies queued for subscribers.",
            read(&s.deliveries),
        )?;
        counter(
            &mut encoder,
            "slow_consumer_disconnects",
            "Subscribers ended because they fell too far behind (a full queue; MQTT through the gate: a write timeout).",
            read(&s.slow_consumer_disconnects),
        )?;
        labelled(
            &mut encoder,
            "publishes_rejected",
            "Publishes not taken into the broker, by reason.",
            total,
            "reason",
            &[
                ("busy", read(&s.publishes_rejected_busy)),
                ("failed", read(&s.publishes_failed)),
            ],
        )?;
        labelled(
            &mut encoder,
            "replay",
            "Resume requests, by whether the ring still held their history.",
            total,
            "result",
            &[
                ("hit", read(&s.replay_hits)),
                ("miss", read(&s.replay_misses)),
            ],
        )?;
        labelled(
            &mut encoder,
            "retained_snapshots",
            "Reads of the broker's retained values, by outcome.",
            total,
            "result",
            &[
                ("ok", read(&s.retained_snapshots)),
                ("failed", read(&s.retained_failures)),
                ("truncated", read(&s.retained_truncated)),
            ],
        )?;
        counter(
            &mut encoder,
            "broker_link_failures",
            "Broker links that failed.",
            read(&s.broker_link_failures),
        )?;
        let r = &s.refusals;
        counter_by_two(
            &mut encoder,
            "auth_failures",
            "Clients refused for missing, invalid or expired credentials, or a client id not theirs.",
            ("protocol", "reason"),
            Protocol::ALL.into_iter().flat_map(|p| {
                AuthFailure::ALL
                    .into_iter()
                    .map(move |f| (p.label(), f.label(), r.auth(p, f)))
            }),
        )?;
        counter_by_two(
            &mut encoder,
            "access_denied",
            "Subscribes and publishes refused by the access rules.",
            ("protocol", "action"),
            Protocol::ALL.into_iter().flat_map(|p| {
                [
                    (Action::Subscribe, "subscribe"),
                    (Action::Publish, "publish"),
                ]
                .into_iter()
                .map(move |(a, label)| (p.label(), label, r.denied(p, a)))
            }),
        )?;
        counter_by_two(
            &mut encoder,
            "limit_refusals",
            "Requests refused by a limit: connections, subscriptions, rate, payload, logins, topic length, topics, filters, inflight.",
            ("protocol", "limit"),
            Protocol::ALL.into_iter().flat_map(|p| {
                Limit::ALL
                    .into_iter()
                    .map(move |l| (p.label(), l.label(), r.limited(p, l)))
            }),
        )?;
        counter(
            &mut encoder,
            "deliveries_withheld",
            "Messages withheld from subscribers the access rules deny their topic.",
            read(&s.deliveries_withheld),
        )?;
        labelled(
            &mut encoder,
            "mqtt_gate_refusals",
            "What the MQTT gate refused or withheld, by kind.",
            total,
            "kind",
            &[
                ("publish", read(&s.mqtt_publishes_denied)),
                ("subscription", read(&s.mqtt_subscriptions_denied)),
                ("delivery", read(&s.mqtt_deliveries_withheld)),
                ("overflow", read(&s.mqtt_gate_overflows)),
                ("properties", read(&s.mqtt_properties_dropped)),
            ],
        )?;
        let mut family = encoder.encode_descriptor(
            "delivery_latency_seconds",
            "From broker receipt to the web client's writer, live messages only.",
            None,
            MetricType::Histogram,
        )?;
        latency(&mut family, "sse", &s.latency_sse)?;
        latency(&mut family, "websocket", &s.latency_ws)?;
        Ok(())
    }
}

/// Reads one counter from a plugin's status.
type PluginCounter = fn(&crate::plugin::PluginStatusSnapshot) -> u64;

impl Collector for PluginCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let snapshots: Vec<_> = self.0.iter().map(|p| p.snapshot()).collect();
        let mut states = encoder.encode_descriptor(
            "plugin_state",
            "1 for each plugin's current state, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for plugin in &snapshots {
            for (state, word) in [
                (PluginState::Loaded, "loaded"),
                (PluginState::Running, "running"),
                (PluginState::Failed, "failed"),
                (PluginState::Stopped, "stopped"),
            ] {
                let labels = [("plugin", plugin.name.as_str()), ("state", word)];
                let value = u64::from(plugin.state == state);
                encode_value(states.encode_family(&labels)?, MetricType::Gauge, value)?;
            }
        }
        let series: [(&str, &str, PluginCounter); 5] = [
            (
                "plugin_messages_in",
                "Messages a plugin accepted from the bridge.",
                |p| p.messages_in,
            ),
            ("plugin_messages_out", "Messages a plugin published.", |p| {
                p.messages_out
            }),
            (
                "plugin_errors",
                "Messages a plugin refused with an error status.",
                |p| p.errors,
            ),
            (
                "plugin_publishes_busy",
                "Plugin publishes refused because the broker queue was full.",
                |p| p.publishes_busy,
            ),
            (
                "plugin_gaps",
                "Times a plugin lost messages that had left the replay ring.",
                |p| p.gaps,
            ),
        ];
        for (name, help, value) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for plugin in &snapshots {
                let labels = [("plugin", plugin.name.as_str())];
                encode_value(
                    family.encode_family(&labels)?,
                    MetricType::Counter,
                    value(plugin),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_log() -> Arc<dyn crate::log::Log> {
        Arc::new(crate::log::memory::MemoryLog::new(1))
    }

    /// The exposition parses as Prometheus text and reflects the counters.
    #[test]
    fn exposition_reflects_counters() {
        let stats = Arc::new(Stats::default());
        Stats::add(&stats.sse_messages_out, 5);
        stats
            .latency_sse
            .observe(std::time::Duration::from_micros(200));
        let plugins: PluginStatuses =
            Arc::new([Arc::new(crate::plugin::PluginStatus::new("thermo"))]);
        let text = render(&registry(stats, plugins, memory_log())).expect("render");
        assert!(
            text.contains("tidewater_messages_out_total{protocol=\"sse\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tidewater_delivery_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "tidewater_delivery_latency_seconds_bucket{le=\"0.00025\",protocol=\"sse\"} 1"
            ) || text.contains(
                "tidewater_delivery_latency_seconds_bucket{protocol=\"sse\",le=\"0.00025\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tidewater_connections{protocol=\"websocket\"} 0"),
            "{text}"
        );
    }

    /// Refusals are exposed by protocol and reason.
    #[test]
    fn refusals_are_labelled() {
        let stats = Arc::new(Stats::default());
        stats.refuse_auth(Protocol::Sse, AuthFailure::Expired);
        stats.deny(Protocol::WebSocket, Action::Publish);
        stats.limit(Protocol::Http, Limit::Rate);
        let text = render(&registry(stats, Arc::new([]), memory_log())).expect("render");
        for series in [
            "tidewater_auth_failures_total{protocol=\"sse\",reason=\"expired\"} 1",
            "tidewater_auth_failures_total{protocol=\"mqtt\",reason=\"invalid\"} 0",
            "tidewater_access_denied_total{protocol=\"websocket\",action=\"publish\"} 1",
            "tidewater_limit_refusals_total{protocol=\"http\",limit=\"rate\"} 1",
            "tidewater_deliveries_withheld_total 0",
            "tidewater_mqtt_gate_refusals_total{kind=\"publish\"} 0",
        ] {
            assert!(text.contains(series), "{series} in:\n{text}");
        }
    }
}
