//! What every service must satisfy for replication to work, checked the
//! same way for each: run [`check`] with operations that exercise it.
//!
//! - **Determinism:** two replicas that execute the same batches get the
//!   same results and the same snapshot bytes after every batch (checkpoint
//!   digests are taken over them).
//! - **Snapshots round-trip:** a replica that installs another's snapshot
//!   has the same snapshot, and from there executes exactly as it does.
//! - **Reads change nothing:** unordered operations leave the snapshot as
//!   it was.
//! - **Bad input is an error, not a panic:** a corrupt snapshot is refused
//!   or installed, never a crash.

use bytes::Bytes;
use palisade_core::{Batch, ClientId, Executor, Request, RequestId, SeqNo, Service, ViewNo};

/// A conformance failure, in words.
pub type Failure = String;

/// Executes `ordered` (in batches of a few, from a few clients) on two
/// fresh services made by `make`, installs a snapshot into a third halfway,
/// and runs every `unordered` operation between batches.
pub fn check<S: Service>(make: impl Fn() -> S, ordered: &[Bytes], unordered: &[Bytes]) -> Result<(), Failure> {
    const WINDOW: u64 = 64;
    let mut a = Executor::new(make(), WINDOW);
    let mut b = Executor::new(make(), WINDOW);
    let mut c: Option<Executor<S>> = None;
    let batches: Vec<Batch> = ordered
        .chunks(3)
        .enumerate()
        .map(|(i, ops)| Batch {
            timestamp_ms: 1_000 + i as u64,
            requests: ops
                .iter()
                .enumerate()
                .map(|(j, op)| Request {
                    client: ClientId(1 + (j as u64 % 2)),
                    id: RequestId(1 + i as u64 * 3 + j as u64),
                    read_only: false,
                    operation: op.clone(),
                    auth: Bytes::new(),
                })
                .collect(),
        })
        .collect();
    if a.snapshot() != b.snapshot() {
        return Err("two fresh services have different snapshots".into());
    }
    for (i, batch) in batches.iter().enumerate() {
        let seq = SeqNo(i as u64 + 1);
        let ra = a.execute_batch(seq, ViewNo(0), batch);
        let rb = b.execute_batch(seq, ViewNo(3), batch);
        if ra != rb {
            return Err(format!("batch {seq}: the same batch gave different results on two replicas"));
        }
        if a.snapshot() != b.snapshot() {
            return Err(format!("batch {seq}: the same batches left two replicas with different snapshots"));
        }
        if let Some(c) = &mut c {
            if c.execute_batch(seq, ViewNo(0), batch) != ra || c.snapshot() != a.snapshot() {
                return Err(format!("batch {seq}: a replica restored from a snapshot executes differently"));
            }
        } else if i == batches.len() / 2 {
            let mut fresh = Executor::new(make(), WINDOW);
            let snap = a.snapshot();
            fresh.install(&snap).map_err(|e| format!("a snapshot of its own does not install: {e}"))?;
            if fresh.snapshot() != snap {
                return Err("an installed snapshot does not snapshot to the same bytes".into());
            }
            c = Some(fresh);
        }
        let before = a.snapshot();
        for op in unordered {
            let read = Request {
                client: ClientId(9),
                id: RequestId(1),
                read_only: true,
                operation: op.clone(),
                auth: Bytes::new(),
            };
            let _ = a.execute_read_only(&read);
        }
        if a.snapshot() != before {
            return Err(format!("after batch {seq}: an unordered operation changed the state"));
        }
    }
    for garbage in [&b"\xff\xff\xff\xff"[..], &b""[..], &[0u8; 64][..]] {
        let mut fresh = Executor::new(make(), WINDOW);
        let installed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fresh.install(garbage)));
        if installed.is_err() {
            return Err("a corrupt snapshot made the service panic".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Log;
    use palisade_core::ExecContext;

    #[test]
    fn a_correct_service_passes() {
        let ops: Vec<Bytes> = (0..20u8).map(|i| Bytes::from(vec![i])).collect();
        assert_eq!(check(Log::default, &ops, &[Bytes::new()]), Ok(()));
    }

    /// Reads a clock it should not: replicas disagree.
    #[derive(Default)]
    struct Wallclock(u64);
    impl Service for Wallclock {
        fn execute(&mut self, ctx: &ExecContext, _: &[u8]) -> Bytes {
            // The view differs between replicas; a service must not let it in.
            self.0 += ctx.view.0;
            Bytes::new()
        }
        fn execute_unordered(&self, _: &[u8]) -> Bytes {
            Bytes::new()
        }
        fn snapshot(&self) -> Bytes {
            Bytes::copy_from_slice(&self.0.to_le_bytes())
        }
        fn install(&mut self, s: &[u8]) -> Result<(), String> {
            self.0 = u64::from_le_bytes(s.try_into().map_err(|_| "eight bytes".to_string())?);
            Ok(())
        }
    }

    #[test]
    fn a_service_that_lets_the_view_in_is_caught() {
        let ops = vec![Bytes::from_static(b"x"); 6];
        assert!(check(Wallclock::default, &ops, &[]).unwrap_err().contains("different snapshots"));
    }
}
