//! Keeps `include/tidewater_plugin.h` identical to the Rust definitions: a C
//! file generated here from the crate's own sizes, offsets and constants is
//! compiled against the header, and every value is a static assertion.
//!
//! Needs a C compiler (`$CC`, else `cc`). Without one the test prints why it
//! is skipped, unless `CI` is set, where that is a failure.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use tidewater_plugin_api::*;

/// The C type of each function-pointer field, next to a compile-time proof
/// that the Rust field has exactly that signature.
const SIGNATURES: &[(&str, &str, &str)] = &[
    (
        "TwHostApi",
        "publish",
        "TwStatus (*)(void *, TwStr, TwBytes, uint8_t, uint8_t)",
    ),
    ("TwHostApi", "subscribe", "TwStatus (*)(void *, TwStr)"),
    ("TwHostApi", "log", "void (*)(void *, TwLogLevel, TwStr)"),
    (
        "TwHostApi",
        "presence",
        "TwStatus (*)(void *, TwStr, uint8_t)",
    ),
    (
        "TwPluginDescriptor",
        "create",
        "TwStatus (*)(const TwHostApi *, TwStr, void **, TwErrorBuf *)",
    ),
    ("TwPluginDescriptor", "start", "TwStatus (*)(void *)"),
    (
        "TwPluginDescriptor",
        "on_message",
        "TwStatus (*)(void *, TwStr, TwBytes)",
    ),
    ("TwPluginDescriptor", "stop", "TwStatus (*)(void *)"),
    ("TwPluginDescriptor", "destroy", "void (*)(void *)"),
];

// The Rust side of SIGNATURES: each line fails to compile if the Rust type
// differs from the C type written above it. (TwStatus and TwLogLevel are
// `repr(transparent)` over u32, the C typedefs' type.)
const _: fn(TwPublishFn) -> unsafe extern "C" fn(*mut c_void, TwStr, TwBytes, u8, u8) -> TwStatus =
    |f| f;
const _: fn(TwSubscribeFn) -> unsafe extern "C" fn(*mut c_void, TwStr) -> TwStatus = |f| f;
const _: fn(TwLogFn) -> unsafe extern "C" fn(*mut c_void, TwLogLevel, TwStr) = |f| f;
const _: fn(TwPresenceFn) -> unsafe extern "C" fn(*mut c_void, TwStr, u8) -> TwStatus = |f| f;
const _: fn(
    TwCreateFn,
) -> unsafe extern "C" fn(
    *const TwHostApi,
    TwStr,
    *mut *mut c_void,
    *mut TwErrorBuf,
) -> TwStatus = |f| f;
const _: fn(TwStartFn) -> unsafe extern "C" fn(*mut c_void) -> TwStatus = |f| f;
const _: fn(TwOnMessageFn) -> unsafe extern "C" fn(*mut c_void, TwStr, TwBytes) -> TwStatus = |f| f;
const _: fn(TwStopFn) -> unsafe extern "C" fn(*mut c_void) -> TwStatus = |f| f;
const _: fn(TwDestroyFn) -> unsafe extern "C" fn(*mut c_void) = |f| f;
const _: fn(TwPluginEntry) -> unsafe extern "C" fn() -> *const TwPluginDescriptor = |f| f;

/// The C source: one `_Static_assert` per size, offset, constant and signature.
fn generated_c() -> String {
    let mut c = String::from(
        "#include \"tidewater_plugin.h\"\n\
         #define SAME(a, b) _Static_assert((a) == (b), #a \" must be \" #b)\n\
         #define SIG(T, f, type) _Static_assert(__builtin_types_compatible_p(\
         __typeof__(((T *)0)->f), type), #T \".\" #f \" must be \" #type)\n",
    );
    let mut same = |a: &str, b: u64| writeln!(c, "SAME({a}, {b});").expect("write to a String");
    macro_rules! layout {
        ($ty:ident { $($field:ident),* }) => {
            same(concat!("sizeof(", stringify!($ty), ")"), size_of::<$ty>() as u64);
            same(concat!("_Alignof(", stringify!($ty), ")"), std::mem::align_of::<$ty>() as u64);
            $(same(
                concat!("offsetof(", stringify!($ty), ", ", stringify!($field), ")"),
                offset_of!($ty, $field) as u64,
            );)*
        };
    }
    layout!(TwStr { ptr, len });
    layout!(TwBytes { ptr, len });
    layout!(TwErrorBuf { ptr, cap, len });
    layout!(TwHostApi {
        abi_version,
        struct_size,
        ctx,
        publish,
        subscribe,
        log,
        presence
    });
    layout!(TwPluginDescriptor {
        abi_version,
        struct_size,
        name,
        version,
        create,
        start,
        on_message,
        stop,
        destroy
    });
    same("sizeof(TwStatus)", size_of::<TwStatus>() as u64);
    same("sizeof(TwLogLevel)", size_of::<TwLogLevel>() as u64);
    same("TW_ABI_VERSION", ABI_VERSION.into());
    for (name, status) in [
        ("TW_STATUS_OK", TwStatus::OK),
        ("TW_STATUS_ERROR", TwStatus::ERROR),
        ("TW_STATUS_BUSY", TwStatus::BUSY),
        ("TW_STATUS_INVALID_ARGUMENT", TwStatus::INVALID_ARGUMENT),
        ("TW_STATUS_DENIED", TwStatus::DENIED),
        ("TW_STATUS_CLOSED", TwStatus::CLOSED),
        ("TW_STATUS_PANICKED", TwStatus::PANICKED),
    ] {
        same(name, status.0.into());
    }
    for (name, level) in [
        ("TW_LOG_ERROR", TwLogLevel::ERROR),
        ("TW_LOG_WARN", TwLogLevel::WARN),
        ("TW_LOG_INFO", TwLogLevel::INFO),
        ("TW_LOG_DEBUG", TwLogLevel::DEBUG),
        ("TW_LOG_TRACE", TwLogLevel::TRACE),
    ] {
        same(name, level.0.into());
    }
    // The symbol: the macro spells it, and the prototype has the entry type.
    // (C cannot compare strings statically; the macro's text is checked by
    // `entry_symbol_macro_spells_the_symbol`.)
    same("sizeof(TW_ENTRY_SYMBOL)", ENTRY_SYMBOL_NUL.len() as u64);
    writeln!(
        c,
        "_Static_assert(__builtin_types_compatible_p(__typeof__(&{ENTRY_SYMBOL}), \
         const TwPluginDescriptor *(*)(void)), \"entry point signature\");"
    )
    .expect("write to a String");
    for (ty, field, c_type) in SIGNATURES {
        writeln!(c, "SIG({ty}, {field}, {c_type});").expect("write to a String");
    }
    c
}

fn compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// The header agrees with the Rust definitions on every size, alignment,
/// offset, constant and function signature (checked by a C compiler).
#[test]
fn header_matches_the_rust_definitions() {
    let cc = compiler();
    if Command::new(&cc).arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set and no C compiler `{cc}` was found"
        );
        println!("SKIPPED: no C compiler `{cc}` (set CC, or install one)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tidewater-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let source = dir.join("header_check.c");
    std::fs::write(&source, generated_c()).expect("write the C check");
    let output = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(include_dir())
        .arg(&source)
        .output()
        .expect("run the C compiler");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "the header disagrees with the Rust definitions:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The check would notice a drift: a deliberately wrong size is refused by
/// the compiler, so a passing run means the assertions were evaluated.
#[test]
fn a_wrong_value_is_caught() {
    let cc = compiler();
    if Command::new(&cc).arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI is set and no `{cc}`");
        println!("SKIPPED: no C compiler `{cc}`");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tidewater-header-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let source = dir.join("wrong.c");
    let wrong = generated_c().replace(
        &format!("SAME(sizeof(TwStr), {});", size_of::<TwStr>()),
        &format!("SAME(sizeof(TwStr), {});", size_of::<TwStr>() + 1),
    );
    std::fs::write(&source, wrong).expect("write the C check");
    let output = Command::new(&cc)
        .args(["-std=c11", "-fsyntax-only", "-I"])
        .arg(include_dir())
        .arg(&source)
        .output()
        .expect("run the C compiler");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success(), "a wrong size compiled");
}

/// The header's `TW_ENTRY_SYMBOL` macro spells the symbol the host looks up.
#[test]
fn entry_symbol_macro_spells_the_symbol() {
    let header =
        std::fs::read_to_string(include_dir().join("tidewater_plugin.h")).expect("read the header");
    let expected = format!("#define TW_ENTRY_SYMBOL \"{ENTRY_SYMBOL}\"");
    assert!(header.contains(&expected), "header lacks `{expected}`");
}
