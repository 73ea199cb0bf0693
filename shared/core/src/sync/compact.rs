//! Protocol 3: member changes in compact form.
//!
//! An automerge change chunk is `magic(4) checksum(4) type(1) len(uleb) body`, and its body
//! starts `deps(uleb n, n × 32-byte hash) actor(uleb len, bytes) seq(uleb) start_op(uleb)
//! time(sleb)`, followed by the message, the other actors and the op columns. Most of a small
//! profile edit is the parts no compression removes: the 32-byte hash of each dependency, the
//! checksum and the 16-byte actor. The compact form sends
//! - each dependency as the first [`dep_prefix_bytes`] bytes of its hash, which the receiver
//!   resolves among the changes it holds for that member (by causality it holds every change
//!   the sender's change depends on: the hub relays in log order and a store builds only on
//!   what it holds);
//! - no actor: it must be the origin store's actor ([`StoreId::actor_bytes`]), else the
//!   change travels whole;
//! - the time as a difference from the envelope's HLC wall time (they are the same clock
//!   reading in practice, so one byte);
//! - the checksum, which checks the re-expansion: the receiver rebuilds the chunk, computes
//!   its hash and accepts it only if the hash starts with the checksum sent. A prefix that
//!   matches several held changes is disambiguated the same way (each combination tried,
//!   at most [`expand_combinations_max`]);
//! - everything after the time verbatim.
//!
//! Safety: the sender compacts a change only if re-expanding the compact form with the
//! change's own dependency hashes gives back byte-identical bytes (otherwise it sends the
//! change whole), and the receiver refuses a compact change it cannot re-expand to a chunk
//! whose hash matches the checksum (nothing of the message is applied).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::hlc::HlcTimestamp;
use crate::id::StoreId;
use crate::op::{Envelope, Op, OpV1};

/// Bytes of each dependency hash that travel.
pub const dep_prefix_bytes: usize = 3;
/// Most combinations of prefix matches tried when re-expanding one change.
pub const expand_combinations_max: usize = 64;
/// Most dependencies a compact change may name (more travel whole).
pub const compact_deps_max: usize = 64;

const magic: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
const chunk_type_change: u8 = 1;

/// An operation in a protocol-3 batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireOp {
    Full(Envelope),
    Member(CompactMemberChange),
}

/// A relayed operation in a protocol-3 batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRelayedOp {
    pub hub_seq: u64,
    pub op: WireOp,
}

/// An `OpV1::MemberChange` operation whose change is in compact form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactMemberChange {
    pub origin: StoreId,
    pub seq: u64,
    pub hlc: HlcTimestamp,
    pub member_id: Uuid,
    /// The first bytes of each dependency's hash, in the change's order.
    pub deps: Vec<[u8; dep_prefix_bytes]>,
    /// The change's checksum (the first 4 bytes of its hash).
    pub checksum: [u8; 4],
    pub change_seq: u64,
    pub start_op: u64,
    /// The change's timestamp minus the envelope's HLC wall time.
    pub time_delta: i64,
    /// The change body after its timestamp, verbatim.
    pub rest: Vec<u8>,
}

impl CompactMemberChange {
    pub fn member_id(&self) -> Uuid {
        self.member_id
    }
}

/// The parts of a change chunk the compact form treats apart.
struct Parts<'a> {
    checksum: [u8; 4],
    deps: Vec<[u8; 32]>,
    actor: &'a [u8],
    change_seq: u64,
    start_op: u64,
    time: i64,
    rest: &'a [u8],
}

fn read_uleb(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn read_sleb(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let mut value: i64 = 0;
    let mut shift = 0u32;
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        if shift >= 64 {
            return None;
        }
        value |= i64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            if shift < 64 && byte & 0x40 != 0 {
                value |= -1i64 << shift;
            }
            return Some(value);
        }
    }
}

fn write_uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, len: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(len)?;
    let slice = bytes.get(*at..end)?;
    *at = end;
    Some(slice)
}

fn parse(change: &[u8]) -> Option<Parts<'_>> {
    if change.get(..4)? != magic {
        return None;
    }
    let checksum: [u8; 4] = change.get(4..8)?.try_into().ok()?;
    if *change.get(8)? != chunk_type_change {
        return None;
    }
    let mut at = 9;
    let len = usize::try_from(read_uleb(change, &mut at)?).ok()?;
    if change.len().checked_sub(at)? != len {
        return None;
    }
    let count = usize::try_from(read_uleb(change, &mut at)?).ok()?;
    if count > compact_deps_max {
        return None;
    }
    let mut deps = Vec::with_capacity(count);
    for _ in 0..count {
        deps.push(take(change, &mut at, 32)?.try_into().ok()?);
    }
    let actor_len = usize::try_from(read_uleb(change, &mut at)?).ok()?;
    let actor = take(change, &mut at, actor_len)?;
    let change_seq = read_uleb(change, &mut at)?;
    let start_op = read_uleb(change, &mut at)?;
    let time = read_sleb(change, &mut at)?;
    Some(Parts {
        checksum,
        deps,
        actor,
        change_seq,
        start_op,
        time,
        rest: change.get(at..)?,
    })
}

/// Build the chunk bytes from the compact form, the dependency hashes and the actor.
fn assemble(compact: &CompactMemberChange, deps: &[[u8; 32]], actor: &[u8]) -> Option<Vec<u8>> {
    let time = (compact.hlc.wall_ms as i64).checked_add(compact.time_delta)?;
    let mut body = Vec::with_capacity(40 + deps.len() * 32 + actor.len() + compact.rest.len());
    write_uleb(&mut body, deps.len() as u64);
    for dep in deps {
        body.extend_from_slice(dep);
    }
    write_uleb(&mut body, actor.len() as u64);
    body.extend_from_slice(actor);
    write_uleb(&mut body, compact.change_seq);
    write_uleb(&mut body, compact.start_op);
    write_sleb(&mut body, time);
    body.extend_from_slice(&compact.rest);
    let mut chunk = Vec::with_capacity(body.len() + 14);
    chunk.extend_from_slice(&magic);
    chunk.extend_from_slice(&compact.checksum);
    chunk.push(chunk_type_change);
    write_uleb(&mut chunk, body.len() as u64);
    chunk.extend_from_slice(&body);
    Some(chunk)
}

fn prefix(hash: &[u8; 32]) -> [u8; dep_prefix_bytes] {
    let mut out = [0u8; dep_prefix_bytes];
    out.copy_from_slice(&hash[..dep_prefix_bytes]);
    out
}

/// The wire form of an operation: a member change in compact form when it has one that
/// re-expands to the same bytes, anything else as is.
pub fn compact(envelope: &Envelope) -> WireOp {
    try_compact(envelope).map_or_else(|| WireOp::Full(envelope.clone()), WireOp::Member)
}

fn try_compact(envelope: &Envelope) -> Option<CompactMemberChange> {
    let Op::V1(OpV1::MemberChange { member_id, change }) = &envelope.op else {
        return None;
    };
    let parts = parse(change)?;
    let actor = envelope.origin.actor_bytes();
    if parts.actor != actor.as_slice() {
        return None;
    }
    let compact = CompactMemberChange {
        origin: envelope.origin.clone(),
        seq: envelope.seq,
        hlc: envelope.hlc,
        member_id: *member_id,
        deps: parts.deps.iter().map(prefix).collect(),
        checksum: parts.checksum,
        change_seq: parts.change_seq,
        start_op: parts.start_op,
        time_delta: parts
            .time
            .checked_sub(i64::try_from(envelope.hlc.wall_ms).ok()?)?,
        rest: parts.rest.to_vec(),
    };
    // Only if it re-expands to exactly the bytes we hold.
    (assemble(&compact, &parts.deps, &actor)? == *change).then_some(compact)
}

/// The hash of a change chunk as automerge computes it, if the bytes are a change.
pub fn change_hash(change: &[u8]) -> Option<[u8; 32]> {
    automerge::Change::try_from(change).ok().map(|c| c.hash().0)
}

/// Re-expand a compact member change. `held` are the hashes of the changes the receiver
/// holds for this member (including those received earlier in the same batch). Returns the
/// operation with the exact original change bytes, or why it cannot.
pub fn expand(compact: &CompactMemberChange, held: &[[u8; 32]]) -> Result<Envelope, String> {
    let name = format!("member change {}/{}", compact.origin, compact.seq);
    if compact.deps.len() > compact_deps_max {
        return Err(format!("{name} names too many dependencies"));
    }
    let candidates: Vec<Vec<&[u8; 32]>> = compact
        .deps
        .iter()
        .map(|p| {
            held.iter()
                .filter(|h| h[..dep_prefix_bytes] == p[..])
                .collect()
        })
        .collect();
    let mut combinations: usize = 1;
    for (dep, found) in compact.deps.iter().zip(&candidates) {
        if found.is_empty() {
            return Err(format!(
                "{name} depends on a change {} not held here",
                hex(dep)
            ));
        }
        combinations = combinations.saturating_mul(found.len());
    }
    if combinations > expand_combinations_max {
        return Err(format!("{name}: dependencies are ambiguous"));
    }
    let actor = compact.origin.actor_bytes();
    let mut choice = vec![0usize; candidates.len()];
    for _ in 0..combinations {
        let deps: Vec<[u8; 32]> = choice
            .iter()
            .zip(&candidates)
            .map(|(&i, found)| *found[i])
            .collect();
        let bytes = assemble(compact, &deps, &actor).ok_or_else(|| format!("{name}: bad time"))?;
        if let Ok(change) = automerge::Change::try_from(bytes.as_slice())
            && change.hash().0[..4] == compact.checksum
            && change.deps().iter().map(|h| h.0).eq(deps.iter().copied())
        {
            return Ok(Envelope {
                origin: compact.origin.clone(),
                seq: compact.seq,
                hlc: compact.hlc,
                op: Op::V1(OpV1::MemberChange {
                    member_id: compact.member_id,
                    change: bytes,
                }),
            });
        }
        // Next combination (odometer).
        for (slot, found) in choice.iter_mut().zip(&candidates) {
            *slot += 1;
            if *slot < found.len() {
                break;
            }
            *slot = 0;
        }
    }
    Err(format!(
        "{name} does not re-expand to a change matching its checksum"
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hashes of the member changes among `ops` for `member` (the batch context).
pub fn hashes_in<'a>(ops: impl Iterator<Item = &'a Envelope>, member: Uuid) -> Vec<[u8; 32]> {
    ops.filter_map(|envelope| match &envelope.op {
        Op::V1(OpV1::MemberChange { member_id, change }) if *member_id == member => {
            change_hash(change)
        }
        _ => None,
    })
    .collect()
}
