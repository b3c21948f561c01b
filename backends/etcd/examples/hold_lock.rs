//! Hold an etcd lock until killed: `hold_lock <URL> <lock name>`.
//!
//! Prints `locked <fence>` once the lock is granted, then keeps the session
//! alive forever. The fault tests run it as a separate process and kill it
//! with SIGKILL to measure how soon the lock is free again.

use quorate_core::Config;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: hold_lock <URL> <lock name>");
        std::process::exit(2);
    };
    let coord = quorate_etcd::connect(&Config::parse(&url)?).await?;
    let session = coord.session().await?;
    let guard = session.mutex(&name).lock().await?;
    println!("locked {}", guard.fence());
    let reason = guard.lost().await;
    eprintln!("lock lost: {reason}");
    std::process::exit(1);
}
