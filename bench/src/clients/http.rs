//! A minimal HTTP/1.1 client on raw TCP for the publish drivers: one
//! keep-alive connection, one request at a time, responses delimited by
//! `Content-Length` or chunked encoding. Small on purpose, so the load
//! generator's cost per request stays far below the server's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connect;
use crate::payload::find;

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    host: String,
    buffer: Vec<u8>,
    request: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr, n: usize) -> anyhow::Result<Self> {
        Ok(Self {
            stream: connect(addr, n).await?,
            host: addr.to_string(),
            buffer: Vec::with_capacity(4096),
            request: Vec::with_capacity(512),
        })
    }

    /// Sends `POST path` with `body`; returns the response status.
    pub async fn post(&mut self, path: &str, body: &[u8]) -> anyhow::Result<u16> {
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.host,
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await?;
        tokio::time::timeout(RESPONSE_TIMEOUT, self.response())
            .await
            .context("no HTTP response in time")?
    }

    async fn response(&mut self) -> anyhow::Result<u16> {
        let head_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        let status = head
            .get(9..12)
            .and_then(|s| s.parse::<u16>().ok())
            .context("malformed status line")?;
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok());
        let body_end = if let Some(length) = length {
            while self.buffer.len() < head_end + length {
                self.fill().await?;
            }
            head_end + length
        } else if head.contains("transfer-encoding: chunked") {
            loop {
                if let Some(end) = find(&self.buffer[head_end..], b"0\r\n\r\n") {
                    break head_end + end + 5;
                }
                self.fill().await?;
            }
        } else {
            head_end
        };
        self.buffer.drain(..body_end);
        Ok(status)
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-response");
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
