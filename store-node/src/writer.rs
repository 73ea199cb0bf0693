//! The one writer. A dedicated thread owns the read-write SQLite connection and takes requests
//! from a bounded queue. It drains up to `writer_batch_max` requests, runs each in its own
//! savepoint (a failed request rolls back alone), commits them together with one fsync, and
//! only then answers every request in the batch. Nothing is acknowledged before it is durable.
//!
//! Idempotency keys are checked and recorded in the same savepoint as the write they guard.
//!
//! Two queues: cashier requests, and background work (applying operations relayed from the
//! hub). Cashier requests always go first, and a batch holds at most one background job (whose
//! size is bounded), so a checkout never waits behind sync backfill for more than one job.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::panic::AssertUnwindSafe;
use tokio::sync::{mpsc, oneshot};

use crate::commands::Local;
use chainsync_replica::api::{ApiError, Reply};

/// Most requests committed in one transaction.
pub const writer_batch_max: usize = 256;
/// Most requests waiting for the writer.
pub const writer_queue_max: usize = 1024;

pub type Job = Box<dyn FnOnce(&Connection, &mut Local, u64) -> Result<Reply, ApiError> + Send>;

pub use chainsync_replica::posted::Idempotency;

struct Request {
    idempotency: Option<Idempotency>,
    job: Job,
    reply: oneshot::Sender<Result<Reply, ApiError>>,
}

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Request>,
    background: mpsc::Sender<Request>,
    own_seq: tokio::sync::watch::Receiver<u64>,
}

impl Writer {
    /// Start the writer thread. It stops when every `Writer` handle is dropped.
    pub fn start(
        conn: Connection,
        local: Local,
    ) -> std::io::Result<(Writer, std::thread::JoinHandle<()>)> {
        let (queue, requests) = mpsc::channel(writer_queue_max);
        let (background, background_requests) = mpsc::channel(writer_queue_max);
        let (own_seq_sender, own_seq) = tokio::sync::watch::channel(local.own_seq_max());
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, local, requests, background_requests, own_seq_sender))?;
        Ok((
            Writer {
                queue,
                background,
                own_seq,
            },
            thread,
        ))
    }

    /// Watch the highest sequence number of this store's own operations (changes after commit).
    pub fn own_seq(&self) -> tokio::sync::watch::Receiver<u64> {
        self.own_seq.clone()
    }

    /// Queue background work (lower priority than cashier requests) and wait for it.
    pub async fn submit_background(&self, job: Job) -> Result<Reply, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.background
            .send(Request {
                idempotency: None,
                job,
                reply,
            })
            .await
            .map_err(|_| ApiError::new(503, "shutting_down", "the store node is stopping"))?;
        answer
            .await
            .map_err(|_| ApiError::new(503, "shutting_down", "the store node is stopping"))?
    }

    /// Queue background work (lower priority than cashier requests) and wait for it, from a
    /// thread that may block (not from async code).
    pub fn submit_background_blocking(&self, job: Job) -> Result<Reply, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.background
            .blocking_send(Request {
                idempotency: None,
                job,
                reply,
            })
            .map_err(|_| ApiError::new(503, "shutting_down", "the store node is stopping"))?;
        answer
            .blocking_recv()
            .map_err(|_| ApiError::new(503, "shutting_down", "the store node is stopping"))?
    }

    /// Queue a cashier-priority write and wait for its committed reply (the job boxed here).
    pub async fn write(
        &self,
        idempotency: Option<Idempotency>,
        job: impl FnOnce(&Connection, &mut Local, u64) -> Result<Reply, ApiError> + Send + 'static,
    ) -> Result<Reply, ApiError> {
        self.submit(idempotency, Box::new(job)).await
    }

    pub async fn submit(
        &self,
        idempotency: Option<Idempotency>,
        job: Job,
    ) -> Result<Reply, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request {
                idempotency,
                job,
                reply,
            })
            .await
            .map_err(|_| ApiError::new(503, "shutting_down", "the store node is stopping"))?;
        answer
            .await
            .map_err(|_| ApiError::new(503, "shutting_down", "the store node is stopping"))?
    }
}

fn run(
    mut conn: Connection,
    mut local: Local,
    mut requests: mpsc::Receiver<Request>,
    mut background: mpsc::Receiver<Request>,
    own_seq: tokio::sync::watch::Sender<u64>,
) {
    // A small runtime of the writer's own, only to wait on both queues at once.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        tracing::error!("writer cannot start its runtime");
        return;
    };
    loop {
        let first = runtime.block_on(async {
            tokio::select! {
                biased;
                Some(request) = requests.recv() => Some(request),
                Some(request) = background.recv() => Some(request),
                else => None,
            }
        });
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < writer_batch_max {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let answers = commit_batch(&mut conn, &mut local, &mut batch);
        own_seq.send_if_modified(|seq| {
            let changed = *seq != local.own_seq_max();
            *seq = local.own_seq_max();
            changed
        });
        for (request, answer) in batch.into_iter().zip(answers) {
            // The client may have gone away; its write is durable all the same.
            let _ = request.reply.send(answer);
        }
    }
}

/// Run a batch in one transaction. Returns one answer per request, in order.
fn commit_batch(
    conn: &mut Connection,
    local: &mut Local,
    batch: &mut [Request],
) -> Vec<Result<Reply, ApiError>> {
    let failed = |e: &dyn std::fmt::Display, n: usize| -> Vec<Result<Reply, ApiError>> {
        let error = ApiError::internal(format!("commit failed: {e}"));
        (0..n).map(|_| Err(error.clone())).collect()
    };
    let now_ms = crate::now_ms();
    let start_mark = local.mark();
    let mut answers = Vec::with_capacity(batch.len());
    let mut transaction = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(transaction) => transaction,
        Err(e) => return failed(&e, batch.len()),
    };
    for request in batch.iter_mut() {
        let job: Job = std::mem::replace(&mut request.job, Box::new(|_, _, _| unreachable_job()));
        let mark = local.mark();
        let answer = match transaction.savepoint() {
            Ok(mut savepoint) => {
                let answer = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    execute(&savepoint, local, now_ms, request.idempotency.as_ref(), job)
                }))
                .unwrap_or_else(|_| Err(ApiError::internal("request handler panicked")));
                let kept = match &answer {
                    Ok(_) => savepoint.commit(),
                    Err(_) => savepoint.rollback(),
                };
                match kept {
                    Ok(()) => answer,
                    Err(e) => Err(ApiError::internal(format!("savepoint: {e}"))),
                }
            }
            Err(e) => Err(ApiError::internal(format!("savepoint: {e}"))),
        };
        if answer.is_err() {
            local.reset(mark);
        }
        answers.push(answer);
    }
    if let Err(e) = transaction.commit() {
        local.reset(start_mark);
        return failed(&e, batch.len());
    }
    answers
}

fn unreachable_job() -> Result<Reply, ApiError> {
    Err(ApiError::internal("request ran twice"))
}

fn execute(
    conn: &Connection,
    local: &mut Local,
    now_ms: u64,
    idempotency: Option<&Idempotency>,
    job: Job,
) -> Result<Reply, ApiError> {
    if let Some(idempotency) = idempotency {
        let earlier: Option<(String, u16, String)> = conn
            .query_row(
                "SELECT fingerprint, status, body FROM idempotency WHERE key = ?1",
                [&idempotency.key],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        if let Some((fingerprint, status, body)) = earlier {
            if fingerprint != idempotency.fingerprint {
                return Err(ApiError::new(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request",
                ));
            }
            let body = serde_json::from_str(&body).map_err(ApiError::internal)?;
            return Ok(Reply { status, body });
        }
    }
    local.refresh_rules(conn)?;
    let reply = job(conn, local, now_ms)?;
    if let Some(idempotency) = idempotency {
        conn.execute(
            "INSERT INTO idempotency (key, fingerprint, status, body, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            (
                &idempotency.key,
                &idempotency.fingerprint,
                reply.status,
                reply.body.to_string(),
                now_ms as i64,
            ),
        )?;
    }
    Ok(reply)
}
