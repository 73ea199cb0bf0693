//! A small blocking HTTP client for the store and hub APIs.

use super::procs;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::time::Duration;

/// How often a POST is tried when the connection fails or the node answers 503.
const post_attempts_max: u32 = 5;

/// An HTTP status and the JSON body (`Null` if the body was not JSON).
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error code of a refusal (`{"error":{"code":…}}`), or "".
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
}

impl Api {
    pub fn new() -> Api {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Api {
            agent: config.into(),
        }
    }

    fn reply(response: ureq::http::Response<ureq::Body>) -> Reply {
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// GET; fails unless the answer is 200 with a JSON body.
    pub fn get(&self, url: &str, token: &str) -> Result<Value> {
        procs::check_interrupt()?;
        let response = self
            .agent
            .get(url)
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .with_context(|| format!("GET {url}"))?;
        let reply = Api::reply(response);
        if reply.status != 200 {
            bail!("GET {url}: {} {}", reply.status, reply.body);
        }
        Ok(reply.body)
    }

    /// POST with an Idempotency-Key. A failed connection or a 503 (node stopping) is retried
    /// with the same key and body, so the write happens once however often it is sent.
    pub fn post_reply(&self, url: &str, token: &str, body: &Value, key: &str) -> Result<Reply> {
        let mut attempt = 0;
        loop {
            procs::check_interrupt()?;
            attempt += 1;
            let sent = self
                .agent
                .post(url)
                .header("Authorization", &format!("Bearer {token}"))
                .header("Idempotency-Key", key)
                .send_json(body);
            match sent {
                Ok(response) => {
                    let reply = Api::reply(response);
                    if reply.status != 503 || attempt >= post_attempts_max {
                        return Ok(reply);
                    }
                }
                Err(error) if attempt >= post_attempts_max => {
                    return Err(error).with_context(|| format!("POST {url}"));
                }
                Err(_) => {}
            }
            procs::sleep(Duration::from_millis(200 * u64::from(attempt)))?;
        }
    }

    /// POST; fails unless the answer is 2xx.
    pub fn post(&self, url: &str, token: &str, body: &Value, key: &str) -> Result<Value> {
        let reply = self.post_reply(url, token, body, key)?;
        if !reply.ok() {
            bail!("POST {url} {body}: {} {}", reply.status, reply.body);
        }
        Ok(reply.body)
    }
}
