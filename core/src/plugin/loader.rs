//! Loading a plugin library and checking its descriptor, then calling its
//! entry points through a safe [`Instance`]: the only place the bridge
//! calls plugin code.
//!
//! Each way a library can be wrong has its own [`PluginError`], checked in
//! this order: the file is missing; it is not a loadable library for this
//! platform; it does not export `tidewater_plugin_v1`; its ABI version is
//! not the host's; its descriptor is too small or incomplete. Libraries are
//! never unloaded: a plugin's threads and thread-local destructors may
//! outlive any moment we could pick, so the handle is leaked on purpose.
#![allow(unsafe_code)] // dlopen, dlsym and calls into plugin code

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use tidewater_plugin_api::{
    TwBytes, TwErrorBuf, TwPluginDescriptor, TwPluginEntry, TwStatus, TwStr, ABI_VERSION,
    DESCRIPTOR_SIZE, ENTRY_SYMBOL, ENTRY_SYMBOL_NUL,
};

use super::host::HostTable;
use super::PluginError;

/// Room for `create`'s error message; longer ones are truncated.
const ERROR_BUFFER: usize = 4_096;
/// Longest name or version a descriptor may carry.
const MAX_LABEL: usize = 256;

/// A checked plugin library: its static descriptor and what it says about
/// itself.
#[derive(Debug, Clone, Copy)]
pub struct Driver {
    descriptor: &'static TwPluginDescriptor,
}

// SAFETY: the descriptor is static and immutable (the ABI), so reading it
// from another thread is reading constants; the entry points it holds are
// called for each instance on that instance's own thread only.
unsafe impl Send for Driver {}
// SAFETY: as for Send: shared access is reading constants.
unsafe impl Sync for Driver {}

impl Driver {
    /// Loads `path` for the plugin configured as `name` and checks its
    /// descriptor.
    pub fn load(name: &str, path: &Path) -> Result<Self, PluginError> {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if !path.is_file() {
            return Err(PluginError::FileMissing {
                name: name.to_owned(),
                path,
            });
        }
        let library = open(&path).map_err(|reason| PluginError::NotALibrary {
            name: name.to_owned(),
            path: path.clone(),
            // glibc reports another machine's library as "No such file":
            // say what is really wrong when the header shows it.
            reason: elf_mismatch(&path).unwrap_or(reason),
        })?;
        // SAFETY: the symbol's type is the ABI's `TwPluginEntry`; a library
        // exporting this name promises that signature.
        let entry: Result<TwPluginEntry, _> =
            unsafe { library.get::<TwPluginEntry>(ENTRY_SYMBOL_NUL) }.map(|symbol| *symbol);
        // Never unloaded (see the module docs): the function pointers taken
        // from it stay valid for the life of the process.
        std::mem::forget(library);
        let entry = entry.map_err(|e| PluginError::NotAPlugin {
            name: name.to_owned(),
            path: path.clone(),
            reason: describe(&e),
        })?;
        // SAFETY: the ABI's entry point takes nothing and returns a pointer
        // to a static descriptor; the library stays loaded.
        let raw = unsafe { entry() };
        let bad = |problem: String| PluginError::BadDescriptor {
            name: name.to_owned(),
            path: path.clone(),
            problem,
        };
        if raw.is_null() {
            return Err(bad(format!("`{ENTRY_SYMBOL}` returned a null descriptor")));
        }
        if !raw.cast::<u32>().is_aligned() {
            return Err(bad("the descriptor is misaligned".into()));
        }
        // SAFETY: non-null and aligned; every version of the descriptor
        // begins with `abi_version: u32`, so reading it is valid whatever
        // the version.
        let abi_version = unsafe { raw.cast::<u32>().read() };
        if abi_version != ABI_VERSION {
            return Err(PluginError::AbiMismatch {
                name: name.to_owned(),
                path,
                host: ABI_VERSION,
                plugin: abi_version,
            });
        }
        // SAFETY: a version-1 descriptor: `struct_size` follows `abi_version`.
        let struct_size = unsafe { raw.cast::<u32>().add(1).read() };
        if struct_size < DESCRIPTOR_SIZE {
            return Err(bad(format!(
                "struct_size is {struct_size} bytes, a version-{ABI_VERSION} descriptor has {DESCRIPTOR_SIZE}"
            )));
        }
        // SAFETY: version 1 and at least as large as our definition (fields
        // are only appended), static for the life of the library, which is
        // never unloaded.
        let descriptor: &'static TwPluginDescriptor = unsafe { &*raw };
        let missing = [
            ("create", descriptor.create.is_none()),
            ("start", descriptor.start.is_none()),
            ("on_message", descriptor.on_message.is_none()),
            ("stop", descriptor.stop.is_none()),
            ("destroy", descriptor.destroy.is_none()),
        ];
        if let Some((slot, _)) = missing.iter().find(|(_, none)| *none) {
            return Err(bad(format!("the `{slot}` entry point is null")));
        }
        let driver = Self { descriptor };
        driver.label(driver.descriptor.name).ok_or_else(|| {
            bad(format!(
                "its name is not UTF-8 of at most {MAX_LABEL} bytes"
            ))
        })?;
        driver.label(driver.descriptor.version).ok_or_else(|| {
            bad(format!(
                "its version is not UTF-8 of at most {MAX_LABEL} bytes"
            ))
        })?;
        Ok(driver)
    }

    /// The driver's own name (e.g. `sim-thermo`), not the configured one.
    pub fn name(&self) -> String {
        self.label(self.descriptor.name).unwrap_or_default()
    }

    pub fn version(&self) -> String {
        self.label(self.descriptor.version).unwrap_or_default()
    }

    /// The ABI version and descriptor size the library declares.
    pub fn abi(&self) -> (u32, u32) {
        (self.descriptor.abi_version, self.descriptor.struct_size)
    }

    fn label(&self, text: TwStr) -> Option<String> {
        if text.len > MAX_LABEL {
            return None;
        }
        // SAFETY: descriptor strings are static (the ABI), and the length
        // was bounded above.
        let bytes = unsafe { borrowed(text.ptr, text.len) };
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    /// Calls `create`. `host` must stay valid until the instance is
    /// destroyed: the plugin runtime leaks it, see `host.rs`.
    pub(super) fn create(
        &self,
        host: HostTable,
        config_json: &str,
    ) -> Result<Instance, (TwStatus, String)> {
        let Some(create) = self.descriptor.create else {
            return Err((TwStatus::ERROR, "no create entry point".into()));
        };
        let mut buffer = vec![0u8; ERROR_BUFFER];
        let mut error = TwErrorBuf {
            ptr: buffer.as_mut_ptr(),
            cap: buffer.len(),
            len: 0,
        };
        let mut instance: *mut c_void = std::ptr::null_mut();
        // SAFETY: the ABI's create: a version-1 host table valid until
        // destroy (it is 'static), the config borrowed for the call, and out
        // pointers to live locals.
        let status = unsafe { create(host.0, TwStr::new(config_json), &mut instance, &mut error) };
        if status.is_ok() && !instance.is_null() {
            return Ok(Instance {
                descriptor: self.descriptor,
                raw: instance,
            });
        }
        let written = error.len.min(buffer.len());
        let mut message = String::from_utf8_lossy(&buffer[..written]).into_owned();
        if message.is_empty() {
            message = if status.is_ok() {
                "create returned OK but no instance".into()
            } else {
                format!("create returned {status} without a message")
            };
        }
        Err((
            if status.is_ok() {
                TwStatus::ERROR
            } else {
                status
            },
            message,
        ))
    }
}

/// One created plugin instance. Its methods are the ABI's entry points;
/// taking `&mut self` keeps calls one at a time, as the ABI promises the
/// plugin. Destroyed on drop.
#[derive(Debug)]
pub struct Instance {
    descriptor: &'static TwPluginDescriptor,
    raw: *mut c_void,
}

impl Instance {
    pub fn start(&mut self) -> TwStatus {
        match self.descriptor.start {
            // SAFETY: `raw` is the live instance `create` returned.
            Some(start) => unsafe { start(self.raw) },
            None => TwStatus::ERROR,
        }
    }

    pub fn on_message(&mut self, topic: &str, payload: &[u8]) -> TwStatus {
        match self.descriptor.on_message {
            // SAFETY: as in `start`; topic and payload are borrowed for the
            // duration of the call, as the ABI says.
            Some(on_message) => unsafe {
                on_message(self.raw, TwStr::new(topic), TwBytes::new(payload))
            },
            None => TwStatus::ERROR,
        }
    }

    pub fn stop(&mut self) -> TwStatus {
        match self.descriptor.stop {
            // SAFETY: as in `start`.
            Some(stop) => unsafe { stop(self.raw) },
            None => TwStatus::ERROR,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(destroy) = self.descriptor.destroy {
            // SAFETY: the live instance `create` returned; never used again.
            unsafe { destroy(self.raw) };
        }
    }
}

/// # Safety
/// Unless `len` is 0, `ptr` points to `len` bytes valid for `'a`.
pub(super) unsafe fn borrowed<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 || ptr.is_null() {
        return &[];
    }
    // SAFETY: per the function's contract.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

#[cfg(unix)]
fn open(path: &PathBuf) -> Result<libloading::Library, String> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: loading runs the library's initialisers: that is the trust
    // an operator gives a plugin by configuring it. RTLD_NOW resolves every
    // symbol now, so a library with missing dependencies fails here, with
    // the reason, instead of later at a call; RTLD_LOCAL keeps its symbols
    // from clashing with another plugin's.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map(libloading::Library::from)
        .map_err(|e| describe(&e))
}

#[cfg(not(unix))]
fn open(path: &PathBuf) -> Result<libloading::Library, String> {
    // SAFETY: as on unix: the operator trusts the library it configured.
    unsafe { libloading::Library::new(path) }.map_err(|e| describe(&e))
}

/// The ELF machine numbers of the architectures we name in errors.
const MACHINES: &[(u16, &str)] = &[
    (3, "x86"),
    (40, "arm"),
    (62, "x86_64"),
    (183, "aarch64"),
    (243, "riscv"),
];

/// Why an ELF file cannot run here, if its header says so: another word
/// size or another machine than this build's.
fn elf_mismatch(path: &Path) -> Option<String> {
    let mut header = [0u8; 20];
    let mut file = std::fs::File::open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut header).ok()?;
    if header[..4] != *b"\x7fELF" {
        return None;
    }
    let bits = match header[4] {
        1 => 32,
        2 => 64,
        _ => return None,
    };
    if bits != usize::BITS {
        return Some(format!(
            "it is a {bits}-bit ELF file; this bridge is {}-bit",
            usize::BITS
        ));
    }
    let machine = match header[5] {
        1 => u16::from_le_bytes([header[18], header[19]]),
        _ => u16::from_be_bytes([header[18], header[19]]),
    };
    let ours = MACHINES
        .iter()
        .find(|(_, arch)| *arch == std::env::consts::ARCH)?;
    if machine == ours.0 {
        return None;
    }
    let theirs = MACHINES
        .iter()
        .find(|(number, _)| *number == machine)
        .map_or_else(
            || format!("ELF machine {machine}"),
            |(_, arch)| (*arch).to_owned(),
        );
    Some(format!(
        "it is built for {theirs}; this bridge runs on {}",
        ours.1
    ))
}

/// libloading's own message is only "dlopen failed"; the system's reason is
/// its source.
fn describe(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(source) => source.to_string(),
        None => error.to_string(),
    }
}
