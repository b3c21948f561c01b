//! The conformance suite on a single Redis: once without authentication
//! (or on `QUORATE_REDIS_URL` when set), once over TLS (`rediss://`, the
//! server verified against a test CA) with an ACL user and password, and
//! once through `redis+sentinel://` (primary, replica, three sentinels).

use std::sync::{Arc, Mutex};

use quorate_conformance::harness::faults::{RedisFaults, SentinelFaults};
use quorate_conformance::harness::redis::{
    AclUser, RedisOptions, RedisServer, RedisTarget, SentinelCluster,
};
use quorate_conformance::target::ServerFaults;
use quorate_conformance::Target;

/// Keeps the servers alive until the suite ends (killed on drop).
#[allow(dead_code)]
struct RedisHandle(Vec<Arc<Mutex<RedisServer>>>, Arc<Mutex<SentinelCluster>>);

fn target(label: &str, url: &str, faults: Option<Arc<dyn ServerFaults>>) -> Target {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut t = Target::new(label, format!("{url}{sep}ttl=2s"));
    t.faults = faults;
    t
}

fn main() {
    // SAFETY: set before any thread is started.
    std::env::set_var("QUORATE_AGENT", env!("CARGO_BIN_EXE_quorate-agent"));
    quorate_conformance::runner::test_main(|| async {
        let mut servers = Vec::new();
        let mut targets = Vec::new();
        match RedisTarget::from_env_or_start().expect("start redis-server") {
            RedisTarget::External(url) => targets.push(target("redis", &url, None)),
            RedisTarget::Local(server) => {
                let url = server.url();
                let server = Arc::new(Mutex::new(server));
                let faults = Arc::new(RedisFaults::new(server.clone(), false));
                targets.push(target("redis", &url, Some(faults)));
                servers.push(server);
            }
        }
        let acl = RedisServer::start_with(RedisOptions {
            acl_user: Some(AclUser {
                name: "quorate".into(),
                password: "conformance-secret".into(),
            }),
            tls: true,
            ..RedisOptions::default()
        })
        .expect("start redis-server with TLS and an ACL user");
        let url = acl.tls_url().expect("a TLS port");
        let acl = Arc::new(Mutex::new(acl));
        let faults = Arc::new(RedisFaults::new(acl.clone(), true));
        targets.push(target("rediss-acl", &url, Some(faults)));
        servers.push(acl);
        let cluster = SentinelCluster::start().expect("start a sentinel-managed primary");
        let url = cluster.url();
        let cluster = Arc::new(Mutex::new(cluster));
        let faults = Arc::new(SentinelFaults::new(cluster.clone()));
        targets.push(target("redis-sentinel", &url, Some(faults)));
        (targets, RedisHandle(servers, cluster))
    })
}
