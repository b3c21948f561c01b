//! Server harnesses: real servers started on free loopback ports.

pub mod redis;
