//! Block-wise uploads (Block1, RFC 7959) being assembled: bounded in count, per peer and in
//! bytes; past a bound the oldest transfer is dropped (and counted), so a peer that opens
//! transfers and never finishes them costs only its own.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use actors::metrics::{COAP_BLOCK_BYTES, COAP_EVICTED};
use metrics::{counter, gauge};

/// A Block1/Block2 option value: block number, more flag, size exponent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    /// `None` for SZX 7, which is reserved (a 4.00, RFC 7959 §2.2). The length (0-3 bytes) is
    /// checked with the other options.
    pub fn parse(bytes: &[u8]) -> Option<Block> {
        let v = bytes
            .iter()
            .take(3)
            .fold(0u32, |v, b| (v << 8) | u32::from(*b));
        let szx = (v & 0x7) as u8;
        (szx < 7).then_some(Block {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx,
        })
    }

    pub fn size(self) -> usize {
        16 << self.szx
    }

    pub fn encode(self) -> Vec<u8> {
        uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }
}

/// An option's unsigned integer in the fewest bytes (zero is no bytes).
pub fn uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// A transfer: the peer and the routing key it uploads to (at most 255 bytes, a Uri-Path
/// segment).
pub type TransferKey = (SocketAddr, String);

/// What one transfer is charged besides its data: its key and the bookkeeping around it.
const TRANSFER_OVERHEAD: usize = 160;

/// Why a block is not taken.
#[derive(Debug, PartialEq)]
pub enum BlockError {
    /// Out of order, or its transfer is gone: 4.08, start again from block 0.
    Incomplete,
    /// The whole would be over this many bytes: 4.13 with Size1.
    TooLarge(usize),
}

/// Uploads being assembled.
pub struct Blocks {
    max: usize,
    max_per_peer: usize,
    max_bytes: usize,
    by_key: HashMap<TransferKey, Vec<u8>>,
    /// Oldest first; always exactly the keys of `by_key`.
    order: VecDeque<TransferKey>,
    per_peer: HashMap<SocketAddr, usize>,
    /// Charged bytes of all transfers: their buffers' capacity plus overhead.
    bytes: usize,
}

impl Blocks {
    pub fn new(max: usize, max_per_peer: usize, max_bytes: usize) -> Blocks {
        Blocks {
            max: max.max(1),
            max_per_peer: max_per_peer.max(1),
            max_bytes,
            by_key: HashMap::new(),
            order: VecDeque::new(),
            per_peer: HashMap::new(),
            bytes: 0,
        }
    }

    /// Adds one block of `payload`; the whole payload once the last block is in. `limit`: the
    /// largest whole payload accepted.
    pub fn add(
        &mut self,
        key: TransferKey,
        block: Block,
        payload: &[u8],
        limit: usize,
    ) -> Result<Option<Vec<u8>>, BlockError> {
        if block.num == 0 {
            self.start(key.clone());
        }
        let Some(data) = self.by_key.get_mut(&key) else {
            return Err(BlockError::Incomplete);
        };
        let offset = (block.num as usize).saturating_mul(block.size());
        if offset != data.len() || (block.more && payload.len() != block.size()) {
            self.remove(&key);
            return Err(BlockError::Incomplete);
        }
        // One transfer may never take more than all of them may.
        let limit = limit.min(
            self.max_bytes
                .saturating_sub(TRANSFER_OVERHEAD + key.1.len()),
        );
        if data.len() + payload.len() > limit {
            self.remove(&key);
            return Err(BlockError::TooLarge(limit));
        }
        let before = data.capacity();
        data.extend_from_slice(payload);
        self.bytes += data.capacity() - before;
        if block.more {
            self.shrink(Some(&key));
            self.publish();
            return Ok(None);
        }
        Ok(Some(self.remove(&key).unwrap_or_default()))
    }

    /// Starts (or restarts) a transfer, dropping this peer's oldest past the per-peer bound
    /// and the oldest of all past the overall one.
    fn start(&mut self, key: TransferKey) {
        self.remove(&key);
        let peer = key.0;
        while self.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            let Some(oldest) = self.order.iter().find(|k| k.0 == peer).cloned() else {
                break;
            };
            self.evict(&oldest);
        }
        while self.order.len() >= self.max {
            let Some(oldest) = self.order.front().cloned() else {
                break;
            };
            self.evict(&oldest);
        }
        self.bytes += TRANSFER_OVERHEAD + key.1.len();
        *self.per_peer.entry(peer).or_default() += 1;
        self.by_key.insert(key.clone(), Vec::new());
        self.order.push_back(key.clone());
        self.shrink(Some(&key));
        self.publish();
    }

    /// Drops the oldest transfers other than `keep` while over the byte bound.
    fn shrink(&mut self, keep: Option<&TransferKey>) {
        while self.bytes > self.max_bytes {
            let Some(oldest) = self.order.iter().find(|k| Some(*k) != keep).cloned() else {
                break;
            };
            self.evict(&oldest);
        }
    }

    fn evict(&mut self, key: &TransferKey) {
        if self.remove(key).is_some() {
            counter!(COAP_EVICTED, "what" => "block_transfer").increment(1);
        }
    }

    /// Ends a transfer; what it had assembled.
    fn remove(&mut self, key: &TransferKey) -> Option<Vec<u8>> {
        let data = self.by_key.remove(key)?;
        self.order.retain(|k| k != key);
        self.bytes = self
            .bytes
            .saturating_sub(data.capacity() + TRANSFER_OVERHEAD + key.1.len());
        if let Some(n) = self.per_peer.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&key.0);
            }
        }
        self.publish();
        Some(data)
    }

    fn publish(&self) {
        gauge!(COAP_BLOCK_BYTES).set(self.bytes as f64);
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.order.len(), self.by_key.len());
        assert_eq!(self.per_peer.values().sum::<usize>(), self.order.len());
        let charged: usize = self
            .by_key
            .iter()
            .map(|(k, d)| d.capacity() + TRANSFER_OVERHEAD + k.1.len())
            .sum();
        assert_eq!(charged, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16, routing_key: &str) -> TransferKey {
        (
            SocketAddr::from(([127, 0, 0, 1], port)),
            routing_key.to_owned(),
        )
    }

    fn block(num: u32, more: bool, szx: u8) -> Block {
        Block { num, more, szx }
    }

    #[test]
    fn block_options_round_trip() {
        for b in [
            block(0, true, 2),
            block(5, false, 6),
            block(70_000, true, 0),
        ] {
            assert_eq!(Block::parse(&b.encode()), Some(b));
        }
        assert_eq!(block(0, false, 0).encode(), Vec::<u8>::new());
        assert_eq!(Block::parse(&[0x0f]), None, "szx 7 is reserved");
        assert_eq!(block(1, true, 2).size(), 64);
        assert_eq!(
            Block::parse(&[0xff, 0xff, 0xf6]),
            Some(block(0xf_ffff, false, 6))
        );
    }

    #[test]
    fn a_transfer_is_assembled_in_order() {
        let mut blocks = Blocks::new(10, 10, 1 << 20);
        let k = key(1, "key");
        assert_eq!(
            blocks.add(k.clone(), block(0, true, 0), &[1; 16], 100),
            Ok(None)
        );
        assert_eq!(
            blocks.add(k.clone(), block(1, true, 0), &[2; 16], 100),
            Ok(None)
        );
        let whole = blocks.add(k.clone(), block(2, false, 0), &[3; 5], 100);
        assert_eq!(whole.map(|w| w.map(|w| w.len())), Ok(Some(37)));
        blocks.check_invariants();
        assert_eq!(blocks.bytes, 0);
        // Out of order, absurdly far, a transfer that never started.
        assert_eq!(
            blocks.add(k.clone(), block(0xf_ffff, true, 6), &[0; 1024], 100),
            Err(BlockError::Incomplete)
        );
        blocks.add(k.clone(), block(0, true, 0), &[1; 16], 100).ok();
        assert_eq!(
            blocks.add(k.clone(), block(2, true, 0), &[1; 16], 100),
            Err(BlockError::Incomplete)
        );
        assert!(blocks.by_key.is_empty(), "a failed transfer is forgotten");
        // Past the limit.
        blocks.add(k.clone(), block(0, true, 0), &[1; 16], 20).ok();
        assert_eq!(
            blocks.add(k.clone(), block(1, true, 0), &[1; 16], 20),
            Err(BlockError::TooLarge(20))
        );
        blocks.check_invariants();
        assert_eq!(blocks.bytes, 0);
    }

    #[test]
    fn transfers_are_bounded_overall_per_peer_and_in_bytes() {
        let mut blocks = Blocks::new(4, 100, usize::MAX);
        for port in 0..100u16 {
            blocks
                .add(key(port, "k"), block(0, true, 0), &[0; 16], 100)
                .ok();
            if port % 2 == 0 {
                // A transfer that fails part-way is forgotten entirely.
                blocks
                    .add(key(port, "k"), block(5, true, 0), &[0; 16], 100)
                    .ok();
            }
            blocks.check_invariants();
            assert!(blocks.order.len() <= 4);
        }
        assert!(blocks.by_key.contains_key(&key(99, "k")));
        assert!(!blocks.by_key.contains_key(&key(1, "k")));

        let mut blocks = Blocks::new(100, 3, usize::MAX);
        for i in 0..10 {
            blocks
                .add(key(1, &format!("k{i}")), block(0, true, 0), &[0; 16], 100)
                .ok();
        }
        blocks
            .add(key(2, "other"), block(0, true, 0), &[0; 16], 100)
            .ok();
        blocks.check_invariants();
        assert_eq!(
            blocks.per_peer[&key(1, "").0],
            3,
            "one peer keeps its newest three"
        );
        assert!(blocks.by_key.contains_key(&key(1, "k9")));
        assert!(blocks.by_key.contains_key(&key(2, "other")));

        let max_bytes = 4 * (1024 + TRANSFER_OVERHEAD + 1);
        let mut blocks = Blocks::new(100, 100, max_bytes);
        for port in 0..10 {
            blocks
                .add(key(port, "k"), block(0, true, 6), &[0; 1024], 1 << 20)
                .ok();
            blocks.check_invariants();
            assert!(blocks.bytes <= max_bytes);
        }
        assert_eq!(blocks.order.len(), 4);
        assert!(blocks.by_key.contains_key(&key(9, "k")));
        // One transfer is never allowed past the whole byte bound.
        let mut blocks = Blocks::new(100, 100, 2048);
        let k = key(1, "k");
        blocks
            .add(k.clone(), block(0, true, 6), &[0; 1024], 1 << 20)
            .ok();
        assert!(matches!(
            blocks.add(k, block(1, true, 6), &[0; 1024], 1 << 20),
            Err(BlockError::TooLarge(_))
        ));
    }
}
