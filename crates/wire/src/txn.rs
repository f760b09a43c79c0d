//! Transactions: compares, then one of two lists of operations, applied atomically in one log
//! entry at one revision (etcd's Txn). This is the one mechanism for conditional writes: a PUT
//! or DELETE with `If-Match` or `If-None-Match` is the transaction its [`Precondition`] stands
//! for (`Precondition::compares`), evaluated by the same code at apply.
//!
//! Everything here is part of the log format (postcard): variants are appended, never
//! reordered, and the two apply-time bounds below may never change, since every replica must
//! refuse the same transactions.
//!
//! [`Precondition`]: crate::types::Precondition

use std::fmt;

use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;

use crate::auth::Need;
use crate::error::Error;
use crate::snapshot::StoredValue;

/// Most compares, and most operations in each branch: etcd's default `--max-txn-ops` (Consul
/// allows 64). Each operation is a key read or written while the state machine waits.
pub const MAX_TXN_OPS: usize = 128;

/// Most value bytes the gets of one transaction may return: the answer travels back from the
/// leader in one peer message and is built in memory. As large as the largest value can be, so
/// a transaction can always read one key. Part of the format: a transaction over it is refused
/// at apply, on every replica alike, so this value never changes (it is not derived from the
/// value ceiling, which may).
pub const MAX_TXN_READ_BYTES: usize = 16 * 1024 * 1024;

/// Most keys the `delete_prefix` operations of one transaction may delete in all: the deletes
/// go into one write batch, applied while the state machine waits. A larger prefix is deleted
/// in parts (by longer prefixes). Part of the format, as [`MAX_TXN_READ_BYTES`].
pub const MAX_DELETE_PREFIX_KEYS: usize = 100_000;

// One get of the largest value fits, and the answer fits in a peer message (a value and a key
// at their ceilings with 1 MiB to spare: `quorumkv::limits::MAX_PEER_MESSAGE_BYTES`).
const _: () = assert!(MAX_TXN_READ_BYTES >= crate::limits::MAX_VALUE_BYTES_CEILING);
const _: () = assert!(MAX_TXN_READ_BYTES + MAX_TXN_OPS * 32 <= crate::limits::MAX_VALUE_BYTES_CEILING + 1024 * 1024);

/// How a compare relates the key's current value or revision to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Equal,
    NotEqual,
    /// Current < given (values compare bytewise).
    Less,
    /// Current > given.
    Greater,
}

impl Cmp {
    fn holds<T: Ord + ?Sized>(self, current: &T, given: &T) -> bool {
        match self {
            Cmp::Equal => current == given,
            Cmp::NotEqual => current != given,
            Cmp::Less => current < given,
            Cmp::Greater => current > given,
        }
    }

    /// The operator as the API spells it.
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Equal => "=",
            Cmp::NotEqual => "!=",
            Cmp::Less => "<",
            Cmp::Greater => ">",
        }
    }
}

/// What a compare looks at, with the value it is compared to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    Value(Bytes),
    ModRevision(u64),
    CreateRevision(u64),
    /// Whether the key exists (only `=` and `!=`).
    Exists(bool),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub cmp: Cmp,
    pub target: Target,
}

impl Compare {
    /// Whether it holds for the key's current record (`None`: absent). An absent key has
    /// modification and creation revision 0; a value compare with an absent key never holds,
    /// whatever the operator (both as etcd).
    pub fn holds(&self, current: Option<&StoredValue>) -> bool {
        match &self.target {
            Target::Value(given) => current.is_some_and(|stored| self.cmp.holds(&stored.value[..], &given[..])),
            Target::ModRevision(given) => self.cmp.holds(&current.map_or(0, |stored| stored.mod_revision), given),
            Target::CreateRevision(given) => self.cmp.holds(&current.map_or(0, |stored| stored.create_revision), given),
            Target::Exists(given) => self.cmp.holds(&current.is_some(), given),
        }
    }
}

/// One operation of a branch. A get sees the branch's earlier operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: String,
        value: Bytes,
    },
    Delete {
        key: String,
    },
    /// Every key that starts with `prefix` (`""`: every key), at most [`MAX_DELETE_PREFIX_KEYS`].
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    // Appended (postcard numbers variants).
    /// A put that attaches the key to a lease: an existing one, or a new one for this key
    /// alone (a per-key TTL). A plain put, or a delete, detaches the key from its lease.
    PutWithLease {
        key: String,
        value: Bytes,
        lease: crate::lease::LeaseRef,
    },
}

/// A transaction: if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// The result of one operation, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOpResult {
    /// The key's new modification revision (the transaction's revision).
    Put {
        revision: u64,
    },
    Delete {
        deleted: bool,
    },
    DeletePrefix {
        deleted: u64,
    },
    /// The key's record (`None`: absent).
    Get(Option<StoredValue>),
}

impl Txn {
    /// Checks the transaction against the node's limits before it is proposed (as
    /// `Command::check`): something to do, at most [`MAX_TXN_OPS`] compares and operations
    /// per branch, valid keys, no two `delete_prefix` of a branch overlapping, and its keys and
    /// values together within `max_key_bytes + max_value_bytes`, so one transaction's log entry
    /// is never larger than the largest single write's (every limit derived from that one, the
    /// peer message and the append batch, holds for it).
    pub fn check(&self, max_key_bytes: usize, max_value_bytes: usize) -> Result<(), Error> {
        if self.compare.is_empty() && self.success.is_empty() && self.failure.is_empty() {
            return Err(Error::InvalidParameter("a transaction needs at least one compare or operation".into()));
        }
        for (name, count) in
            [("compare", self.compare.len()), ("success", self.success.len()), ("failure", self.failure.len())]
        {
            if count > MAX_TXN_OPS {
                return Err(Error::InvalidParameter(format!(
                    "{name} has {count} entries; a transaction allows at most {MAX_TXN_OPS} per list"
                )));
            }
        }
        let mut payload_bytes = 0usize;
        for compare in &self.compare {
            crate::types::check_key(&compare.key, max_key_bytes)?;
            payload_bytes += compare.key.len();
            match &compare.target {
                Target::Value(value) => payload_bytes += value.len(),
                Target::Exists(_) if matches!(compare.cmp, Cmp::Less | Cmp::Greater) => {
                    return Err(Error::InvalidParameter(format!(
                        "compare of {:?}: existence takes = or !=, not {}",
                        compare.key,
                        compare.cmp.symbol()
                    )))
                }
                _ => {}
            }
        }
        for op in self.success.iter().chain(&self.failure) {
            match op {
                TxnOp::Put { key, value } | TxnOp::PutWithLease { key, value, .. } => {
                    if let TxnOp::PutWithLease { lease: crate::lease::LeaseRef::New { ttl_ms }, .. } = op {
                        crate::lease::check_ttl(*ttl_ms)?;
                    }
                    crate::types::check_key(key, max_key_bytes)?;
                    if value.len() > max_value_bytes {
                        return Err(Error::ValueTooLarge { size: value.len(), limit: max_value_bytes });
                    }
                    payload_bytes += key.len() + value.len();
                }
                TxnOp::Delete { key } | TxnOp::Get { key } => {
                    crate::types::check_key(key, max_key_bytes)?;
                    payload_bytes += key.len();
                }
                TxnOp::DeletePrefix { prefix } => {
                    // Empty is allowed (every key); otherwise the rules of a key.
                    if !prefix.is_empty() {
                        crate::types::check_key(prefix, max_key_bytes)?;
                    }
                    payload_bytes += prefix.len();
                }
            }
        }
        for (name, branch) in [("success", &self.success), ("failure", &self.failure)] {
            // Overlapping prefixes would scan the same keys again; one prefix covers both.
            let prefixes: Vec<&str> = branch
                .iter()
                .filter_map(|op| if let TxnOp::DeletePrefix { prefix } = op { Some(prefix.as_str()) } else { None })
                .collect();
            for (index, first) in prefixes.iter().enumerate() {
                if let Some(second) =
                    prefixes[index + 1..].iter().find(|p| p.starts_with(first) || first.starts_with(**p))
                {
                    return Err(Error::InvalidParameter(format!(
                        "{name} deletes the prefixes {first:?} and {second:?}, which overlap: keep the shorter"
                    )));
                }
            }
        }
        let limit = max_key_bytes + max_value_bytes;
        if payload_bytes > limit {
            return Err(Error::ValueTooLarge { size: payload_bytes, limit });
        }
        Ok(())
    }

    /// What the sender needs permission for: to read every key compared or got, to write
    /// every key put or deleted, and every key under a deleted prefix.
    pub fn needs(&self) -> Vec<Need<'_>> {
        let compared = self.compare.iter().map(|compare| Need::Read(&compare.key));
        let operated = self.success.iter().chain(&self.failure).map(|op| match op {
            TxnOp::Put { key, .. } | TxnOp::PutWithLease { key, .. } | TxnOp::Delete { key } => Need::Write(key),
            TxnOp::DeletePrefix { prefix } => Need::WritePrefix(prefix),
            TxnOp::Get { key } => Need::Read(key),
        });
        compared.chain(operated).collect()
    }
}

impl fmt::Display for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "txn ({} compares, {} success and {} failure operations)",
            self.compare.len(),
            self.success.len(),
            self.failure.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(create_revision: u64, mod_revision: u64, value: &'static [u8]) -> StoredValue {
        StoredValue { create_revision, mod_revision, value: Bytes::from_static(value) }
    }

    fn compare(cmp: Cmp, target: Target) -> Compare {
        Compare { key: "k".into(), cmp, target }
    }

    /// Goal: every target and operator compares as documented, an absent key has revisions 0
    /// and fails every value compare, and existence compares both ways.
    #[test]
    fn compares_hold_as_documented() {
        use Cmp::*;
        let present = stored(3, 7, b"b");
        let cases: &[(Compare, Option<&StoredValue>, bool)] = &[
            (compare(Equal, Target::ModRevision(7)), Some(&present), true),
            (compare(NotEqual, Target::ModRevision(7)), Some(&present), false),
            (compare(Less, Target::ModRevision(8)), Some(&present), true),
            (compare(Greater, Target::ModRevision(7)), Some(&present), false),
            (compare(Equal, Target::CreateRevision(3)), Some(&present), true),
            (compare(Greater, Target::CreateRevision(2)), Some(&present), true),
            (compare(Equal, Target::ModRevision(0)), None, true),
            (compare(Less, Target::CreateRevision(1)), None, true),
            (compare(Equal, Target::Value(Bytes::from_static(b"b"))), Some(&present), true),
            (compare(Less, Target::Value(Bytes::from_static(b"c"))), Some(&present), true),
            (compare(Greater, Target::Value(Bytes::from_static(b"a"))), Some(&present), true),
            (compare(Greater, Target::Value(Bytes::from_static(b"bb"))), Some(&present), false),
            (compare(NotEqual, Target::Value(Bytes::from_static(b"b"))), Some(&present), false),
            (compare(NotEqual, Target::Value(Bytes::from_static(b"x"))), None, false),
            (compare(Equal, Target::Value(Bytes::new())), None, false),
            (compare(Equal, Target::Exists(true)), Some(&present), true),
            (compare(Equal, Target::Exists(false)), None, true),
            (compare(NotEqual, Target::Exists(true)), None, true),
            (compare(Equal, Target::Exists(true)), None, false),
        ];
        for (compare, current, expected) in cases {
            assert_eq!(compare.holds(*current), *expected, "{compare:?} on {current:?}");
        }
    }

    /// Goal: the limits are checked before a transaction is proposed: operation counts, keys,
    /// the values' total, and no order on existence.
    #[test]
    fn transactions_are_checked_against_the_limits() {
        let put = |key: &str, size: usize| TxnOp::Put { key: key.into(), value: Bytes::from(vec![b'v'; size]) };
        let ok = Txn {
            compare: vec![compare(Cmp::Equal, Target::Exists(false))],
            success: vec![put("a", 10)],
            failure: vec![],
        };
        assert_eq!(ok.check(64, 100), Ok(()));
        let full = Txn { success: (0..MAX_TXN_OPS).map(|i| put(&format!("k{i}"), 0)).collect(), ..Txn::default() };
        assert_eq!(full.check(64, 1000), Ok(()));
        let mut over = full.clone();
        over.failure = (0..=MAX_TXN_OPS).map(|_| TxnOp::Get { key: "k".into() }).collect();
        assert!(matches!(over.check(64, 1000), Err(Error::InvalidParameter(_))));
        let too_large = Txn { success: vec![put("a", 60), put("b", 100), put("c", 2)], ..Txn::default() };
        assert_eq!(too_large.check(64, 100), Err(Error::ValueTooLarge { size: 165, limit: 164 }));
        let one_too_large = Txn { success: vec![put("a", 101)], ..Txn::default() };
        assert_eq!(one_too_large.check(64, 100), Err(Error::ValueTooLarge { size: 101, limit: 100 }));
        let many_keys =
            Txn { success: (0..3).map(|i| TxnOp::Get { key: format!("{i}").repeat(60) }).collect(), ..Txn::default() };
        assert_eq!(many_keys.check(64, 100), Err(Error::ValueTooLarge { size: 180, limit: 164 }), "keys count too");
        assert!(matches!(Txn::default().check(64, 100), Err(Error::InvalidParameter(_))), "an empty transaction");
        let prefix = |p: &str| TxnOp::DeletePrefix { prefix: p.into() };
        for overlapping in
            [vec![prefix("a/"), prefix("a/b")], vec![prefix("a/b"), prefix("a/")], vec![prefix(""), prefix("x")]]
        {
            let txn = Txn { failure: overlapping, ..Txn::default() };
            assert!(matches!(txn.check(64, 100), Err(Error::InvalidParameter(_))), "{txn:?}");
        }
        let apart = Txn { success: vec![prefix("a/"), prefix("b/")], failure: vec![prefix("a/")], ..Txn::default() };
        assert_eq!(apart.check(64, 100), Ok(()));
        let bad_key = Txn { failure: vec![TxnOp::Delete { key: String::new() }], ..Txn::default() };
        assert!(matches!(bad_key.check(64, 100), Err(Error::InvalidKey(_))));
        let long_key = Txn { success: vec![TxnOp::Get { key: "x".repeat(65) }], ..Txn::default() };
        assert!(matches!(long_key.check(64, 100), Err(Error::KeyTooLarge { .. })));
        let ordered_existence = Txn { compare: vec![compare(Cmp::Less, Target::Exists(true))], ..Txn::default() };
        assert!(matches!(ordered_existence.check(64, 100), Err(Error::InvalidParameter(_))));
        let everything = Txn { success: vec![TxnOp::DeletePrefix { prefix: String::new() }], ..Txn::default() };
        assert_eq!(everything.check(64, 100), Ok(()));
    }

    /// Goal: a transaction needs read on what it compares and gets, write on what it changes.
    #[test]
    fn a_transaction_needs_every_permission_it_uses() {
        let txn = Txn {
            compare: vec![Compare { key: "c".into(), cmp: Cmp::Equal, target: Target::Exists(true) }],
            success: vec![TxnOp::Put { key: "p".into(), value: Bytes::new() }, TxnOp::Get { key: "g".into() }],
            failure: vec![TxnOp::Delete { key: "d".into() }, TxnOp::DeletePrefix { prefix: "x/".into() }],
        };
        let needs: Vec<String> = txn.needs().iter().map(ToString::to_string).collect();
        assert_eq!(
            needs,
            [
                Need::Read("c").to_string(),
                Need::Write("p").to_string(),
                Need::Read("g").to_string(),
                Need::Write("d").to_string(),
                Need::WritePrefix("x/").to_string()
            ]
        );
    }
}
