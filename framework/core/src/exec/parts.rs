//! The executor's state as parts: part 0 is the executor's own (its
//! settings and the client table, one record per client), then come the
//! service's parts. A service without parts of its own is one part whose
//! one record is its snapshot.

use super::{ClientRecord, Executor, Service};
use crate::state::{state_digest, Part, RecordSource};
use crate::types::{ClientId, Digest};
use bytes::Bytes;
use std::sync::Arc;

/// The client table as it was at a checkpoint; records encoded on demand.
struct ClientTable {
    settings: Bytes,
    clients: Vec<(ClientId, Arc<ClientRecord>)>,
}

impl RecordSource for ClientTable {
    fn record(&self, j: usize) -> Bytes {
        match j {
            0 => self.settings.clone(),
            j => {
                let (client, rec) = &self.clients[j - 1];
                encode_client(*client, rec)
            }
        }
    }
}

fn encode_client(client: ClientId, rec: &ClientRecord) -> Bytes {
    Bytes::from(postcard::to_allocvec(&(client, rec)).expect("client records encode"))
}

impl<S: Service> Executor<S> {
    /// How many parts the state has: the client table, then the service's.
    pub fn part_count(&self) -> u32 {
        1 + self.service.parted().map_or(1, |p| p.part_count())
    }

    /// The parts changed since the last call, for the next checkpoint.
    pub fn take_changed(&mut self) -> Vec<u32> {
        for client in std::mem::take(&mut self.dirty) {
            match self.clients.get(&client) {
                Some(rec) => {
                    let digest = Digest::of(&encode_client(client, rec));
                    self.frozen.insert(client, (digest, Arc::new(rec.clone())));
                }
                None => {
                    self.frozen.remove(&client);
                }
            }
        }
        // The settings record changes with every batch's timestamp.
        let mut changed = vec![0];
        match self.service.parted_mut() {
            Some(p) => changed.extend(p.take_changed().into_iter().map(|i| i + 1)),
            None => changed.push(1),
        }
        changed
    }

    /// The window and timestamp, then the membership when the cluster can
    /// be reconfigured (absent otherwise, so such states hash as before).
    fn settings(&self) -> Bytes {
        let mut out = postcard::to_allocvec(&(self.window, self.last_timestamp_ms)).expect("settings encode");
        if let Some(r) = &self.reconfig {
            out = postcard::to_extend(r, out).expect("membership encodes");
        }
        Bytes::from(out)
    }

    /// Part `i` as it is now.
    pub fn part(&self, i: u32) -> Part {
        if i == 0 {
            return self.client_part();
        }
        match self.service.parted() {
            Some(p) => p.part(i - 1),
            None => Part::from_records(vec![self.service.snapshot()]),
        }
    }

    /// Part `i`'s digest as it is now.
    pub fn part_digest(&self, i: u32) -> Digest {
        match (i, self.service.parted()) {
            (0, _) | (_, None) => self.part(i).digest(),
            (i, Some(p)) => p.part_digest(i - 1),
        }
    }

    /// The digest of the whole state as it is now: what a checkpoint here
    /// would certify.
    pub fn state_digest(&self) -> Digest {
        let parts: Vec<Digest> = (0..self.part_count()).map(|i| self.part_digest(i)).collect();
        state_digest(&parts)
    }

    fn client_part(&self) -> Part {
        let settings = self.settings();
        let mut digests = Vec::with_capacity(self.clients.len() + 1);
        let mut clients = Vec::with_capacity(self.clients.len());
        digests.push(Digest::of(&settings));
        for (client, rec) in &self.clients {
            let frozen = match self.frozen.get(client) {
                Some((d, f)) if !self.dirty.contains(client) => (*d, f.clone()),
                _ => (Digest::of(&encode_client(*client, rec)), Arc::new(rec.clone())),
            };
            digests.push(frozen.0);
            clients.push((*client, frozen.1));
        }
        Part::new(digests, Arc::new(ClientTable { settings, clients }))
    }

    /// Replaces part `i` with `records`, each already checked against a
    /// certified digest.
    pub fn install_part(&mut self, i: u32, records: Vec<Bytes>) -> Result<(), String> {
        if i == 0 {
            return self.install_client_part(records);
        }
        match self.service.parted_mut() {
            Some(p) => p.install_part(i - 1, records),
            None => match <[Bytes; 1]>::try_from(records) {
                Ok([snapshot]) => self.service.install(&snapshot),
                Err(r) => Err(format!("the service's part has {} records, not one", r.len())),
            },
        }
    }

    fn install_client_part(&mut self, records: Vec<Bytes>) -> Result<(), String> {
        let mut it = records.into_iter();
        let settings = it.next().ok_or("the client table has no settings record")?;
        let ((window, last_timestamp_ms), rest): ((u64, u64), &[u8]) =
            postcard::take_from_bytes(&settings).map_err(|e| format!("client table settings: {e}"))?;
        let reconfig = match rest {
            [] => None,
            rest => Some(postcard::from_bytes(rest).map_err(|e| format!("client table membership: {e}"))?),
        };
        let mut clients = std::collections::BTreeMap::new();
        for r in it {
            let (client, rec): (ClientId, ClientRecord) =
                postcard::from_bytes(&r).map_err(|e| format!("client table record: {e}"))?;
            clients.insert(client, rec);
        }
        self.window = window.max(1);
        self.last_timestamp_ms = last_timestamp_ms;
        self.clients = clients;
        self.reconfig = reconfig;
        self.forget_frozen();
        Ok(())
    }

    /// After an install: every client is re-hashed at the next checkpoint.
    pub(super) fn forget_frozen(&mut self) {
        self.frozen.clear();
        self.dirty = self.clients.keys().copied().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{batch, req, Log};
    use super::*;
    use crate::types::{SeqNo, ViewNo};

    #[test]
    fn parts_installed_elsewhere_give_the_same_state_digest_and_behaviour() {
        let mut a = Executor::new(Log::default(), 4);
        a.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'a'), req(2, 9, b'b')]));
        assert_eq!(a.take_changed(), vec![0, 1]);
        let mut b = Executor::new(Log::default(), 4);
        assert_ne!(a.state_digest(), b.state_digest());
        for i in 0..a.part_count() {
            let part = a.part(i);
            assert_eq!(part.digest(), a.part_digest(i));
            let records = part.records();
            b.install_part(i, records).unwrap();
        }
        assert_eq!(a.state_digest(), b.state_digest());
        let out = b.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(2, 9, b'b')]));
        assert!(!out[0].fresh, "the client table came with the parts");
        assert!(b.install_part(0, vec![]).is_err());
        assert!(b.install_part(1, vec![Bytes::new(), Bytes::new()]).is_err());
    }

    #[test]
    fn the_client_part_re_hashes_only_changed_clients_and_sees_changes_not_yet_taken() {
        let mut ex = Executor::new(Log::default(), 4);
        ex.execute_batch(SeqNo(1), ViewNo(0), &batch(vec![req(1, 1, b'a')]));
        ex.take_changed();
        let before = ex.part_digest(0);
        ex.execute_batch(SeqNo(2), ViewNo(0), &batch(vec![req(1, 2, b'b')]));
        // Not taken yet, but the digest already reflects it.
        assert_ne!(ex.part_digest(0), before);
        let live = ex.part_digest(0);
        ex.take_changed();
        assert_eq!(ex.part_digest(0), live);
    }
}
