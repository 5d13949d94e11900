//! The password-hashing pool: every Argon2id hash and verification of the node runs here.
//!
//! Argon2id is the one expensive thing an unauthenticated client can make the node do, and
//! each run holds `argon2_memory_kib` of memory. Unbounded (one blocking-pool thread per
//! request) a log-in flood turns into gigabytes, so the work goes to a fixed set of
//! `argon2_concurrency` worker threads fed by a queue of at most `argon2_queue` jobs. A job
//! that finds the queue full is refused at once ([`Busy`]), so a flood gets quick
//! `unavailable` answers instead of piling up.
//!
//! Invariant: at most `argon2_concurrency` hashes run at once, always on the same threads,
//! so the memory Argon2 holds (including what the allocator keeps per thread after a run) is
//! bounded by `argon2_concurrency × argon2_memory_kib` plus the queued requests (each a
//! password of at most 1 KiB). Jobs whose requester has gone away are skipped.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

/// The queue is full: the caller should answer `unavailable` and have the client retry.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    /// Every worker is busy and the queue is full.
    #[error("password hashing is saturated")]
    Busy,
    /// The pool has stopped or the hash failed.
    #[error("password hashing failed")]
    Failed,
}

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Option<String>>,
    },
    Verify {
        password: String,
        phc: String,
        reply: oneshot::Sender<bool>,
    },
}

/// A fixed pool of Argon2id worker threads behind a bounded queue.
#[derive(Debug)]
pub(crate) struct Hasher {
    jobs: SyncSender<Job>,
}

impl Hasher {
    /// Starts `threads` workers (at least one) hashing with `argon2`, with room for `queue`
    /// waiting jobs. The workers stop when the `Hasher` is dropped.
    pub(crate) fn start(argon2: Argon2<'static>, threads: usize, queue: usize) -> Self {
        let (jobs, rx) = sync_channel(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let (argon2, rx) = (argon2.clone(), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&argon2, &rx));
            if let Err(err) = spawned {
                tracing::error!(cause = %err, "cannot start a password-hashing thread");
            }
        }
        Self { jobs }
    }

    /// Hashes a password to a PHC string.
    pub(crate) async fn hash(&self, password: String) -> Result<String, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        answer.await.ok().flatten().ok_or(HashError::Failed)
    }

    /// Whether `password` matches the PHC string `phc`.
    pub(crate) async fn verify(&self, password: String, phc: String) -> Result<bool, HashError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Verify {
            password,
            phc,
            reply,
        })?;
        answer.await.map_err(|_| HashError::Failed)
    }

    fn submit(&self, job: Job) -> Result<(), HashError> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("chat_password_hash_rejected_total").increment(1);
                Err(HashError::Busy)
            }
            Err(TrySendError::Disconnected(_)) => Err(HashError::Failed),
        }
    }
}

fn work(argon2: &Argon2<'static>, jobs: &Mutex<Receiver<Job>>) {
    let mut worker = Worker {
        argon2: argon2.clone(),
        memory: Vec::new(),
    };
    loop {
        // The lock is held only while waiting for the next job, never while hashing.
        let job = {
            let rx = jobs.lock().unwrap_or_else(|e| e.into_inner());
            rx.recv()
        };
        let Ok(job) = job else { return };
        match job {
            Job::Hash { password, reply } => {
                if !reply.is_closed() {
                    let _ = reply.send(worker.hash(password.as_bytes()));
                }
            }
            Job::Verify {
                password,
                phc,
                reply,
            } => {
                if !reply.is_closed() {
                    let _ = reply.send(worker.verify(password.as_bytes(), &phc));
                }
            }
        }
    }
}

/// One hashing thread's hasher and its Argon2 memory, allocated once and reused: allocating
/// and freeing `argon2_memory_kib` per hash fragments the allocator's heaps, and the
/// resident size then grows with every hash instead of staying at one block set per thread.
struct Worker {
    argon2: Argon2<'static>,
    memory: Vec<Block>,
}

impl Worker {
    /// The first `count` blocks of this thread's memory, grown if a stored hash asks for
    /// more than the configured cost (it then stays at that size).
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.memory.len() < count {
            self.memory.resize(count, Block::default());
        }
        self.memory.get_mut(..count).unwrap_or_default()
    }

    /// A PHC string for `password` with a fresh 16-byte salt and the configured costs.
    fn hash(&mut self, password: &[u8]) -> Option<String> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).ok()?;
        let mut out = [0u8; 32];
        let argon2 = self.argon2.clone();
        let params = argon2.params().clone();
        argon2
            .hash_password_into_with_memory(
                password,
                &salt,
                &mut out,
                self.blocks(params.block_count()),
            )
            .ok()?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).ok()?,
            salt: Some(Salt::new(&salt).ok()?),
            hash: Some(Output::new(&out).ok()?),
        };
        Some(phc.to_string())
    }

    /// Whether `password` matches `phc`, computed with the costs stored in it and compared
    /// in constant time.
    fn verify(&mut self, password: &[u8], phc: &str) -> bool {
        let Ok(hash) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
            return false;
        };
        let Ok(version) = hash.version.map_or(Ok(Version::V0x13), Version::try_from) else {
            return false;
        };
        let Ok(params) = Params::try_from(&hash) else {
            return false;
        };
        let count = params.block_count();
        let argon2 = Argon2::new(algorithm, version, params);
        let mut out = vec![0u8; expected.len()];
        if argon2
            .hash_password_into_with_memory(password, salt, &mut out, self.blocks(count))
            .is_err()
        {
            return false;
        }
        Output::new(&out).is_ok_and(|computed| computed == *expected)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_a_full_queue_is_refused() {
        let argon2 = crate::auth::argon2(8, 1).unwrap();
        let hasher = Hasher::start(argon2, 1, 1);
        let phc = hasher.hash("correct horse".into()).await.unwrap();
        assert!(
            hasher
                .verify("correct horse".into(), phc.clone())
                .await
                .unwrap()
        );
        assert!(!hasher.verify("wrong horse".into(), phc).await.unwrap());
        assert!(!hasher.verify("x".into(), "not a phc".into()).await.unwrap());
        // Hashes made by the argon2 crate's own hasher (as stored before this pool) verify.
        let stored = {
            use argon2::password_hash::PasswordHasher;
            crate::auth::argon2(16, 2)
                .unwrap()
                .hash_password(b"old password")
                .unwrap()
                .to_string()
        };
        assert!(
            hasher
                .verify("old password".into(), stored.clone())
                .await
                .unwrap()
        );
        assert!(!hasher.verify("new password".into(), stored).await.unwrap());
        // And the pool's hashes are standard PHC strings the crate's verifier accepts.
        let ours = hasher.hash("correct horse".into()).await.unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        {
            use argon2::password_hash::PasswordVerifier;
            let parsed = PasswordHash::new(&ours).unwrap();
            let argon2 = crate::auth::argon2(8, 1).unwrap();
            assert!(argon2.verify_password(b"correct horse", &parsed).is_ok());
        }
        // No worker can take jobs while the queue is full: a zero-thread pool is not
        // possible, so fill the queue faster than one worker drains it.
        let many: Vec<_> = (0..64)
            .map(|_| hasher.hash("correct horse".into()))
            .collect();
        let results = futures::future::join_all(many).await;
        assert!(results.iter().any(|r| matches!(r, Err(HashError::Busy))));
    }
}
