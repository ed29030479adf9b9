//! Queue allocation strategies (reference §10.2): every member of a group computes its own
//! share from the same sorted queue list and sorted member list, so the shares are disjoint
//! and cover every queue without any coordination.

/// How a clustering group splits a topic's queues among its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocateStrategy {
    /// `AllocateMessageQueueAveragely`: contiguous blocks, the first `n % c` members one more.
    #[default]
    Averagely,
    /// `AllocateMessageQueueAveragelyByCircle`: queue `i` to member `i % c`.
    AveragelyByCircle,
    /// `AllocateMessageQueueConsistentHash`: a hash ring with `virtual_nodes` points per
    /// member, so a member joining or leaving moves few queues. The ring is hashed with
    /// FNV-1a, not Java's MD5: don't mix CoreMQ and Java consumers in one group with it.
    ConsistentHash { virtual_nodes: u32 },
}

impl AllocateStrategy {
    /// Upstream's name for the strategy (`allocateMessageQueueStrategy.getName()`).
    pub fn name(&self) -> &'static str {
        match self {
            AllocateStrategy::Averagely => "AVG",
            AllocateStrategy::AveragelyByCircle => "AVG_BY_CIRCLE",
            AllocateStrategy::ConsistentHash { .. } => "CONSISTENT_HASH",
        }
    }

    /// The queues of `all` that member `me` of `cids` consumes. Both lists must be sorted
    /// the same way by every member; `key` names a queue for hashing.
    pub fn allocate<T: Clone>(
        &self,
        all: &[T],
        cids: &[String],
        me: &str,
        key: impl Fn(&T) -> String,
    ) -> Vec<T> {
        let Some(i) = cids.iter().position(|c| c == me) else {
            return Vec::new();
        };
        match *self {
            AllocateStrategy::Averagely => averagely(all, cids.len(), i),
            AllocateStrategy::AveragelyByCircle => all
                .iter()
                .enumerate()
                .filter(|(q, _)| q % cids.len() == i)
                .map(|(_, t)| t.clone())
                .collect(),
            AllocateStrategy::ConsistentHash { virtual_nodes } => {
                let mut ring: Vec<(u64, usize)> = cids
                    .iter()
                    .enumerate()
                    .flat_map(|(ci, c)| {
                        (0..virtual_nodes.max(1)).map(move |v| (fnv1a(&format!("{c}-{v}")), ci))
                    })
                    .collect();
                ring.sort_unstable();
                all.iter()
                    .filter(|t| {
                        let h = fnv1a(&key(t));
                        let at = ring.partition_point(|(p, _)| *p < h) % ring.len();
                        ring[at].1 == i
                    })
                    .cloned()
                    .collect()
            }
        }
    }
}

fn averagely<T: Clone>(all: &[T], c: usize, i: usize) -> Vec<T> {
    let n = all.len();
    let m = n % c;
    let size = if n <= c {
        1
    } else if m > 0 && i < m {
        n / c + 1
    } else {
        n / c
    };
    let start = if m > 0 && i < m {
        i * size
    } else {
        i * size + m
    };
    let count = size.min(n.saturating_sub(start));
    all.iter().skip(start).take(count).cloned().collect()
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn share(s: AllocateStrategy, n: u32, cids: &[String], me: &str) -> Vec<u32> {
        let q: Vec<u32> = (0..n).collect();
        s.allocate(&q, cids, me, |q| format!("q{q}"))
    }

    #[test]
    fn averagely_matches_the_reference_examples() {
        let c = ids(&["c0", "c1", "c2"]);
        let a = AllocateStrategy::Averagely;
        assert_eq!(share(a, 8, &c, "c0"), vec![0, 1, 2]);
        assert_eq!(share(a, 8, &c, "c1"), vec![3, 4, 5]);
        assert_eq!(share(a, 8, &c, "c2"), vec![6, 7]);
        assert_eq!(share(a, 2, &c, "c2"), Vec::<u32>::new());
        assert_eq!(share(a, 2, &c, "zz"), Vec::<u32>::new());
        assert_eq!(share(a, 8, &ids(&["a", "b"]), "b"), vec![4, 5, 6, 7]);
    }

    #[test]
    fn by_circle_deals_queues_round_robin() {
        let c = ids(&["c0", "c1", "c2"]);
        let a = AllocateStrategy::AveragelyByCircle;
        assert_eq!(share(a, 8, &c, "c0"), vec![0, 3, 6]);
        assert_eq!(share(a, 8, &c, "c2"), vec![2, 5]);
    }

    /// Every strategy: shares are disjoint, cover every queue, and members beyond the queue
    /// count (for the even strategies) get nothing.
    #[test]
    fn every_strategy_partitions_the_queues() {
        for s in [
            AllocateStrategy::Averagely,
            AllocateStrategy::AveragelyByCircle,
            AllocateStrategy::ConsistentHash { virtual_nodes: 10 },
        ] {
            for n in [1u32, 3, 4, 8, 17] {
                for members in 1usize..7 {
                    let c: Vec<String> = (0..members).map(|i| format!("10.0.0.{i}@1")).collect();
                    let mut got: Vec<u32> = c.iter().flat_map(|me| share(s, n, &c, me)).collect();
                    got.sort();
                    assert_eq!(got, (0..n).collect::<Vec<_>>(), "{s:?} n={n} c={members}");
                    if s != (AllocateStrategy::ConsistentHash { virtual_nodes: 10 }) {
                        let empty = c.iter().filter(|me| share(s, n, &c, me).is_empty());
                        assert_eq!(empty.count(), members.saturating_sub(n as usize));
                    }
                }
            }
        }
    }

    #[test]
    fn consistent_hash_moves_few_queues_when_a_member_joins() {
        let s = AllocateStrategy::ConsistentHash { virtual_nodes: 10 };
        let before = ids(&["a", "b", "c"]);
        let after = ids(&["a", "b", "c", "d"]);
        let moved = ["a", "b", "c"]
            .iter()
            .map(|m| {
                let (x, y) = (share(s, 64, &before, m), share(s, 64, &after, m));
                x.iter().filter(|q| !y.contains(q)).count()
            })
            .sum::<usize>();
        // Only queues taken by the newcomer move.
        assert_eq!(moved, share(s, 64, &after, "d").len());
    }
}
