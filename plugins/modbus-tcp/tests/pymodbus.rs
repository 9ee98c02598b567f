//! The Modbus client against a real, independent implementation: a
//! `pymodbus` server (tests/modbus_server.py) with known register values.
//!
//! Needs `python3` with `pymodbus` 3.x (`pip install 'pymodbus==3.*'`).
//! Without it the tests print why they are skipped, unless `CI` is set,
//! where that is a failure.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use modbus_tcp::client::{Client, ModbusError, Table};
use modbus_tcp::value::{decode, DataType, WordOrder};

/// A running `modbus_server.py`, killed (by its pid) on drop.
struct Server {
    child: Child,
    address: String,
}

impl Server {
    fn start() -> Option<Server> {
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
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/modbus_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args(["--lifetime", "60"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the pymodbus server");
        let stdout = child.stdout.take().expect("the server's stdout");
        let (tx, rx) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let server = Server {
            child,
            address: format!("127.0.0.1:{port}"),
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.trim() == "ready" => Some(server),
            other => panic!("the pymodbus server did not start: {other:?}"),
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.address, 1, Duration::from_secs(2)).expect("connect to pymodbus")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every data type decodes to the value the server was given, from
/// holding and input registers.
#[test]
fn reads_every_type_from_pymodbus() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut client = server.client();
    let holding = client.read(Table::Holding, 0, 8).expect("read holding");
    let big = WordOrder::Big;
    assert_eq!(decode(&holding[0..1], DataType::I16, big), 215.0);
    assert_eq!(decode(&holding[1..3], DataType::U32, big), 100_000.0);
    assert_eq!(decode(&holding[3..5], DataType::F32, big), 3.5);
    assert_eq!(decode(&holding[5..6], DataType::I16, big), -5.0);
    assert_eq!(decode(&holding[6..8], DataType::I32, big), -100_000.0);
    let input = client.read(Table::Input, 0, 2).expect("read input");
    assert_eq!(decode(&input[0..1], DataType::U16, big), 1234.0);
    assert_eq!(decode(&input[1..2], DataType::I16, big), -1.0);
}

/// Function 6 and function 16 writes are applied by the server and read back.
#[test]
fn writes_are_applied_by_pymodbus() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut client = server.client();
    client.write(10, &[77]).expect("write single");
    assert_eq!(client.read(Table::Holding, 10, 1).expect("read back"), [77]);
    client.write(20, &[0xDEAD, 0xBEEF]).expect("write multiple");
    assert_eq!(
        client.read(Table::Holding, 20, 2).expect("read back"),
        [0xDEAD, 0xBEEF]
    );
}

/// A read past the server's registers is an exception that keeps the
/// connection usable.
#[test]
fn illegal_address_is_an_exception() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut client = server.client();
    let error = client
        .read(Table::Holding, 5_000, 2)
        .expect_err("no such registers");
    assert!(
        matches!(error, ModbusError::Exception { function: 3, .. }),
        "{error}"
    );
    assert_eq!(
        client.read(Table::Holding, 0, 1).expect("still usable"),
        [215]
    );
}
