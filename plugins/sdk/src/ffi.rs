//! The C entry points [`export_plugin!`](crate::export_plugin) exports for a
//! [`Plugin`]: one generic function per descriptor slot, each running the
//! driver inside `catch_unwind` so that a panic becomes
//! [`TwStatus::PANICKED`] (logged with its message) and never unwinds into
//! the bridge.
#![allow(unsafe_code)] // the C side of the ABI: raw pointers in, statuses out

use std::any::Any;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use tidewater_plugin_api::{
    TwBytes, TwCreateFn, TwDestroyFn, TwErrorBuf, TwHostApi, TwOnMessageFn, TwPluginDescriptor,
    TwStartFn, TwStatus, TwStopFn, TwStr, ABI_VERSION, DESCRIPTOR_SIZE,
};

use crate::{Host, Plugin};

/// A static descriptor. It holds raw pointers (to `'static` strings and
/// functions), which makes it `!Sync` by default.
#[derive(Debug)]
pub struct Descriptor(TwPluginDescriptor);

// SAFETY: the descriptor is immutable and every pointer in it is to static
// data (string literals) or to functions: sharing it between threads is
// reading constants.
unsafe impl Sync for Descriptor {}

impl Descriptor {
    pub const fn as_ptr(&'static self) -> *const TwPluginDescriptor {
        &self.0
    }
}

/// The descriptor of `P`, named `name` at version `version`.
pub const fn descriptor<P: Plugin>(name: &'static str, version: &'static str) -> Descriptor {
    Descriptor(TwPluginDescriptor {
        abi_version: ABI_VERSION,
        struct_size: DESCRIPTOR_SIZE,
        name: TwStr::new(name),
        version: TwStr::new(version),
        create: Some(create::<P> as TwCreateFn),
        start: Some(start::<P> as TwStartFn),
        on_message: Some(on_message::<P> as TwOnMessageFn),
        stop: Some(stop::<P> as TwStopFn),
        destroy: Some(destroy::<P> as TwDestroyFn),
    })
}

/// What the bridge holds as the opaque instance pointer.
struct Instance<P> {
    plugin: P,
    host: Host,
}

/// The text of a panic payload (`panic!` gives `&str` or `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with a non-text payload")
}

/// Borrows the bytes of a `{ptr, len}` pair.
///
/// # Safety
/// Unless `len` is 0, `ptr` must point to `len` readable bytes that stay
/// valid for `'a` (the ABI: for the duration of the call).
unsafe fn borrowed<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        return &[];
    }
    // SAFETY: non-null, and the caller guarantees `len` valid bytes for 'a.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

/// Writes `message` into the host's error buffer, truncated to its capacity
/// at a character boundary.
///
/// # Safety
/// `error` is null or points to a `TwErrorBuf` whose `ptr` has `cap`
/// writable bytes, as the host provides for the duration of `create`.
unsafe fn write_error(error: *mut TwErrorBuf, message: &str) {
    // SAFETY: null or valid, per the function's contract.
    let Some(error) = (unsafe { error.as_mut() }) else {
        return;
    };
    if error.ptr.is_null() {
        return;
    }
    let mut len = message.len().min(error.cap);
    while !message.is_char_boundary(len) {
        len -= 1;
    }
    // SAFETY: `len <= cap` bytes fit in the host's buffer, and a `&str` never
    // overlaps host memory.
    unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), error.ptr, len) };
    error.len = len;
}

unsafe extern "C" fn create<P: Plugin>(
    host: *const TwHostApi,
    config_json: TwStr,
    instance: *mut *mut c_void,
    error: *mut TwErrorBuf,
) -> TwStatus {
    let made = catch_unwind(AssertUnwindSafe(|| -> Result<*mut c_void, String> {
        let api = NonNull::new(host.cast_mut()).ok_or("the host table is null")?;
        // SAFETY: the host passes its table, valid until `destroy` returns.
        let table = unsafe { api.as_ref() };
        if table.abi_version != ABI_VERSION
            || (table.struct_size as usize) < std::mem::size_of::<TwHostApi>()
        {
            return Err(format!(
                "host ABI version {} (table of {} bytes) is not the plugin's {ABI_VERSION}",
                table.abi_version, table.struct_size
            ));
        }
        // SAFETY: checked above: a version-1 table, valid until `destroy`.
        let host = unsafe { Host::from_raw(api) };
        // SAFETY: the ABI: config_json is borrowed for this call.
        let json = unsafe { borrowed(config_json.ptr, config_json.len) };
        let config: P::Config = serde_json::from_slice(json)
            .map_err(|e| format!("invalid plugin configuration: {e}"))?;
        let plugin = P::new(host.clone(), config).map_err(|e| e.to_string())?;
        Ok(Box::into_raw(Box::new(Instance { plugin, host })).cast())
    }));
    match made {
        Ok(Ok(made)) => {
            if instance.is_null() {
                // Nowhere to put it: free it and fail rather than leak it.
                // SAFETY: `made` came from Box::into_raw just above.
                drop(unsafe { Box::from_raw(made.cast::<Instance<P>>()) });
                return TwStatus::ERROR;
            }
            // SAFETY: non-null host memory for this call, per the ABI.
            unsafe { instance.write(made) };
            TwStatus::OK
        }
        Ok(Err(message)) => {
            // SAFETY: the host's error buffer, valid for this call.
            unsafe { write_error(error, &message) };
            TwStatus::ERROR
        }
        Err(panic) => {
            let message = format!("panicked in create: {}", panic_message(&*panic));
            // SAFETY: as above.
            unsafe { write_error(error, &message) };
            TwStatus::PANICKED
        }
    }
}

/// Runs `call` on the instance, turning an error into a logged `ERROR` and
/// a panic into a logged `PANICKED`.
///
/// # Safety
/// `instance` is null or a pointer returned by `create::<P>` and not yet
/// destroyed; the host calls one entry point at a time.
unsafe fn with_instance<P: Plugin>(
    instance: *mut c_void,
    what: &str,
    call: impl FnOnce(&mut P) -> Result<(), crate::Error>,
) -> TwStatus {
    // SAFETY: per this function's contract, exclusive for the call.
    let Some(instance) = (unsafe { instance.cast::<Instance<P>>().as_mut() }) else {
        return TwStatus::INVALID_ARGUMENT;
    };
    let host = instance.host.clone();
    match catch_unwind(AssertUnwindSafe(|| call(&mut instance.plugin))) {
        Ok(Ok(())) => TwStatus::OK,
        Ok(Err(e)) => {
            host.error(&format!("{what} failed: {e}"));
            TwStatus::ERROR
        }
        Err(panic) => {
            host.error(&format!("panicked in {what}: {}", panic_message(&*panic)));
            TwStatus::PANICKED
        }
    }
}

unsafe extern "C" fn start<P: Plugin>(instance: *mut c_void) -> TwStatus {
    // SAFETY: the host passes the pointer `create` gave it.
    unsafe { with_instance::<P>(instance, "start", |plugin| plugin.start()) }
}

unsafe extern "C" fn on_message<P: Plugin>(
    instance: *mut c_void,
    topic: TwStr,
    payload: TwBytes,
) -> TwStatus {
    // SAFETY: the ABI: topic and payload are borrowed for this call.
    let (topic, payload) = unsafe {
        (
            borrowed(topic.ptr, topic.len),
            borrowed(payload.ptr, payload.len),
        )
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        return TwStatus::INVALID_ARGUMENT;
    };
    // SAFETY: the host passes the pointer `create` gave it.
    unsafe {
        with_instance::<P>(instance, "on_message", |plugin| {
            plugin.on_message(topic, payload)
        })
    }
}

unsafe extern "C" fn stop<P: Plugin>(instance: *mut c_void) -> TwStatus {
    // SAFETY: the host passes the pointer `create` gave it.
    unsafe {
        with_instance::<P>(instance, "stop", |plugin| {
            plugin.stop();
            Ok(())
        })
    }
}

unsafe extern "C" fn destroy<P: Plugin>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // SAFETY: the pointer came from Box::into_raw in `create`, and the host
    // never uses it after this call.
    let instance = unsafe { Box::from_raw(instance.cast::<Instance<P>>()) };
    let host = instance.host.clone();
    if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(instance))) {
        host.error(&format!("panicked in destroy: {}", panic_message(&*panic)));
    }
}
