//! What every service must satisfy for replication to work, checked the
//! same way for each: run [`check`] with operations that exercise it.
//!
//! - **Determinism:** two replicas that execute the same batches get the
//!   same results and the same snapshot bytes after every batch (checkpoint
//!   digests are taken over them).
//! - **Snapshots round-trip:** a replica that installs another's snapshot
//!   has the same snapshot, and from there executes exactly as it does.
//! - **Parts round-trip, and changes are reported:** a replica that
//!   installs another's parts (what state transfer does) has the same
//!   state digest and executes exactly as it does; every part whose digest
//!   changed since the last checkpoint is among the changed parts the
//!   service reports.
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
            proposed_in: palisade_core::ViewNo(0),
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
    if a.snapshot() != b.snapshot() || a.state_digest() != b.state_digest() {
        return Err("two fresh services have different snapshots".into());
    }
    let mut d: Option<Executor<S>> = None;
    a.take_changed();
    let mut checkpoint: Vec<_> = (0..a.part_count()).map(|i| a.part_digest(i)).collect();
    for (i, batch) in batches.iter().enumerate() {
        let seq = SeqNo(i as u64 + 1);
        let ra = a.execute_batch(seq, ViewNo(0), batch);
        let rb = b.execute_batch(seq, ViewNo(3), batch);
        if ra != rb {
            return Err(format!("batch {seq}: the same batch gave different results on two replicas"));
        }
        if a.snapshot() != b.snapshot() || a.state_digest() != b.state_digest() {
            return Err(format!("batch {seq}: the same batches left two replicas with different snapshots"));
        }
        let changed = a.take_changed();
        for p in 0..a.part_count() {
            let now = a.part_digest(p);
            if now != checkpoint[p as usize] && !changed.contains(&p) {
                return Err(format!("batch {seq}: part {p} changed but was not reported changed"));
            }
            checkpoint[p as usize] = now;
        }
        if let Some(c) = &mut c {
            if c.execute_batch(seq, ViewNo(0), batch) != ra || c.snapshot() != a.snapshot() {
                return Err(format!("batch {seq}: a replica restored from a snapshot executes differently"));
            }
        }
        if let Some(d) = &mut d {
            if d.execute_batch(seq, ViewNo(0), batch) != ra || d.state_digest() != a.state_digest() {
                return Err(format!("batch {seq}: a replica restored from parts executes differently"));
            }
        }
        if c.is_none() && i == batches.len() / 2 {
            let mut fresh = Executor::new(make(), WINDOW);
            for p in 0..a.part_count() {
                let part = a.part(p);
                if part.digest() != a.part_digest(p) {
                    return Err(format!("part {p}'s digest is not the digest of its records"));
                }
                let records = part.records();
                fresh.install_part(p, records).map_err(|e| format!("part {p} of its own does not install: {e}"))?;
            }
            if fresh.state_digest() != a.state_digest() {
                return Err("installed parts do not give the same state digest".into());
            }
            d = Some(fresh);
            let mut fresh = Executor::new(make(), WINDOW);
            let snap = a.snapshot();
            fresh.install(&snap).map_err(|e| format!("a snapshot of its own does not install: {e}"))?;
            if fresh.snapshot() != snap {
                return Err("an installed snapshot does not snapshot to the same bytes".into());
            }
            c = Some(fresh);
        }
        let before = (a.snapshot(), a.state_digest());
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
        if (a.snapshot(), a.state_digest()) != before {
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

    /// Two parts; forgets to report changes to the second.
    #[derive(Default)]
    struct Forgetful([Vec<u8>; 2], bool);
    impl Service for Forgetful {
        fn execute(&mut self, _: &ExecContext, op: &[u8]) -> Bytes {
            let p = usize::from(op.first().is_some_and(|b| b % 2 == 1));
            self.0[p].extend_from_slice(op);
            self.1 |= p == 0;
            Bytes::new()
        }
        fn execute_unordered(&self, _: &[u8]) -> Bytes {
            Bytes::new()
        }
        fn snapshot(&self) -> Bytes {
            Bytes::from([self.0[0].clone(), self.0[1].clone()].concat())
        }
        fn install(&mut self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn parted(&self) -> Option<&dyn palisade_core::state::PartedState> {
            Some(self)
        }
        fn parted_mut(&mut self) -> Option<&mut dyn palisade_core::state::PartedState> {
            Some(self)
        }
    }
    impl palisade_core::state::PartedState for Forgetful {
        fn part_count(&self) -> u32 {
            2
        }
        fn take_changed(&mut self) -> Vec<u32> {
            if std::mem::take(&mut self.1) {
                vec![0]
            } else {
                vec![]
            }
        }
        fn part(&self, i: u32) -> palisade_core::state::Part {
            palisade_core::state::Part::from_records(vec![Bytes::from(self.0[i as usize].clone())])
        }
        fn install_part(&mut self, i: u32, records: Vec<Bytes>) -> Result<(), String> {
            self.0[i as usize] = records.concat();
            Ok(())
        }
    }

    #[test]
    fn a_parted_service_that_forgets_to_report_a_change_is_caught() {
        let ops: Vec<Bytes> = (0..12u8).map(|i| Bytes::from(vec![i])).collect();
        assert!(check(Forgetful::default, &ops, &[]).unwrap_err().contains("not reported changed"));
    }
}
