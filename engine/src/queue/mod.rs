//! Queue backends behind the `Producer`/`Consumer` ports. Each backend has the same shape: its
//! config in `crate::config`, a constructor returning a producer and consumers.

pub mod kafka;
pub mod memory;
