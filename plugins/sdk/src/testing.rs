//! A stand-in for the bridge, for drivers' unit tests: [`TestHost`] records
//! what a driver publishes, subscribes and logs, through the same C table
//! the bridge gives it, and [`TestInstance`] drives a driver through the
//! same entry points the bridge calls (including `catch_unwind`).
#![allow(unsafe_code)] // the recording callbacks receive raw ABI arguments

use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tidewater_plugin_api::{
    TwBytes, TwErrorBuf, TwHostApi, TwLogLevel, TwStatus, TwStr, ABI_VERSION, HOST_API_SIZE,
};

use crate::ffi::Descriptor;
use crate::{Host, Plugin};

/// One recorded publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

impl Published {
    /// The payload as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

#[derive(Debug, Default)]
struct Record {
    published: Vec<Published>,
    subscribed: Vec<String>,
    logs: Vec<(TwLogLevel, String)>,
    /// Devices reported, as (device, online), in order.
    presences: Vec<(String, bool)>,
}

#[derive(Debug, Default)]
struct Recorder {
    record: Mutex<Record>,
    changed: Condvar,
    busy: AtomicBool,
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A host that records every call. Its table and state are leaked, so a
/// [`Host`] handle stays valid however long a test's threads keep it: a few
/// bytes per test, never in the bridge.
#[derive(Debug, Clone, Copy)]
pub struct TestHost {
    recorder: &'static Recorder,
    table: &'static TwHostApi,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHost {
    pub fn new() -> Self {
        let recorder: &'static Recorder = Box::leak(Box::default());
        let table: &'static TwHostApi = Box::leak(Box::new(TwHostApi {
            abi_version: ABI_VERSION,
            struct_size: HOST_API_SIZE,
            ctx: std::ptr::from_ref(recorder).cast_mut().cast(),
            publish: Some(record_publish),
            subscribe: Some(record_subscribe),
            log: Some(record_log),
            presence: Some(record_presence),
        }));
        Self { recorder, table }
    }

    /// A handle to this host, as a driver receives it.
    pub fn host(&self) -> Host {
        // SAFETY: the table is a leaked, version-1 table: valid forever.
        unsafe { Host::from_raw(NonNull::from(self.table)) }
    }

    /// The raw table, for driving entry points directly.
    pub fn table(&self) -> *const TwHostApi {
        self.table
    }

    /// While set, every publish answers BUSY (a full ingress queue).
    pub fn set_busy(&self, busy: bool) {
        self.recorder.busy.store(busy, Ordering::Relaxed);
    }

    pub fn published(&self) -> Vec<Published> {
        self.recorder.lock().published.clone()
    }

    /// Returns and forgets what was published so far.
    pub fn take_published(&self) -> Vec<Published> {
        std::mem::take(&mut self.recorder.lock().published)
    }

    pub fn subscriptions(&self) -> Vec<String> {
        self.recorder.lock().subscribed.clone()
    }

    /// Devices the driver reported, as (device, online), in order.
    pub fn presences(&self) -> Vec<(String, bool)> {
        self.recorder.lock().presences.clone()
    }

    /// Log lines as (level, message).
    pub fn logs(&self) -> Vec<(TwLogLevel, String)> {
        self.recorder.lock().logs.clone()
    }

    /// Waits up to `timeout` until at least `count` messages were published
    /// (by any thread); returns them all.
    pub fn wait_for_published(&self, count: usize, timeout: Duration) -> Vec<Published> {
        let deadline = Instant::now() + timeout;
        let mut record = self.recorder.lock();
        while record.published.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            record = self
                .recorder
                .changed
                .wait_timeout(record, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        record.published.clone()
    }

    /// Creates `P` from `config_json` through its exported entry points,
    /// exactly as the bridge does; `Err` carries the status and the message
    /// `create` wrote.
    pub fn create<P: Plugin>(&self, config_json: &str) -> Result<TestInstance, (TwStatus, String)> {
        static_descriptor::<P>().create_instance(self.table, config_json)
    }
}

/// Descriptors are built per test call (cheap, and `P` varies).
fn static_descriptor<P: Plugin>() -> &'static Descriptor {
    Box::leak(Box::new(crate::ffi::descriptor::<P>("test", "0.0.0")))
}

impl Descriptor {
    fn create_instance(
        &'static self,
        host: *const TwHostApi,
        config_json: &str,
    ) -> Result<TestInstance, (TwStatus, String)> {
        // SAFETY: a descriptor built by `ffi::descriptor`: every slot is set.
        let descriptor = unsafe { &*self.as_ptr() };
        let create = descriptor
            .create
            .ok_or((TwStatus::ERROR, "no create".into()))?;
        let mut buffer = vec![0u8; 1024];
        let mut error = TwErrorBuf {
            ptr: buffer.as_mut_ptr(),
            cap: buffer.len(),
            len: 0,
        };
        let mut instance: *mut c_void = std::ptr::null_mut();
        // SAFETY: a valid host table, config borrowed for the call, and out
        // pointers to live locals.
        let status = unsafe { create(host, TwStr::new(config_json), &mut instance, &mut error) };
        if status.is_ok() {
            Ok(TestInstance {
                descriptor: self,
                instance,
                destroyed: false,
            })
        } else {
            buffer.truncate(error.len.min(buffer.len()));
            Err((status, String::from_utf8_lossy(&buffer).into_owned()))
        }
    }
}

/// A driver created through its entry points; destroyed on drop.
#[derive(Debug)]
pub struct TestInstance {
    descriptor: &'static Descriptor,
    instance: *mut c_void,
    destroyed: bool,
}

impl TestInstance {
    fn slots(&self) -> &tidewater_plugin_api::TwPluginDescriptor {
        // SAFETY: a leaked descriptor, valid forever.
        unsafe { &*self.descriptor.as_ptr() }
    }

    pub fn start(&mut self) -> TwStatus {
        match self.slots().start {
            // SAFETY: the instance `create` returned, not yet destroyed.
            Some(start) => unsafe { start(self.instance) },
            None => TwStatus::ERROR,
        }
    }

    pub fn on_message(&mut self, topic: &str, payload: &[u8]) -> TwStatus {
        match self.slots().on_message {
            // SAFETY: as in `start`; topic and payload are borrowed for the call.
            Some(on_message) => unsafe {
                on_message(self.instance, TwStr::new(topic), TwBytes::new(payload))
            },
            None => TwStatus::ERROR,
        }
    }

    pub fn stop(&mut self) -> TwStatus {
        match self.slots().stop {
            // SAFETY: as in `start`.
            Some(stop) => unsafe { stop(self.instance) },
            None => TwStatus::ERROR,
        }
    }
}

impl Drop for TestInstance {
    fn drop(&mut self) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        if let Some(destroy) = self.slots().destroy {
            // SAFETY: the instance `create` returned; never used after this.
            unsafe { destroy(self.instance) };
        }
    }
}

/// # Safety
/// `ptr` has `len` readable bytes for the call (or `len` is 0).
unsafe fn text<'a>(ptr: *const u8, len: usize) -> Option<&'a str> {
    if len == 0 || ptr.is_null() {
        return Some("");
    }
    // SAFETY: per the function's contract.
    std::str::from_utf8(unsafe { std::slice::from_raw_parts(ptr, len) }).ok()
}

/// # Safety
/// `ctx` is the leaked recorder a `TestHost` put in its table.
unsafe fn recorder<'a>(ctx: *mut c_void) -> &'a Recorder {
    // SAFETY: per the function's contract: leaked, so valid forever.
    unsafe { &*ctx.cast::<Recorder>() }
}

unsafe extern "C" fn record_publish(
    ctx: *mut c_void,
    topic: TwStr,
    payload: TwBytes,
    qos: u8,
    retain: u8,
) -> TwStatus {
    // SAFETY: our own table's ctx.
    let recorder = unsafe { recorder(ctx) };
    // SAFETY: the ABI: borrowed for this call.
    let Some(topic) = (unsafe { text(topic.ptr, topic.len) }) else {
        return TwStatus::INVALID_ARGUMENT;
    };
    if topic.is_empty() || topic.contains(['+', '#']) || qos > 1 || retain > 1 {
        return TwStatus::INVALID_ARGUMENT;
    }
    if recorder.busy.load(Ordering::Relaxed) {
        return TwStatus::BUSY;
    }
    let payload = if payload.len == 0 || payload.ptr.is_null() {
        Vec::new()
    } else {
        // SAFETY: the ABI: `len` bytes borrowed for this call.
        unsafe { std::slice::from_raw_parts(payload.ptr, payload.len) }.to_vec()
    };
    recorder.lock().published.push(Published {
        topic: topic.to_owned(),
        payload,
        qos,
        retain: retain == 1,
    });
    recorder.changed.notify_all();
    TwStatus::OK
}

unsafe extern "C" fn record_subscribe(ctx: *mut c_void, filter: TwStr) -> TwStatus {
    // SAFETY: our own table's ctx.
    let recorder = unsafe { recorder(ctx) };
    // SAFETY: the ABI: borrowed for this call.
    match unsafe { text(filter.ptr, filter.len) } {
        Some(filter) if !filter.is_empty() => {
            recorder.lock().subscribed.push(filter.to_owned());
            TwStatus::OK
        }
        _ => TwStatus::INVALID_ARGUMENT,
    }
}

unsafe extern "C" fn record_presence(ctx: *mut c_void, device: TwStr, online: u8) -> TwStatus {
    // SAFETY: our own table's ctx.
    let recorder = unsafe { recorder(ctx) };
    // SAFETY: the ABI: borrowed for this call.
    match unsafe { text(device.ptr, device.len) } {
        Some(device) if !device.is_empty() && online <= 1 => {
            recorder
                .lock()
                .presences
                .push((device.to_owned(), online == 1));
            TwStatus::OK
        }
        _ => TwStatus::INVALID_ARGUMENT,
    }
}

unsafe extern "C" fn record_log(ctx: *mut c_void, level: TwLogLevel, message: TwStr) {
    // SAFETY: our own table's ctx.
    let recorder = unsafe { recorder(ctx) };
    // SAFETY: the ABI: borrowed for this call.
    let message = unsafe { text(message.ptr, message.len) }.unwrap_or("<not UTF-8>");
    recorder.lock().logs.push((level, message.to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        reply: String,
    }

    /// A driver for the SDK's own tests: replies on `out`, fails on
    /// `fail`, panics on `panic`.
    struct Replier {
        host: Host,
        reply: String,
    }

    impl Plugin for Replier {
        type Config = Config;

        fn new(host: Host, config: Config) -> Result<Self, Error> {
            if config.reply.is_empty() {
                return Err("reply must not be empty".into());
            }
            if config.reply == "long" {
                return Err("é".repeat(2_000).into());
            }
            host.subscribe("in/#")?;
            Ok(Self {
                host,
                reply: config.reply,
            })
        }

        fn on_message(&mut self, topic: &str, _payload: &[u8]) -> Result<(), Error> {
            match topic {
                "in/fail" => Err("asked to fail".into()),
                "in/panic" => panic!("asked to panic"),
                _ => Ok(self.host.publish("out", &self.reply, true)?),
            }
        }
    }

    /// A driver created through its entry points subscribes, and a message
    /// delivered through `on_message` makes it publish through the table.
    #[test]
    fn create_and_on_message_go_through_the_entry_points() {
        let test = TestHost::new();
        let mut instance = test
            .create::<Replier>(r#"{"reply": "pong"}"#)
            .expect("created");
        assert_eq!(test.subscriptions(), vec!["in/#"]);
        assert_eq!(instance.start(), TwStatus::OK);
        assert_eq!(instance.on_message("in/ping", b""), TwStatus::OK);
        let published = test.published();
        assert_eq!(published.len(), 1);
        assert_eq!(
            (published[0].topic.as_str(), published[0].text().as_str()),
            ("out", "pong")
        );
        assert!(published[0].retain);
        assert_eq!(instance.stop(), TwStatus::OK);
    }

    /// `presence` reaches the host when its table has the call, and is
    /// `Closed` from a host whose table ends before it (an older bridge).
    #[test]
    fn presence_needs_a_host_that_offers_it() {
        let test = TestHost::new();
        let host = test.host();
        assert_eq!(host.presence("lamp-1", true), Ok(()));
        assert_eq!(test.presences(), [("lamp-1".to_owned(), true)]);
        assert_eq!(
            host.presence("", true),
            Err(crate::HostError::InvalidArgument)
        );
        let older: &'static TwHostApi = Box::leak(Box::new(TwHostApi {
            struct_size: std::mem::offset_of!(TwHostApi, presence) as u32,
            presence: None,
            ..*test.table
        }));
        // SAFETY: a leaked table, valid forever.
        let old_host = unsafe { Host::from_raw(NonNull::from(older)) };
        assert_eq!(
            old_host.presence("lamp-1", true),
            Err(crate::HostError::Closed)
        );
        assert_eq!(test.presences().len(), 1, "nothing reached the host");
    }

    /// A configuration that does not deserialise fails `create` with serde's
    /// message naming the field, in the host's error buffer.
    #[test]
    fn bad_config_fails_create_with_a_message() {
        let test = TestHost::new();
        let (status, message) = test
            .create::<Replier>(r#"{"replies": "x"}"#)
            .expect_err("refused");
        assert_eq!(status, TwStatus::ERROR);
        assert!(message.contains("replies"), "{message}");
    }

    /// An error returned by `new` reaches the host verbatim.
    #[test]
    fn new_error_is_the_create_message() {
        let (status, message) = TestHost::new()
            .create::<Replier>(r#"{"reply": ""}"#)
            .expect_err("refused");
        assert_eq!(status, TwStatus::ERROR);
        assert_eq!(message, "reply must not be empty");
    }

    /// An error from `on_message` is ERROR and logged at error level; a
    /// panic is PANICKED, logged with its message, and does not unwind.
    #[test]
    fn errors_and_panics_become_statuses() {
        let test = TestHost::new();
        let mut instance = test
            .create::<Replier>(r#"{"reply": "pong"}"#)
            .expect("created");
        assert_eq!(instance.on_message("in/fail", b""), TwStatus::ERROR);
        assert_eq!(instance.on_message("in/panic", b""), TwStatus::PANICKED);
        let logs = test.logs();
        assert!(logs
            .iter()
            .any(|(l, m)| *l == TwLogLevel::ERROR && m.contains("asked to fail")));
        assert!(logs.iter().any(|(l, m)| *l == TwLogLevel::ERROR
            && m.contains("panicked in on_message: asked to panic")));
    }

    /// A full ingress queue surfaces as `HostError::Busy` in the SDK.
    #[test]
    fn busy_is_an_error() {
        let test = TestHost::new();
        test.set_busy(true);
        assert_eq!(
            test.host().publish("a", "b", false),
            Err(crate::HostError::Busy)
        );
        test.set_busy(false);
        assert_eq!(test.host().publish("a", "b", false), Ok(()));
    }

    /// A long error message is truncated to the host's buffer at a character
    /// boundary, never past it.
    #[test]
    fn long_create_error_is_truncated_safely() {
        let (_, message) = TestHost::new()
            .create::<Replier>(r#"{"reply": "long"}"#)
            .expect_err("refused");
        assert!(
            message.len() <= 1024 && message.len() > 1000,
            "{}",
            message.len()
        );
        assert!(message.chars().all(|c| c == 'é'));
    }

    /// `Host` can be sent to and shared with the driver's own threads.
    #[test]
    fn host_is_send_sync_clone() {
        fn assert_traits<T: Send + Sync + Clone>() {}
        assert_traits::<Host>();
        let test = TestHost::new();
        let host = test.host();
        std::thread::spawn(move || host.publish("t", "from a thread", false))
            .join()
            .expect("thread")
            .expect("published");
        assert_eq!(test.published()[0].text(), "from a thread");
    }
}
