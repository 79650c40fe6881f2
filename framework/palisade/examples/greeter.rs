//! The README's service, run for real: four replicas in this process,
//! one client, one ordered and one read-only call.
//!
//! `cargo run --example greeter -p palisade`

use bytes::Bytes;
use palisade::client::{Client, ClientOptions};
use palisade::core::{ExecContext, Membership, Mode, ReplicaId, Service};
use palisade::runtime::{spawn_replica, RuntimeConfig};
use palisade::wire::config::{ClusterConfig, ReplicaInfo};
use palisade::wire::keys::generate;
use rand_core::OsRng;

#[derive(Default)]
struct Greeter {
    greeted: u64,
}

impl Service for Greeter {
    fn execute(&mut self, ctx: &ExecContext, op: &[u8]) -> Bytes {
        self.greeted += 1;
        format!("hello {} (#{} at {})", String::from_utf8_lossy(op), self.greeted, ctx.timestamp_ms).into()
    }
    fn execute_unordered(&self, _op: &[u8]) -> Bytes {
        self.greeted.to_string().into()
    }
    fn snapshot(&self) -> Bytes {
        self.greeted.to_le_bytes().to_vec().into()
    }
    fn install(&mut self, s: &[u8]) -> Result<(), String> {
        self.greeted = u64::from_le_bytes(s.try_into().map_err(|_| "bad snapshot")?);
        Ok(())
    }
}

fn main() {
    let keys: Vec<_> = (0..4).map(|_| generate(&mut OsRng)).collect();
    let cluster = ClusterConfig {
        cluster_id: 1,
        membership: Membership::with_size(4, Mode::Bft).unwrap(),
        request_auth: palisade::wire::RequestAuth::Authenticators,
        requests_to_all: false,
        max_frame_bytes: 1 << 20,
        view_manager: generate(&mut OsRng).verifying_key(),
        replicas: (0..4u32)
            .map(|i| {
                let address = std::net::SocketAddr::from(([127, 0, 0, 1], 7400 + i as u16)).into();
                (ReplicaId(i), ReplicaInfo { address, public_key: keys[i as usize].verifying_key() })
            })
            .collect(),
    };
    let replicas: Vec<_> = (0..4)
        .map(|i| {
            let cfg = RuntimeConfig::for_cluster(&cluster);
            spawn_replica(&cluster, ReplicaId(i), keys[i as usize].clone(), Greeter::default(), cfg).unwrap()
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = Client::connect(cluster.clone(), generate(&mut OsRng), ClientOptions::default());
        let greeting = client.invoke_ordered(Bytes::from("world")).await.unwrap();
        println!("{}", String::from_utf8_lossy(&greeting));
        let count = client.invoke_unordered(Bytes::new()).await.unwrap();
        println!("greeted {} time(s)", String::from_utf8_lossy(&count));
    });
    for r in replicas {
        r.stop();
    }
}
