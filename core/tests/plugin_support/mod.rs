//! Building the plugin libraries the end-to-end tests load through the real
//! loader: the workspace's Rust drivers (with the same cargo, target
//! directory and profile as the tests, once per test binary) and C plugins
//! (with `cc`, into a temporary directory).
#![allow(dead_code)]

pub mod bridge;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The drivers built for these tests.
const DRIVERS: &[&str] = &["sim-thermo", "sim-light", "modbus-tcp", "test-panic"];

/// `<target>/<profile>`: where this test binary's crate outputs live (the
/// binary itself is in its `deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// The shared library of workspace driver `package`, built on first use.
pub fn rust_plugin(package: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let profile = profile_dir();
    if let Err(e) = BUILT.get_or_init(|| build_drivers(&profile)) {
        panic!("{e}");
    }
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let path = profile.join(file);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn build_drivers(profile: &Path) -> Result<(), String> {
    let target = profile
        .parent()
        .ok_or("no target directory above the profile directory")?;
    let mut command = Command::new(env!("CARGO"));
    command
        .arg("build")
        .arg("--target-dir")
        .arg(target)
        .current_dir(workspace_root());
    if profile.file_name().is_some_and(|n| n == "release") {
        command.arg("--release");
    }
    for driver in DRIVERS {
        command.args(["-p", driver]);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo to build the drivers: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the drivers failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("core sits in the workspace root")
        .to_path_buf()
}

/// The C compiler, or `None` (with the reason printed) when there is none
/// and `CI` is not set; with `CI` set a missing compiler fails the test.
pub fn c_compiler() -> Option<String> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").output().is_ok() {
        return Some(cc);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set and there is no C compiler `{cc}`"
    );
    println!("SKIPPED: no C compiler `{cc}` (set CC, or install one)");
    None
}

/// A directory for this test binary's generated files, removed by nobody:
/// it lives in the target directory, which `cargo clean` clears.
pub fn scratch_dir() -> PathBuf {
    let dir = profile_dir()
        .join("plugin-tests")
        .join(std::process::id().to_string());
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    dir
}

/// Compiles the C source `source` (text) into a shared library named
/// `name`, against the plugin header. `None` when there is no compiler.
pub fn c_plugin(name: &str, source: &str) -> Option<PathBuf> {
    let cc = c_compiler()?;
    let dir = scratch_dir();
    let c_file = dir.join(format!("{name}.c"));
    std::fs::write(&c_file, source).expect("write the C source");
    Some(compile_c(&cc, &c_file, &dir.join(format!("lib{name}.so"))))
}

/// Compiles the C file at `path` into `out` with `cc -shared -fPIC`.
pub fn compile_c(cc: &str, path: &Path, out: &Path) -> PathBuf {
    let include = workspace_root().join("plugins/api/include");
    let output = Command::new(cc)
        .args([
            "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-I",
        ])
        .arg(&include)
        .arg(path)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run the C compiler");
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out.to_path_buf()
}

/// A running `plugins/modbus-tcp/tests/modbus_server.py` (pymodbus with
/// known register values), killed by its pid on drop.
pub struct ModbusServer {
    child: std::process::Child,
    pub address: String,
}

impl ModbusServer {
    /// `None` (with the reason printed) when python3 cannot import
    /// pymodbus and `CI` is not set; with `CI` set that fails the test.
    pub fn start() -> Option<Self> {
        use std::io::BufRead;
        let available = Command::new("python3")
            .args(["-c", "import pymodbus"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !available {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set and python3 cannot import pymodbus (pip install 'pymodbus==3.*')"
            );
            println!("SKIPPED: python3 cannot import pymodbus (pip install 'pymodbus==3.*')");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut child = Command::new("python3")
            .arg(workspace_root().join("plugins/modbus-tcp/tests/modbus_server.py"))
            .arg(port.to_string())
            .args(["--lifetime", "60"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the pymodbus server");
        let stdout = child.stdout.take().expect("the server's stdout");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let server = ModbusServer {
            child,
            address: format!("127.0.0.1:{port}"),
        };
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(line) if line.trim() == "ready" => Some(server),
            other => panic!("the pymodbus server did not start: {other:?}"),
        }
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
