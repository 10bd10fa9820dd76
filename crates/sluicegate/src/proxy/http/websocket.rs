//! WebSocket (and any HTTP/1.1 `Upgrade`) through the proxy: the upgrade request is forwarded on a
//! dedicated upstream connection, and once both sides answered `101 Switching Protocols` the two
//! connections are joined and bytes relayed both ways until either side closes or the tunnel sits
//! idle for the listener's `idle_timeout` ([`relay::both_ways`], as for layer 4). The tunnel
//! lives on its own task, so a config reload never tears it down.

use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::server::h1::{ClientUpgrade, Upgraded};
use crate::proxy::relay::{self, RelayError};

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    Closed {
        from_client: u64,
        from_upstream: u64,
    },
    Idle,
    Failed(String),
}

/// Waits for both upgrades, then relays bytes until close or `idle` without traffic.
pub async fn relay(client: ClientUpgrade, upstream: OnUpgrade, idle: Duration) -> TunnelEnd {
    let (client, upstream) = tokio::join!(client.ready(), upstream);
    let Some(Upgraded(client)) = client else {
        return TunnelEnd::Failed("the client connection was not handed over".to_string());
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(e) => return TunnelEnd::Failed(e.to_string()),
    };
    let mut upstream = TokioIo::new(upstream);
    let mut client = client;
    match relay::both_ways(&mut client, &mut upstream, idle).await {
        Ok(relayed) => TunnelEnd::Closed {
            from_client: relayed.forward,
            from_upstream: relayed.backward,
        },
        Err(RelayError::Idle) => TunnelEnd::Idle,
        Err(RelayError::Io(e)) => TunnelEnd::Failed(e.to_string()),
    }
}
