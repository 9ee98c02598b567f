//! A Modbus TCP client: the MBAP header and function codes 3 (read holding
//! registers), 4 (read input registers), 6 (write single register) and 16
//! (write multiple registers), over a blocking socket with timeouts.
//!
//! A request is `MBAP (7 bytes) + PDU`: transaction id, protocol id 0, the
//! length of what follows (unit id + PDU), the unit id, then the function
//! code and its data, all big-endian. An answer with the function code's
//! high bit set is an exception, whose code says why.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Registers one read may ask for (the protocol's limit, 125).
pub const MAX_READ: u16 = 125;
/// Registers one write may carry (the protocol's limit, 123).
pub const MAX_WRITE: usize = 123;
/// Responses with another transaction id skipped before giving up: late
/// answers to requests that had timed out.
const MAX_STALE: usize = 4;

/// Which register table to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Read-write registers (function 3 to read, 6 or 16 to write).
    Holding,
    /// Read-only registers (function 4).
    Input,
}

#[derive(Debug)]
pub enum ModbusError {
    /// The connection failed or timed out; reconnect before the next request.
    Io(io::Error),
    /// The device refused the request with an exception code.
    Exception { function: u8, code: u8 },
    /// The answer does not follow the protocol; reconnect.
    Protocol(String),
}

impl ModbusError {
    /// Whether the connection is still usable after this error.
    pub fn keeps_connection(&self) -> bool {
        matches!(self, Self::Exception { .. })
    }
}

impl fmt::Display for ModbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connection error: {e}"),
            Self::Exception { function, code } => write!(
                f,
                "device refused function {function}: exception {code} ({})",
                exception_name(*code)
            ),
            Self::Protocol(problem) => write!(f, "protocol error: {problem}"),
        }
    }
}

impl std::error::Error for ModbusError {}

impl From<io::Error> for ModbusError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// The standard meaning of an exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

/// The MBAP header and `pdu`, ready to send.
pub fn encode_frame(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(7 + pdu.len());
    frame.extend_from_slice(&transaction.to_be_bytes());
    frame.extend_from_slice(&0u16.to_be_bytes());
    frame.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
    frame.push(unit);
    frame.extend_from_slice(pdu);
    frame
}

/// A parsed MBAP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub transaction: u16,
    pub protocol: u16,
    /// Bytes after the length field: the unit id and the PDU.
    pub length: u16,
    pub unit: u8,
}

pub fn parse_header(bytes: &[u8; 7]) -> Header {
    Header {
        transaction: u16::from_be_bytes([bytes[0], bytes[1]]),
        protocol: u16::from_be_bytes([bytes[2], bytes[3]]),
        length: u16::from_be_bytes([bytes[4], bytes[5]]),
        unit: bytes[6],
    }
}

/// One connection to one unit of a device.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    unit: u8,
    transaction: u16,
}

impl Client {
    /// Connects to `address` (`host:port`), waiting at most `timeout` for
    /// the connection and for each answer later.
    pub fn connect(address: &str, unit: u8, timeout: Duration) -> Result<Self, ModbusError> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing");
        for addr in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    stream.set_nodelay(true)?;
                    return Ok(Self {
                        stream,
                        unit,
                        transaction: 0,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(ModbusError::Io(last))
    }

    /// Reads `count` registers from `table` starting at `address`.
    pub fn read(
        &mut self,
        table: Table,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        if count == 0 || count > MAX_READ {
            return Err(ModbusError::Protocol(format!(
                "cannot read {count} registers at once (1 to {MAX_READ})"
            )));
        }
        let function = match table {
            Table::Holding => 3,
            Table::Input => 4,
        };
        let [a, b] = address.to_be_bytes();
        let [c, d] = count.to_be_bytes();
        let answer = self.call(&[function, a, b, c, d])?;
        let bytes = usize::from(count) * 2;
        if answer.len() != 2 + bytes || usize::from(answer[1]) != bytes {
            return Err(ModbusError::Protocol(format!(
                "asked for {count} registers, the answer holds {} bytes",
                answer.len().saturating_sub(2)
            )));
        }
        Ok(answer[2..]
            .chunks_exact(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .collect())
    }

    /// Writes holding registers from `address` on: function 6 for one,
    /// 16 for several.
    pub fn write(&mut self, address: u16, values: &[u16]) -> Result<(), ModbusError> {
        let [a, b] = address.to_be_bytes();
        if let [value] = values {
            let [c, d] = value.to_be_bytes();
            let request = [6, a, b, c, d];
            let answer = self.call(&request)?;
            if answer != request {
                return Err(ModbusError::Protocol(
                    "the write-single answer does not echo the request".into(),
                ));
            }
            return Ok(());
        }
        if values.is_empty() || values.len() > MAX_WRITE {
            return Err(ModbusError::Protocol(format!(
                "cannot write {} registers at once (1 to {MAX_WRITE})",
                values.len()
            )));
        }
        let [c, d] = (values.len() as u16).to_be_bytes();
        let mut request = vec![16, a, b, c, d, (values.len() * 2) as u8];
        for value in values {
            request.extend_from_slice(&value.to_be_bytes());
        }
        let answer = self.call(&request)?;
        if answer != request[..5] {
            return Err(ModbusError::Protocol(
                "the write-multiple answer does not match the request".into(),
            ));
        }
        Ok(())
    }

    /// Sends one request and returns the answer's PDU.
    fn call(&mut self, pdu: &[u8]) -> Result<Vec<u8>, ModbusError> {
        self.transaction = self.transaction.wrapping_add(1);
        self.stream
            .write_all(&encode_frame(self.transaction, self.unit, pdu))?;
        for _ in 0..=MAX_STALE {
            let mut head = [0u8; 7];
            self.stream.read_exact(&mut head)?;
            let header = parse_header(&head);
            if header.protocol != 0 {
                return Err(ModbusError::Protocol(format!(
                    "protocol id {} is not Modbus (0)",
                    header.protocol
                )));
            }
            if !(2..=254).contains(&header.length) {
                return Err(ModbusError::Protocol(format!(
                    "frame length {} is out of range",
                    header.length
                )));
            }
            let mut answer = vec![0u8; usize::from(header.length) - 1];
            self.stream.read_exact(&mut answer)?;
            if header.transaction != self.transaction {
                continue; // a late answer to an earlier, timed-out request
            }
            if header.unit != self.unit {
                return Err(ModbusError::Protocol(format!(
                    "answer from unit {}, asked unit {}",
                    header.unit, self.unit
                )));
            }
            return match answer.first() {
                Some(&function) if function == pdu[0] => Ok(answer),
                Some(&function) if function == pdu[0] | 0x80 => Err(ModbusError::Exception {
                    function: pdu[0],
                    code: answer.get(1).copied().unwrap_or(0),
                }),
                _ => Err(ModbusError::Protocol(format!(
                    "answer for function {:?}, asked {}",
                    answer.first(),
                    pdu[0]
                ))),
            };
        }
        Err(ModbusError::Protocol(
            "no answer with our transaction id".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// The MBAP header carries the transaction, protocol 0, the length of
    /// unit + PDU, and the unit, big-endian.
    #[test]
    fn frame_layout() {
        let frame = encode_frame(0x1234, 7, &[3, 0, 10, 0, 2]);
        assert_eq!(frame, [0x12, 0x34, 0, 0, 0, 6, 7, 3, 0, 10, 0, 2]);
        let header = parse_header(&[0x12, 0x34, 0, 0, 0, 6, 7]);
        assert_eq!(
            header,
            Header {
                transaction: 0x1234,
                protocol: 0,
                length: 6,
                unit: 7
            }
        );
    }

    /// A scripted device: answers each request with the next canned reply
    /// (given the request's transaction id), recording the requests.
    fn device(
        replies: Vec<Box<dyn Fn(u16) -> Vec<u8> + Send>>,
    ) -> (String, thread::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut requests = Vec::new();
            for reply in replies {
                let mut head = [0u8; 7];
                stream.read_exact(&mut head).expect("request head");
                let header = parse_header(&head);
                let mut pdu = vec![0u8; usize::from(header.length) - 1];
                stream.read_exact(&mut pdu).expect("request pdu");
                requests.push(pdu);
                stream.write_all(&reply(header.transaction)).expect("reply");
            }
            requests
        });
        (addr, handle)
    }

    fn connect(addr: &str) -> Client {
        Client::connect(addr, 1, Duration::from_secs(2)).expect("connect")
    }

    /// Reading holding registers sends function 3 and decodes the words.
    #[test]
    fn reads_holding_registers() {
        let (addr, device) = device(vec![Box::new(|t| {
            encode_frame(t, 1, &[3, 4, 0x00, 0xD7, 0xFF, 0xFB])
        })]);
        let mut client = connect(&addr);
        assert_eq!(
            client.read(Table::Holding, 10, 2).expect("read"),
            [215, 0xFFFB]
        );
        assert_eq!(device.join().expect("device"), [vec![3, 0, 10, 0, 2]]);
    }

    /// An exception answer is reported with its code and name.
    #[test]
    fn exception_is_reported() {
        let (addr, device) = device(vec![Box::new(|t| encode_frame(t, 1, &[0x84, 2]))]);
        let mut client = connect(&addr);
        let error = client.read(Table::Input, 999, 1).expect_err("refused");
        assert!(error.keeps_connection());
        assert_eq!(
            error.to_string(),
            "device refused function 4: exception 2 (illegal data address)"
        );
        device.join().expect("device");
    }

    /// One register is written with function 6, two with function 16.
    #[test]
    fn writes_single_and_multiple() {
        let (addr, device) = device(vec![
            Box::new(|t| encode_frame(t, 1, &[6, 0, 5, 0, 42])),
            Box::new(|t| encode_frame(t, 1, &[16, 0, 6, 0, 2])),
        ]);
        let mut client = connect(&addr);
        client.write(5, &[42]).expect("write single");
        client.write(6, &[1, 2]).expect("write multiple");
        assert_eq!(
            device.join().expect("device"),
            [vec![6, 0, 5, 0, 42], vec![16, 0, 6, 0, 2, 4, 0, 1, 0, 2]]
        );
    }

    /// A late answer to an earlier request is skipped, not taken for ours.
    #[test]
    fn stale_answers_are_skipped() {
        let (addr, device) = device(vec![Box::new(|t| {
            let mut both = encode_frame(t.wrapping_sub(1), 1, &[3, 2, 0, 9]);
            both.extend(encode_frame(t, 1, &[3, 2, 0, 7]));
            both
        })]);
        let mut client = connect(&addr);
        assert_eq!(client.read(Table::Holding, 0, 1).expect("read"), [7]);
        device.join().expect("device");
    }

    /// A short answer is a protocol error, which drops the connection.
    #[test]
    fn wrong_byte_count_is_a_protocol_error() {
        let (addr, device) = device(vec![Box::new(|t| encode_frame(t, 1, &[3, 2, 0, 1]))]);
        let mut client = connect(&addr);
        let error = client.read(Table::Holding, 0, 2).expect_err("refused");
        assert!(!error.keeps_connection(), "{error}");
        device.join().expect("device");
    }

    /// Nobody listening is a connection error within the timeout.
    #[test]
    fn refused_connection_is_an_io_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .to_string(); // the listener is dropped: nothing listens
        let error = Client::connect(&addr, 1, Duration::from_secs(2)).expect_err("refused");
        assert!(matches!(error, ModbusError::Io(_)), "{error}");
    }
}
