//! `bench-rumqttd`: the bare broker the benchmarks compare Tidewater with.
//!
//! It embeds the workspace's rumqttd (same version, same features) with one
//! MQTT 3.1.1 listener and the broker settings Tidewater uses by default, so
//! the difference measured is the bridge, not the broker's configuration.

use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "bench-rumqttd", about = "rumqttd 0.20 with one v4 listener")]
struct Args {
    /// Address of the MQTT 3.1.1 listener.
    #[arg(long, default_value = "127.0.0.1:1883")]
    listen: SocketAddr,
    /// Connections accepted at once (Tidewater's `mqtt.max_connections`).
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
    /// Commit-log segment size and count (`mqtt.log_segment_*`).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    segment_bytes: usize,
    #[arg(long, default_value_t = 4)]
    segment_count: usize,
    /// Unacknowledged QoS 1 messages per connection (`mqtt.max_inflight`).
    #[arg(long, default_value_t = 100)]
    max_inflight: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 5_000,
        max_payload_size: 262_144,
        max_inflight_count: args.max_inflight,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4".to_owned(),
        listen: args.listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: args.max_connections,
            max_outgoing_packet_count: 10_000,
            max_segment_size: args.segment_bytes,
            max_segment_count: args.segment_count,
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4".to_owned(), server)])),
        ..Default::default()
    };
    // Runs until the process is killed: rumqttd 0.20 cannot be stopped.
    rumqttd::Broker::new(config).start()?;
    Ok(())
}
