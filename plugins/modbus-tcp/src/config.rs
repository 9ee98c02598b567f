//! The driver's `[plugins.config]` table and its rules.

use serde::Deserialize;

use crate::client::Table;
use crate::value::{DataType, WordOrder};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The device, `host:port` (Modbus TCP's port is 502).
    pub address: String,
    /// The unit (slave) id; 1 for most devices, 255 for some gateways.
    #[serde(default = "default_unit_id")]
    pub unit_id: u8,
    /// Time between polls of every register, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Longest wait for the connection and for each answer, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Values go to `<topic_prefix>/<name>`, commands come on
    /// `<topic_prefix>/<name>/set`, and `<topic_prefix>/status` says whether
    /// the device answers.
    pub topic_prefix: String,
    /// Publish values retained, so a new dashboard shows them at once.
    #[serde(default = "default_retain")]
    pub retain: bool,
    pub registers: Vec<Register>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    /// One topic level, unique; not `status`.
    pub name: String,
    pub table: Table,
    /// The first register's address (0-based, as on the wire).
    pub address: u16,
    #[serde(rename = "type", default)]
    pub data_type: DataType,
    #[serde(default)]
    pub word_order: WordOrder,
    /// Published value = raw value x scale; a write divides by it.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// Shown in the published JSON, e.g. "°C".
    #[serde(default)]
    pub unit: String,
    /// Holding registers only: accept writes on `<name>/set`.
    #[serde(default)]
    pub writable: bool,
}

fn default_unit_id() -> u8 {
    1
}

fn default_interval_ms() -> u64 {
    1_000
}

fn default_timeout_ms() -> u64 {
    1_000
}

fn default_retain() -> bool {
    true
}

fn default_scale() -> f64 {
    1.0
}

impl Config {
    /// What serde cannot check; the message names the register.
    pub fn validate(&self) -> Result<(), String> {
        if self.address.is_empty() {
            return Err("`address` must be host:port".into());
        }
        if self.interval_ms < 10 || self.timeout_ms == 0 {
            return Err("`interval_ms` must be at least 10 and `timeout_ms` above 0".into());
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['+', '#']) {
            return Err("`topic_prefix` must be a non-empty topic without wildcards".into());
        }
        if self.registers.is_empty() {
            return Err("`registers` must list at least one register".into());
        }
        for (i, register) in self.registers.iter().enumerate() {
            let name = &register.name;
            if name.is_empty() || name.contains(['/', '+', '#', '\0']) || name == "status" {
                return Err(format!(
                    "register `{name}`: the name must be one topic level, not `status`"
                ));
            }
            if self.registers[..i].iter().any(|r| &r.name == name) {
                return Err(format!("register `{name}` appears twice"));
            }
            if !register.scale.is_finite() || register.scale == 0.0 {
                return Err(format!(
                    "register `{name}`: `scale` must be a non-zero number"
                ));
            }
            if register.writable && register.table != Table::Holding {
                return Err(format!(
                    "register `{name}`: only holding registers can be writable"
                ));
            }
            if u32::from(register.address) + u32::from(register.data_type.words()) > 65_536 {
                return Err(format!("register `{name}`: runs past address 65535"));
            }
        }
        Ok(())
    }
}
