//! Real servers for tests, started from their binaries on free loopback
//! ports in temporary directories, with fault injection (kill, pause,
//! resume, restart). Each server module also honours an environment
//! variable that points the tests at external servers instead.

pub mod etcd;
pub mod process;
