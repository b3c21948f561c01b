//! Real servers for the conformance suite, started from their binaries on
//! free loopback ports in temporary directories, and a TCP proxy that can
//! cut or black-hole a client's connection.

pub mod etcd;
pub mod faketime;
pub mod faults;
pub mod fenced;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod zookeeper;

pub use process::{free_port, ServerProcess};
pub use proxy::{PeerLinks, ProxyMode, TcpProxy};
