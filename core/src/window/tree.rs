//! Counted B+-tree over ring-buffer slots, ordered by the slots' values.
//!
//! Leaves hold `u16` slot numbers sorted by value (values live only in the ring, as
//! order keys) plus a 16-bit order-preserving fingerprint per slot, so a leaf is
//! searched with SIMD counts instead of a chain of ring look-ups; internal nodes hold
//! child ids, cumulative entry counts and separator keys. A slot → leaf index and
//! parent links let a removal start at its leaf without searching. Fixed fan-out
//! makes insert, remove, select and rank O(log W) with short, cache-friendly,
//! branch-free node scans. Nodes live in two arenas with intrusive free lists; arena
//! capacity grows lazily and never beyond what a full window can need (every
//! non-root leaf is at least half full).
//!
//! Equal values are interchangeable, so their relative order inside the tree is
//! arbitrary: no query result depends on it.

use std::ops::Range;

/// Slots per leaf.
const LEAF_CAP: usize = 64;
/// Minimum slots in a non-root leaf.
const LEAF_MIN: usize = LEAF_CAP / 2;
/// Children per internal node.
const NODE_CAP: usize = 32;
/// Minimum children of a non-root internal node.
const NODE_MIN: usize = NODE_CAP / 2;
/// Tree height bound for up to 65 535 entries (the actual worst case is 3).
const MAX_HEIGHT: usize = 6;
/// No node / unused slot or child (never a valid id or slot).
const NIL: u16 = u16::MAX;
/// Unused separator (above every key).
const NO_SEP: u64 = u64::MAX;
/// Separator before the first child (below every key: order keys of non-NaN values
/// are never 0).
const FIRST_SEP: u64 = 0;
/// Unused cumulative count (above every rank).
const NO_END: u16 = u16::MAX;

/// Length of the prefix of the sorted `a` on which `pred` holds; branch-free.
#[inline(always)]
fn sorted_prefix(a: &[u64; NODE_CAP], pred: impl Fn(u64) -> bool) -> usize {
    let mut base = 0;
    // Constant trip count: unrolled into conditional moves rather than a branch
    // that would mispredict half the time.
    for shift in (0..NODE_CAP.trailing_zeros()).rev() {
        let half = 1 << shift;
        let t = usize::from(pred(a[base + half - 1]));
        base += half & t.wrapping_neg();
    }
    base + usize::from(pred(a[base]))
}

/// Index of the single element of `items` equal to `x` (0 if none); branch-free.
#[inline(always)]
fn find(items: &[u16], x: u16) -> usize {
    let mut pos = 0u16;
    for (j, &v) in items.iter().enumerate() {
        pos |= (j as u16) & 0u16.wrapping_sub(u16::from(v == x));
    }
    usize::from(pos)
}

/// `u64` mask of the `bits` leading bits.
#[inline(always)]
fn high_mask(bits: u32) -> u64 {
    u64::MAX.checked_shl(64 - bits).unwrap_or(0)
}

/// Shifts `a[pos..len]` up by one and stores `v` at `pos`.
#[inline(always)]
fn shift_in(a: &mut [u16; LEAF_CAP], len: usize, pos: usize, v: u16) {
    a.copy_within(pos..len, pos + 1);
    a[pos] = v;
}

/// Removes `a[pos]` from `a[..len]`, shifting the rest down and padding with `pad`.
#[inline(always)]
fn shift_out(a: &mut [u16; LEAF_CAP], len: usize, pos: usize, pad: u16) {
    a.copy_within(pos + 1..len, pos);
    a[len - 1] = pad;
}

/// Number of elements of `a` below `x` (or at most `x` if `inclusive`); branch-free
/// and vectorised.
#[inline(always)]
fn count_up_to(a: &[u16; LEAF_CAP], x: u16, inclusive: bool) -> usize {
    let n: u16 = if inclusive {
        a.iter().map(|&v| u16::from(v <= x)).sum()
    } else {
        a.iter().map(|&v| u16::from(v < x)).sum()
    };
    usize::from(n)
}

#[derive(Clone)]
struct Leaf {
    len: u16,
    parent: u16,
    /// Number of leading key bits (at most 48) shared by every entry.
    shared: u32,
    /// Those shared bits (the rest zero).
    prefix: u64,
    /// Fingerprints: the 16 key bits after the shared prefix, an order-preserving
    /// summary searched with SIMD before the ring is consulted; `u16::MAX` past `len`.
    fps: [u16; LEAF_CAP],
    /// Sorted by value; `NIL` past `len`.
    slots: [u16; LEAF_CAP],
}

impl Leaf {
    const EMPTY: Leaf = Leaf {
        len: 0,
        parent: NIL,
        shared: 0,
        prefix: 0,
        fps: [u16::MAX; LEAF_CAP],
        slots: [NIL; LEAF_CAP],
    };

    #[inline(always)]
    fn len(&self) -> usize {
        usize::from(self.len)
    }

    #[inline(always)]
    fn entries(&self) -> &[u16] {
        &self.slots[..self.len()]
    }

    #[inline(always)]
    fn fingerprint(&self, k: u64) -> u16 {
        ((k << self.shared) >> 48) as u16
    }

    /// Whether key `k` shares the leaf's prefix (so its fingerprint is comparable).
    #[inline(always)]
    fn covers(&self, k: u64) -> bool {
        k & high_mask(self.shared) == self.prefix
    }

    /// Recomputes the fingerprints for `shared` leading bits equal to those of `like`.
    fn encode(&mut self, keys: &[u64], shared: u32, like: u64) {
        self.shared = shared;
        self.prefix = like & high_mask(shared);
        for j in 0..self.len() {
            self.fps[j] = self.fingerprint(keys[usize::from(self.slots[j])]);
        }
    }

    /// Leading bits shared by the entries and `k` (at most 48).
    fn shared_with(&self, keys: &[u64], k: u64) -> u32 {
        match self.entries() {
            [] => 48,
            [first, .., last] | [first @ last] => {
                let (lo, hi) = (keys[usize::from(*first)], keys[usize::from(*last)]);
                (lo ^ hi)
                    .leading_zeros()
                    .min((lo ^ k).leading_zeros())
                    .min(48)
            }
        }
    }

    /// Number of entries whose key is below `k`.
    #[inline(always)]
    fn lower_bound(&self, keys: &[u64], k: u64) -> usize {
        let n = self.len();
        if !self.covers(k) {
            // Every entry shares a prefix that `k` lacks: all are above or all below.
            return if k < self.prefix { 0 } else { n };
        }
        let f = self.fingerprint(k);
        let below = count_up_to(&self.fps, f, false);
        let tied = count_up_to(&self.fps, f, true).min(n);
        below + self.slots[below..tied].partition_point(|&s| keys[usize::from(s)] < k)
    }

    /// Inserts `slot` (key `k`) at its sorted place, widening the fingerprints if needed.
    #[inline(always)]
    fn insert(&mut self, keys: &[u64], slot: u16, k: u64) {
        if !self.covers(k) {
            self.encode(keys, self.shared_with(keys, k), k);
        }
        let pos = self.lower_bound(keys, k);
        let f = self.fingerprint(k);
        let len = self.len();
        shift_in(&mut self.fps, len, pos, f);
        shift_in(&mut self.slots, len, pos, slot);
        self.len += 1;
    }

    #[inline(always)]
    fn remove_at(&mut self, pos: usize) {
        let len = self.len();
        shift_out(&mut self.fps, len, pos, u16::MAX);
        shift_out(&mut self.slots, len, pos, NIL);
        self.len -= 1;
    }

    /// Replaces the entries with `src` (sorted) and re-derives the fingerprints.
    fn set(&mut self, keys: &[u64], src: &[u16]) {
        self.slots[..src.len()].copy_from_slice(src);
        self.slots[src.len()..].fill(NIL);
        self.fps[src.len()..].fill(u16::MAX);
        self.len = src.len() as u16;
        let like = src.first().map_or(0, |&s| keys[usize::from(s)]);
        self.encode(keys, self.shared_with(keys, like), like);
    }
}

#[derive(Clone)]
struct Node {
    len: u16,
    parent: u16,
    /// `ends[i]` = entries under children `0..=i`; `NO_END` past `len`.
    ends: [u16; NODE_CAP],
    /// Child ids; `NIL` past `len`.
    children: [u16; NODE_CAP],
    /// `seps[i]` (i ≥ 1) is at least every key of child `i-1` and at most every key of
    /// child `i`; `seps[0]` is `FIRST_SEP` and unused ones are `NO_SEP`.
    seps: [u64; NODE_CAP],
}

impl Node {
    const EMPTY: Node = Node {
        len: 0,
        parent: NIL,
        ends: [NO_END; NODE_CAP],
        children: [NIL; NODE_CAP],
        seps: {
            let mut seps = [NO_SEP; NODE_CAP];
            seps[0] = FIRST_SEP;
            seps
        },
    };

    #[inline(always)]
    fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Entries under children `0..i`.
    #[inline(always)]
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            usize::from(self.ends[i - 1])
        }
    }

    /// A child whose key range admits key `k` (the last one whose separator is ≤ `k`).
    #[inline(always)]
    fn child_for(&self, k: u64) -> usize {
        sorted_prefix(&self.seps, |s| s <= k) - 1
    }

    /// The child before which every key is < `k` and after which every key is ≥ `k`
    /// (`k` > 0).
    #[inline(always)]
    fn child_below(&self, k: u64) -> usize {
        sorted_prefix(&self.seps, |s| s < k) - 1
    }

    /// Child holding the entry of rank `k` (`k` below the node's total).
    #[inline(always)]
    fn child_at_rank(&self, k: usize) -> usize {
        let k = k as u16;
        usize::from(self.ends.iter().map(|&x| u16::from(x <= k)).sum::<u16>())
    }

    /// Adds one to (`up`) or subtracts one from the counts of children `i..`.
    #[inline(always)]
    fn bump(&mut self, i: usize, up: bool) {
        let len = self.len();
        for x in &mut self.ends[i..len] {
            *x = if up { *x + 1 } else { *x - 1 };
        }
    }

    /// Records that child `i` split, its upper `right_count` entries moving to `child`.
    fn insert_child(&mut self, i: usize, sep: u64, child: u16, right_count: usize) {
        let len = self.len();
        self.children.copy_within(i + 1..len, i + 2);
        self.children[i + 1] = child;
        self.seps.copy_within(i + 1..len, i + 2);
        self.seps[i + 1] = sep;
        self.ends.copy_within(i..len, i + 1);
        self.ends[i] -= right_count as u16;
        self.len += 1;
    }

    /// Removes child `c ≥ 1` after its entries were merged into child `c - 1`.
    fn remove_child(&mut self, c: usize) {
        let len = self.len();
        self.ends[c - 1] = self.ends[c];
        self.ends.copy_within(c + 1..len, c);
        self.children.copy_within(c + 1..len, c);
        self.seps.copy_within(c + 1..len, c);
        self.ends[len - 1] = NO_END;
        self.children[len - 1] = NIL;
        self.seps[len - 1] = NO_SEP;
        self.len -= 1;
    }
}

/// Children of one or two adjacent nodes laid out flat, for splits and rebalancing.
struct Flat {
    n: usize,
    children: [u16; 2 * NODE_CAP],
    counts: [u16; 2 * NODE_CAP],
    /// `seps[j]` separates child `j - 1` from child `j`.
    seps: [u64; 2 * NODE_CAP],
}

impl Flat {
    fn new() -> Self {
        Flat {
            n: 0,
            children: [NIL; 2 * NODE_CAP],
            counts: [0; 2 * NODE_CAP],
            seps: [NO_SEP; 2 * NODE_CAP],
        }
    }

    /// Appends the children of `node`; `sep_before` separates them from what precedes.
    fn push_node(&mut self, node: &Node, sep_before: u64) {
        for i in 0..node.len() {
            self.children[self.n] = node.children[i];
            self.counts[self.n] = (usize::from(node.ends[i]) - node.start(i)) as u16;
            self.seps[self.n] = if i == 0 { sep_before } else { node.seps[i] };
            self.n += 1;
        }
    }

    fn insert(&mut self, at: usize, child: u16, count: usize, sep: u64) {
        self.children.copy_within(at..self.n, at + 1);
        self.counts.copy_within(at..self.n, at + 1);
        self.seps.copy_within(at..self.n, at + 1);
        self.children[at] = child;
        self.counts[at] = count as u16;
        self.seps[at] = sep;
        self.n += 1;
    }

    fn total(&self, range: Range<usize>) -> usize {
        self.counts[range].iter().map(|&c| usize::from(c)).sum()
    }

    /// Overwrites `node`'s children with those in `range`, keeping its parent.
    fn write(&self, range: Range<usize>, node: &mut Node) {
        *node = Node {
            parent: node.parent,
            ..Node::EMPTY
        };
        node.len = range.len() as u16;
        let mut acc = 0u16;
        for (j, i) in range.enumerate() {
            node.children[j] = self.children[i];
            acc += self.counts[i];
            node.ends[j] = acc;
            node.seps[j] = if j == 0 { FIRST_SEP } else { self.seps[i] };
        }
    }
}

/// Order-statistic tree over the slots `0..capacity` of a ring of order keys.
///
/// Every method taking `keys` must get the ring's current keys; an inserted slot's
/// key must not change until the slot is removed.
#[derive(Clone)]
pub(super) struct OrderTree {
    leaves: Vec<Leaf>,
    nodes: Vec<Node>,
    /// Leaf holding each inserted slot.
    leaf_of: Vec<u16>,
    free_leaf: u16,
    free_node: u16,
    root: u16,
    height: usize,
    len: usize,
    capacity: usize,
    leaf_limit: usize,
    node_limit: usize,
}

/// Grows `v` geometrically for one more element, never past `limit` when avoidable.
fn reserve_one<T>(v: &mut Vec<T>, limit: usize) {
    if v.len() == v.capacity() {
        let want = (v.capacity() * 2).max(4).min(limit.max(v.len() + 1));
        v.reserve_exact(want - v.len());
    }
}

impl OrderTree {
    /// Empty tree for at most `capacity` entries (slots `0..capacity`).
    pub(super) fn new(capacity: usize) -> Self {
        let leaf_limit = (capacity / LEAF_MIN).max(1);
        let mut node_limit = 0;
        let mut level = leaf_limit;
        while level > 1 {
            level = (level / NODE_MIN).max(1);
            node_limit += level;
        }
        let mut leaves = Vec::new();
        leaves.reserve_exact(1);
        leaves.push(Leaf::EMPTY);
        OrderTree {
            leaves,
            nodes: Vec::new(),
            leaf_of: Vec::new(),
            free_leaf: NIL,
            free_node: NIL,
            root: 0,
            height: 0,
            len: 0,
            capacity,
            leaf_limit,
            node_limit,
        }
    }

    /// Bytes of heap memory held.
    pub(super) fn heap_bytes(&self) -> usize {
        self.leaves.capacity() * std::mem::size_of::<Leaf>()
            + self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.leaf_of.capacity() * std::mem::size_of::<u16>()
    }

    fn alloc_leaf(&mut self) -> u16 {
        if self.free_leaf != NIL {
            let id = self.free_leaf;
            self.free_leaf = self.leaves[usize::from(id)].slots[0];
            self.leaves[usize::from(id)] = Leaf::EMPTY;
            return id;
        }
        reserve_one(&mut self.leaves, self.leaf_limit);
        self.leaves.push(Leaf::EMPTY);
        (self.leaves.len() - 1) as u16
    }

    fn free_leaf(&mut self, id: u16) {
        let leaf = &mut self.leaves[usize::from(id)];
        *leaf = Leaf::EMPTY;
        leaf.slots[0] = self.free_leaf;
        self.free_leaf = id;
    }

    fn alloc_node(&mut self) -> u16 {
        if self.free_node != NIL {
            let id = self.free_node;
            self.free_node = self.nodes[usize::from(id)].children[0];
            self.nodes[usize::from(id)] = Node::EMPTY;
            return id;
        }
        reserve_one(&mut self.nodes, self.node_limit);
        self.nodes.push(Node::EMPTY);
        (self.nodes.len() - 1) as u16
    }

    fn free_node(&mut self, id: u16) {
        let node = &mut self.nodes[usize::from(id)];
        *node = Node::EMPTY;
        node.children[0] = self.free_node;
        self.free_node = id;
    }

    /// Sets the parent link of a leaf (`leaf`) or internal node.
    fn set_parent(&mut self, id: u16, leaf: bool, parent: u16) {
        if leaf {
            self.leaves[usize::from(id)].parent = parent;
        } else {
            self.nodes[usize::from(id)].parent = parent;
        }
    }

    /// Points every child of node `id` (leaves if `leaf_children`) back at it.
    fn adopt(&mut self, id: u16, leaf_children: bool) {
        let node = &self.nodes[usize::from(id)];
        let children = node.children;
        for &c in &children[..node.len()] {
            self.set_parent(c, leaf_children, id);
        }
    }

    /// Records that `slots` now live in leaf `id`.
    fn move_to(&mut self, slots: &[u16], id: u16) {
        for &s in slots {
            self.leaf_of[usize::from(s)] = id;
        }
    }

    /// Inserts `slot` (whose key is `keys[slot]`); it must not already be present.
    pub(super) fn insert(&mut self, keys: &[u64], slot: u16) {
        let k = keys[usize::from(slot)];
        let mut path = [(0u16, 0usize); MAX_HEIGHT];
        let mut id = self.root;
        for step in path.iter_mut().take(self.height) {
            let node = &mut self.nodes[usize::from(id)];
            let i = node.child_for(k);
            node.bump(i, true);
            *step = (id, i);
            id = node.children[i];
        }
        self.len += 1;
        if usize::from(slot) == self.leaf_of.len() {
            reserve_one(&mut self.leaf_of, self.capacity);
            self.leaf_of.push(id);
        } else {
            self.leaf_of[usize::from(slot)] = id;
        }
        let leaf = &mut self.leaves[usize::from(id)];
        if leaf.len() < LEAF_CAP {
            leaf.insert(keys, slot, k);
            return;
        }
        let pos = leaf.lower_bound(keys, k);
        let mut buf = [0u16; LEAF_CAP + 1];
        buf[..pos].copy_from_slice(&leaf.slots[..pos]);
        buf[pos] = slot;
        buf[pos + 1..].copy_from_slice(&leaf.slots[pos..]);
        let q = LEAF_CAP.div_ceil(2);
        leaf.set(keys, &buf[..q]);
        let parent = leaf.parent;
        let right = self.alloc_leaf();
        let right_leaf = &mut self.leaves[usize::from(right)];
        right_leaf.set(keys, &buf[q..]);
        right_leaf.parent = parent;
        self.move_to(&buf[q..], right);
        self.propagate_split(&path, keys[usize::from(buf[q])], right, LEAF_CAP + 1 - q);
    }

    /// Inserts new right siblings up the (top-down) `path` after the node at its end split.
    fn propagate_split(
        &mut self,
        path: &[(u16, usize); MAX_HEIGHT],
        mut sep: u64,
        mut child: u16,
        mut right_count: usize,
    ) {
        for level in (0..self.height).rev() {
            let (pid, i) = path[level];
            let leaf_children = level + 1 == self.height;
            let node = &mut self.nodes[usize::from(pid)];
            if node.len() < NODE_CAP {
                node.insert_child(i, sep, child, right_count);
                self.set_parent(child, leaf_children, pid);
                return;
            }
            let mut flat = Flat::new();
            flat.push_node(node, NO_SEP);
            flat.counts[i] -= right_count as u16;
            flat.insert(i + 1, child, right_count, sep);
            let q = flat.n / 2;
            flat.write(0..q, node);
            let grandparent = node.parent;
            let new_id = self.alloc_node();
            let new_node = &mut self.nodes[usize::from(new_id)];
            flat.write(q..flat.n, new_node);
            new_node.parent = grandparent;
            self.adopt(pid, leaf_children);
            self.adopt(new_id, leaf_children);
            sep = flat.seps[q];
            child = new_id;
            right_count = flat.total(q..flat.n);
        }
        let old_root = self.root;
        let new_root = self.alloc_node();
        let node = &mut self.nodes[usize::from(new_root)];
        node.len = 2;
        node.children[0] = old_root;
        node.children[1] = child;
        node.ends[0] = (self.len - right_count) as u16;
        node.ends[1] = self.len as u16;
        node.seps[1] = sep;
        let leaf_children = self.height == 0;
        self.set_parent(old_root, leaf_children, new_root);
        self.set_parent(child, leaf_children, new_root);
        self.root = new_root;
        self.height += 1;
        debug_assert!(self.height < MAX_HEIGHT);
    }

    /// Removes `slot`; it must be present.
    pub(super) fn remove(&mut self, keys: &[u64], slot: u16) {
        let leaf_id = self.leaf_of[usize::from(slot)];
        let leaf = &mut self.leaves[usize::from(leaf_id)];
        let pos = find(&leaf.slots, slot);
        debug_assert!(pos < leaf.len() && leaf.slots[pos] == slot);
        leaf.remove_at(pos);
        let underfull = leaf.len() < LEAF_MIN;
        let mut parent = leaf.parent;
        self.len -= 1;
        // Bottom-up path: path[l] = (ancestor at height l + 1, index of its child on the path).
        let mut path = [(0u16, 0usize); MAX_HEIGHT];
        let mut child = leaf_id;
        for step in path.iter_mut().take(self.height) {
            let node = &mut self.nodes[usize::from(parent)];
            let i = find(&node.children, child);
            node.bump(i, false);
            *step = (parent, i);
            child = parent;
            parent = node.parent;
        }
        if self.height == 0 || !underfull {
            return;
        }
        self.rebalance_leaves(keys, path[0].0, path[0].1);
        let mut level = 0;
        while level + 1 < self.height && self.nodes[usize::from(path[level].0)].len() < NODE_MIN {
            level += 1;
            self.rebalance_nodes(path[level].0, path[level].1, level == 1);
        }
        let root = &self.nodes[usize::from(self.root)];
        if root.len() == 1 {
            let only = root.children[0];
            self.free_node(self.root);
            self.root = only;
            self.height -= 1;
            self.set_parent(only, self.height == 0, NIL);
        }
    }

    /// Picks the sibling pair `(j, j + 1)` of node `pid` that contains child `i`.
    fn pair(&self, pid: u16, i: usize) -> (usize, u16, u16) {
        let parent = &self.nodes[usize::from(pid)];
        let j = i.saturating_sub(1);
        (j, parent.children[j], parent.children[j + 1])
    }

    /// Fixes underfull leaf child `i` of `pid` by merging with or borrowing from a sibling.
    fn rebalance_leaves(&mut self, keys: &[u64], pid: u16, i: usize) {
        let (j, lid, rid) = self.pair(pid, i);
        let (l, r) = (
            &self.leaves[usize::from(lid)],
            &self.leaves[usize::from(rid)],
        );
        let (ln, total) = (l.len(), l.len() + r.len());
        let mut buf = [0u16; 2 * LEAF_CAP];
        buf[..ln].copy_from_slice(l.entries());
        buf[ln..total].copy_from_slice(r.entries());
        if total <= LEAF_CAP {
            self.leaves[usize::from(lid)].set(keys, &buf[..total]);
            self.move_to(&buf[ln..total], lid);
            self.free_leaf(rid);
            self.nodes[usize::from(pid)].remove_child(j + 1);
            return;
        }
        let q = total / 2;
        self.leaves[usize::from(lid)].set(keys, &buf[..q]);
        self.leaves[usize::from(rid)].set(keys, &buf[q..total]);
        if q > ln {
            self.move_to(&buf[ln..q], lid);
        } else {
            self.move_to(&buf[q..ln], rid);
        }
        let parent = &mut self.nodes[usize::from(pid)];
        parent.seps[j + 1] = keys[usize::from(buf[q])];
        parent.ends[j] = (parent.start(j) + q) as u16;
    }

    /// Fixes underfull node child `i` of `pid` (whose own children are leaves if
    /// `leaf_children`) by merging with or borrowing from a sibling.
    fn rebalance_nodes(&mut self, pid: u16, i: usize, leaf_children: bool) {
        let (j, lid, rid) = self.pair(pid, i);
        let mut flat = Flat::new();
        flat.push_node(&self.nodes[usize::from(lid)], NO_SEP);
        flat.push_node(
            &self.nodes[usize::from(rid)],
            self.nodes[usize::from(pid)].seps[j + 1],
        );
        if flat.n <= NODE_CAP {
            flat.write(0..flat.n, &mut self.nodes[usize::from(lid)]);
            self.adopt(lid, leaf_children);
            self.free_node(rid);
            self.nodes[usize::from(pid)].remove_child(j + 1);
            return;
        }
        let q = flat.n / 2;
        flat.write(0..q, &mut self.nodes[usize::from(lid)]);
        flat.write(q..flat.n, &mut self.nodes[usize::from(rid)]);
        self.adopt(lid, leaf_children);
        self.adopt(rid, leaf_children);
        let parent = &mut self.nodes[usize::from(pid)];
        parent.seps[j + 1] = flat.seps[q];
        parent.ends[j] = (parent.start(j) + flat.total(0..q)) as u16;
    }

    /// Leaf and position of the entry of rank `k` (`k` below the tree's length).
    #[inline(always)]
    fn locate(&self, mut k: usize) -> (&Leaf, usize) {
        let mut id = self.root;
        for _ in 0..self.height {
            let node = &self.nodes[usize::from(id)];
            let i = node.child_at_rank(k);
            k -= node.start(i);
            id = node.children[i];
        }
        (&self.leaves[usize::from(id)], k)
    }

    /// Slot of the entry of rank `k` (0-based); `k` must be below the length.
    #[inline]
    pub(super) fn select(&self, k: usize) -> u16 {
        let (leaf, pos) = self.locate(k);
        leaf.slots[pos]
    }

    /// Slots of ranks `k` and `k + 1`; `k + 1` must be below the length.
    #[inline]
    pub(super) fn select_pair(&self, k: usize) -> (u16, u16) {
        let (leaf, pos) = self.locate(k);
        if pos + 1 < leaf.len() {
            (leaf.slots[pos], leaf.slots[pos + 1])
        } else {
            (leaf.slots[pos], self.select(k + 1))
        }
    }

    /// Number of entries whose order key is below `k`.
    pub(super) fn count_below(&self, keys: &[u64], k: u64) -> usize {
        let mut id = self.root;
        let mut acc = 0;
        for _ in 0..self.height {
            let node = &self.nodes[usize::from(id)];
            let i = node.child_below(k);
            acc += node.start(i);
            id = node.children[i];
        }
        acc + self.leaves[usize::from(id)].lower_bound(keys, k)
    }

    /// Slot of a smallest entry; the tree must not be empty.
    #[inline]
    pub(super) fn first(&self) -> u16 {
        let mut id = self.root;
        for _ in 0..self.height {
            id = self.nodes[usize::from(id)].children[0];
        }
        self.leaves[usize::from(id)].slots[0]
    }

    /// Slot of a largest entry; the tree must not be empty.
    #[inline]
    pub(super) fn last(&self) -> u16 {
        let mut id = self.root;
        for _ in 0..self.height {
            let node = &self.nodes[usize::from(id)];
            id = node.children[node.len() - 1];
        }
        let leaf = &self.leaves[usize::from(id)];
        leaf.slots[leaf.len() - 1]
    }

    /// Height (0 when the root is a leaf).
    #[cfg(test)]
    pub(super) fn height(&self) -> usize {
        self.height
    }

    /// Checks every structural invariant against the slots `0..present` of the ring;
    /// returns a description of the first violation.
    #[cfg(test)]
    pub(super) fn check(&self, keys: &[u64], present: usize) -> Result<(), String> {
        let mut seen = Vec::new();
        let mut live = (0, 0);
        let total = self.check_subtree(keys, self.root, self.height, NIL, &mut seen, &mut live)?;
        if total != self.len || seen.len() != self.len || self.len != present {
            return Err(format!("len {} but counted {total}", self.len));
        }
        if seen
            .windows(2)
            .any(|w| keys[usize::from(w[0])] > keys[usize::from(w[1])])
        {
            return Err("entries out of order".into());
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        if sorted.iter().copied().ne(0..present as u16) {
            return Err("slot set differs from the ring".into());
        }
        let count_free = |mut f: u16, next: &dyn Fn(u16) -> u16| {
            let mut n = 0;
            while f != NIL {
                n += 1;
                f = next(f);
            }
            n
        };
        let free_leaves = count_free(self.free_leaf, &|f| self.leaves[usize::from(f)].slots[0]);
        let free_nodes = count_free(self.free_node, &|f| self.nodes[usize::from(f)].children[0]);
        if live.0 + free_leaves != self.leaves.len() || live.1 + free_nodes != self.nodes.len() {
            return Err("arena leak".into());
        }
        if self.leaves.capacity() > self.leaf_limit
            || self.nodes.capacity() > self.node_limit
            || self.leaf_of.capacity() > self.capacity
        {
            return Err("arena grew past its limit".into());
        }
        Ok(())
    }

    #[cfg(test)]
    fn check_subtree(
        &self,
        keys: &[u64],
        id: u16,
        height: usize,
        parent: u16,
        seen: &mut Vec<u16>,
        live: &mut (usize, usize),
    ) -> Result<usize, String> {
        let is_root = parent == NIL;
        if height == 0 {
            live.0 += 1;
            let leaf = &self.leaves[usize::from(id)];
            if leaf.len() > LEAF_CAP || (!is_root && leaf.len() < LEAF_MIN) {
                return Err(format!("leaf {id} has {} entries", leaf.len()));
            }
            if leaf.parent != parent || leaf.slots[leaf.len()..].iter().any(|&s| s != NIL) {
                return Err(format!("leaf {id} has a bad parent or padding"));
            }
            if leaf
                .entries()
                .iter()
                .any(|&s| self.leaf_of[usize::from(s)] != id)
            {
                return Err(format!("leaf {id}: stale slot index"));
            }
            let fp_ok = leaf.entries().iter().zip(&leaf.fps).all(|(&s, &f)| {
                let k = keys[usize::from(s)];
                leaf.covers(k) && f == leaf.fingerprint(k)
            });
            if !fp_ok || leaf.fps[leaf.len()..].iter().any(|&f| f != u16::MAX) || leaf.shared > 48 {
                return Err(format!("leaf {id}: bad fingerprints"));
            }
            seen.extend_from_slice(leaf.entries());
            return Ok(leaf.len());
        }
        live.1 += 1;
        let node = &self.nodes[usize::from(id)];
        let len = node.len();
        let min = if is_root { 2 } else { NODE_MIN };
        if len > NODE_CAP || len < min || node.parent != parent {
            return Err(format!("node {id} has {len} children or a bad parent"));
        }
        if node.seps[0] != FIRST_SEP
            || node.seps[len..].iter().any(|&s| s != NO_SEP)
            || node.ends[len..].iter().any(|&x| x != NO_END)
            || node.children[len..].iter().any(|&c| c != NIL)
        {
            return Err(format!("node {id} has bad sentinels"));
        }
        let mut acc = 0;
        for i in 0..len {
            let before = seen.len();
            acc += self.check_subtree(keys, node.children[i], height - 1, id, seen, live)?;
            if usize::from(node.ends[i]) != acc {
                return Err(format!("node {id} child {i}: count mismatch"));
            }
            let first = keys[usize::from(seen[before])];
            if i > 0 && (node.seps[i] > first || node.seps[i] < keys[usize::from(seen[before - 1])])
            {
                return Err(format!("node {id} separator {i} out of range"));
            }
        }
        Ok(acc)
    }
}
