//! A webhook receiver for tests: a tiny HTTP/1.1 server on 127.0.0.1 that records each POST
//! (its `X-Chainsync-Message-Id` and JSON body) and can answer 500 to the first N requests.
//! [`Webhook::distinct`] deduplicates by message id, as a real receiver would.

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// Every request that was answered 2xx, in arrival order: (message id, body).
    accepted: Vec<(String, Value)>,
    /// Requests answered 500.
    refused: usize,
    /// Answer 500 to this many more requests.
    fail_next: usize,
    /// Answer 500 to everything while set.
    failing: bool,
}

pub struct Webhook {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Webhook {
    pub fn start() -> Result<Webhook> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the webhook receiver")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state_in, stop_in) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_in.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let state = state_in.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &state);
                });
            }
        });
        Ok(Webhook { url, state, stop })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answer 500 to the next `n` requests.
    pub fn fail_next(&self, n: usize) {
        if let Ok(mut state) = self.state.lock() {
            state.fail_next = n;
        }
    }

    /// Answer 500 to everything (true) or nothing (false).
    pub fn set_failing(&self, failing: bool) {
        if let Ok(mut state) = self.state.lock() {
            state.failing = failing;
        }
    }

    /// Accepted messages by id (duplicates collapsed; the first body kept).
    pub fn distinct(&self) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        if let Ok(state) = self.state.lock() {
            for (id, body) in &state.accepted {
                out.entry(id.clone()).or_insert_with(|| body.clone());
            }
        }
        out
    }

    /// How many requests were accepted (duplicates counted).
    pub fn accepted_count(&self) -> usize {
        self.state.lock().map(|s| s.accepted.len()).unwrap_or(0)
    }

    /// How many requests were answered 500.
    pub fn refused_count(&self) -> usize {
        self.state.lock().map(|s| s.refused).unwrap_or(0)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees `stop`.
        if let Some(addr) = self
            .url
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
        {
            let _ = TcpStream::connect(addr);
        }
    }
}

fn serve_one(stream: TcpStream, state: &Mutex<State>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut id = None;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                if name == "content-length" {
                    length = value.trim().parse().unwrap_or(0);
                } else if name == "x-chainsync-message-id" {
                    id = Some(value.trim().to_owned());
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let refuse = {
            let mut state = state.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let refuse = state.failing || state.fail_next > 0;
            if refuse {
                state.fail_next = state.fail_next.saturating_sub(1);
                state.refused += 1;
            } else {
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                state.accepted.push((id.unwrap_or_default(), body));
            }
            refuse
        };
        let status = if refuse {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        )?;
        writer.flush()?;
    }
}
