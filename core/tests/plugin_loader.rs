//! End-to-end tests of the plugin loader: deliberately broken libraries,
//! built by the tests, each refused with its own error naming the plugin;
//! optional plugins skipped; and the real binary failing on a required one.

mod common;
mod plugin_support;

use std::path::Path;

use plugin_support::bridge::{plugin, plugins_json, start, start_error};
use plugin_support::{c_plugin, rust_plugin, scratch_dir};
use serde_json::json;

// -------------------------------------------------------------- loader ---

/// A missing file is refused with the plugin's name and the path.
#[tokio::test]
async fn missing_library_is_named() {
    let error = start_error(vec![plugin(
        "ghost",
        Path::new("/nonexistent/libghost.so"),
        json!({}),
    )])
    .await;
    assert!(error.contains("plugin `ghost`"), "{error}");
    assert!(
        error.contains("/nonexistent/libghost.so` not found"),
        "{error}"
    );
}

/// A file that is not a shared library is refused as not loadable.
#[tokio::test]
async fn text_file_is_not_a_library() {
    let path = scratch_dir().join("libtext.so");
    std::fs::write(&path, "this is not ELF\n").expect("write a text file");
    let error = start_error(vec![plugin("text", &path, json!({}))]).await;
    assert!(error.contains("plugin `text`"), "{error}");
    assert!(error.contains("is not a loadable library"), "{error}");
}

/// A library for another architecture is refused, saying which one.
#[tokio::test]
async fn other_architecture_is_named() {
    let Some(library) = c_plugin("arch_source", include_str!("plugin_support/c/no_symbol.c"))
    else {
        return;
    };
    let mut bytes = std::fs::read(&library).expect("read the library");
    // e_machine, little-endian on every host we build for: claim another
    // architecture than this one.
    let other: u16 = if std::env::consts::ARCH == "aarch64" {
        62
    } else {
        183
    };
    bytes[18..20].copy_from_slice(&other.to_le_bytes());
    let path = scratch_dir().join("libother_arch.so");
    std::fs::write(&path, bytes).expect("write the patched library");
    let error = start_error(vec![plugin("foreign", &path, json!({}))]).await;
    assert!(error.contains("plugin `foreign`"), "{error}");
    assert!(error.contains("is not a loadable library"), "{error}");
    assert!(error.contains("it is built for"), "{error}");
}

/// A library without `tidewater_plugin_v1` is not a Tidewater plugin.
#[tokio::test]
async fn library_without_the_symbol_is_not_a_plugin() {
    let Some(library) = c_plugin("no_symbol", include_str!("plugin_support/c/no_symbol.c")) else {
        return;
    };
    let error = start_error(vec![plugin("nosym", &library, json!({}))]).await;
    assert!(error.contains("plugin `nosym`"), "{error}");
    assert!(
        error.contains("is not a Tidewater plugin: it does not export `tidewater_plugin_v1`"),
        "{error}"
    );
}

/// A descriptor of another ABI version is refused, naming both versions.
#[tokio::test]
async fn abi_mismatch_names_both_versions() {
    let Some(library) = c_plugin("wrong_abi", include_str!("plugin_support/c/wrong_abi.c")) else {
        return;
    };
    let error = start_error(vec![plugin("future", &library, json!({}))]).await;
    assert!(error.contains("plugin `future`"), "{error}");
    assert!(
        error.contains("ABI version mismatch (host = 1, plugin = 2)"),
        "{error}"
    );
}

/// A failing `create` stops startup with the plugin's own message.
#[tokio::test]
async fn create_failure_carries_its_message() {
    let Some(library) = c_plugin(
        "create_fails",
        include_str!("plugin_support/c/create_fails.c"),
    ) else {
        return;
    };
    let error = start_error(vec![plugin("gateway", &library, json!({}))]).await;
    assert_eq!(
        error,
        "plugin `gateway`: create failed: cannot reach the vendor's gateway at 10.0.0.9"
    );
}

/// A Rust driver's configuration error is its `create` message, naming the key.
#[tokio::test]
async fn driver_config_error_names_the_key() {
    let library = rust_plugin("sim-thermo");
    let error = start_error(vec![plugin("thermo", &library, json!({"room": ["x"]}))]).await;
    assert!(
        error.starts_with("plugin `thermo`: create failed:"),
        "{error}"
    );
    assert!(error.contains("room"), "{error}");
}

/// An optional plugin that fails is reported and skipped: the bridge
/// starts, serves, and shows it failed with the reason; the others run.
#[tokio::test]
async fn optional_plugin_failure_is_skipped() {
    let mut ghost = plugin("ghost", Path::new("/nonexistent/libghost.so"), json!({}));
    ghost.required = false;
    let lights = plugin(
        "lights",
        &rust_plugin("sim-light"),
        json!({"lights": ["9"]}),
    );
    let mut bridge = start(vec![ghost, lights]).await;
    let list = plugins_json(&bridge).await;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "ghost");
    assert_eq!(list[0]["state"], "failed");
    assert!(
        list[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not found")),
        "{}",
        list[0]
    );
    assert_eq!(list[1]["state"], "running");
    bridge.shutdown().await;
}

/// A required plugin that fails stops the real binary with a non-zero exit
/// and an error naming the plugin.
#[test]
fn required_plugin_failure_fails_the_binary() {
    let dir = scratch_dir();
    let config = dir.join("broken-plugin.toml");
    std::fs::write(
        &config,
        "[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [websocket]\nlisten = \"127.0.0.1:0\"\n[log]\nkind = \"memory\"\n\
         [[plugins]]\nname = \"ghost\"\npath = \"/nonexistent/libghost.so\"\n",
    )
    .expect("write the config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .arg("--config")
        .arg(&config)
        .env_remove("TIDEWATER_HTTP__LISTEN")
        .env_remove("TIDEWATER_MQTT__LISTEN")
        .output()
        .expect("run tidewater");
    assert!(
        !output.status.success(),
        "started despite a missing required plugin"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: plugin `ghost`: library `/nonexistent/libghost.so` not found"),
        "{stderr}"
    );
}

/// `tidewater plugins inspect` prints a good library's descriptor, and the
/// loader's own error (exit status non-zero) for one that is not a plugin.
#[test]
fn inspect_prints_the_descriptor_or_the_reason() {
    let inspect = |path: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .args(["plugins", "inspect"])
            .arg(path)
            .output()
            .expect("run tidewater plugins inspect")
    };
    let good = inspect(&rust_plugin("sim-thermo"));
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{stdout}");
    assert!(stdout.contains("driver       sim-thermo"), "{stdout}");
    assert!(stdout.contains("abi version  1"), "{stdout}");

    let not_a_library = inspect(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("Cargo.toml")
            .as_path(),
    );
    assert!(!not_a_library.status.success());
    let stderr = String::from_utf8_lossy(&not_a_library.stderr);
    assert!(stderr.contains("is not a loadable library"), "{stderr}");
}
