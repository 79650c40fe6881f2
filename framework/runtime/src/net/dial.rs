//! Dialling the members: one task a wanted replica, redialling with
//! backoff for as long as the membership wants it at that address.

use super::{dial_handshake, Connection, Kind, Net};
use ed25519_dalek::SigningKey;
use palisade_core::ReplicaId;
use palisade_wire::address::HostPort;
use palisade_wire::envelope::Role;
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Keeps a connection to every wanted replica: starts a dialer for each
/// one that becomes wanted (or moves), as the membership changes.
pub async fn dial_members(net: Arc<Net>, key: Arc<SigningKey>) {
    let mut changes = net.wanted.subscribe();
    let mut running: BTreeMap<ReplicaId, HostPort> = BTreeMap::new();
    loop {
        let wanted = changes.borrow_and_update().clone();
        running.retain(|id, address| wanted.get(id) == Some(address));
        for (id, address) in wanted {
            if running.insert(id, address.clone()).as_ref() != Some(&address) {
                actix_rt::spawn(dial_while_wanted(net.clone(), id, address, key.clone()));
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps a connection to replica `to` at `address` open, redialling with
/// backoff, for as long as it is wanted there. A host name is looked up
/// at each attempt, so a peer that restarts under a new IP address (a
/// rescheduled pod) is found again.
async fn dial_while_wanted(net: Arc<Net>, to: ReplicaId, address: HostPort, key: Arc<SigningKey>) {
    let wanted = || net.wanted.borrow().get(&to) == Some(&address);
    let wake = Arc::new(tokio::sync::Notify::new());
    net.redial.write().insert(to, wake.clone());
    let mut backoff = Duration::from_millis(50);
    while wanted() {
        let keyring = net.keyring.read().clone();
        let attempt = async {
            let mut stream = TcpStream::connect(address.as_str()).await?;
            palisade_wire::address::tune_connection(&stream);
            let session = dial_handshake(&mut stream, Role::Replica(net.me), &key, to, &keyring).await?;
            Ok::<_, io::Error>((stream, session))
        };
        if let Ok(Ok((stream, session))) = tokio::time::timeout(net.handshake_timeout, attempt).await {
            backoff = Duration::from_millis(50);
            let addr = Connection::start(net.clone(), Kind::ToReplica(to), stream, session);
            while addr.connected() && wanted() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = wake.notified() => {}
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
