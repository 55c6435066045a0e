package router

import (
	"math/bits"
	"strconv"
	"testing"
)

// hashPrefixMask keeps the hash bits consumed by the interior levels.
func hashPrefixMask(depth int) uint64 {
	if depth*hamtBits >= 64 {
		return ^uint64(0)
	}
	return uint64(1)<<(depth*hamtBits) - 1
}

// checkTrie verifies the structural invariants of a trie and returns the
// number of entries below n. realHashes asks it to check that every entry's
// stored hash is the hash of its key (false for tests with crafted hashes).
func checkTrie[V any](t *testing.T, n *hamtNode[V], depth int, prefix uint64, isRoot, realHashes bool) int {
	t.Helper()
	if n == nil {
		if !isRoot {
			t.Errorf("depth %d: nil child node", depth)
		}
		return 0
	}
	if depth >= hamtMaxDepth {
		if n.bitmap != 0 || n.children != nil {
			t.Errorf("depth %d: collision bucket has interior fields", depth)
		}
		if len(n.bucket) == 0 {
			t.Errorf("depth %d: empty collision bucket left in trie", depth)
		}
		seen := map[string]bool{}
		for _, e := range n.bucket {
			if seen[e.key] {
				t.Errorf("bucket holds key %q twice", e.key)
			}
			seen[e.key] = true
			if e.hash&hashPrefixMask(depth) != prefix {
				t.Errorf("bucket entry %q: hash %x does not match prefix %x", e.key, e.hash, prefix)
			}
			if realHashes && e.hash != hashKey(e.key) {
				t.Errorf("bucket entry %q: stale hash", e.key)
			}
		}
		return len(n.bucket)
	}
	if n.bucket != nil {
		t.Errorf("depth %d: interior node has a bucket", depth)
	}
	if bits.OnesCount32(n.bitmap) != len(n.children) {
		t.Errorf("depth %d: bitmap %b has %d bits for %d children", depth, n.bitmap, bits.OnesCount32(n.bitmap), len(n.children))
		return 0
	}
	if len(n.children) == 0 {
		t.Errorf("depth %d: empty interior node left in trie", depth)
	}
	total, i := 0, 0
	for b := 0; b < hamtFanout; b++ {
		if n.bitmap&(1<<b) == 0 {
			continue
		}
		s := n.children[i]
		i++
		p := prefix | uint64(b)<<(depth*hamtBits)
		switch {
		case (s.node == nil) == (s.entry == nil):
			t.Errorf("depth %d slot %d: must hold exactly one of node and entry", depth, b)
		case s.entry != nil:
			if s.entry.hash&hashPrefixMask(depth+1) != p {
				t.Errorf("entry %q at depth %d: hash %x does not match path %x", s.entry.key, depth, s.entry.hash, p)
			}
			if realHashes && s.entry.hash != hashKey(s.entry.key) {
				t.Errorf("entry %q: stale hash", s.entry.key)
			}
			total++
		default:
			c := s.node
			if c.bucket == nil && len(c.children) == 1 && c.children[0].entry != nil {
				t.Errorf("depth %d slot %d: lone entry %q not pulled up", depth, b, c.children[0].entry.key)
			}
			total += checkTrie(t, c, depth+1, p, false, realHashes)
		}
	}
	return total
}

func verifyHamt[V any](t *testing.T, h hamt[V]) {
	t.Helper()
	if got := checkTrie(t, h.root, 0, 0, true, true); got != h.count {
		t.Fatalf("trie holds %d entries, count says %d", got, h.count)
	}
}

// depthOf returns the level of the slot or bucket that holds key.
func depthOf[V any](n *hamtNode[V], key string, hash uint64) int {
	for depth := 0; n != nil; depth++ {
		if depth >= hamtMaxDepth {
			return depth
		}
		bit := uint32(1) << ((hash >> (depth * hamtBits)) & hamtMask)
		if n.bitmap&bit == 0 {
			return -1
		}
		s := n.children[bits.OnesCount32(n.bitmap&(bit-1))]
		if s.entry != nil {
			return depth
		}
		n = s.node
	}
	return -1
}

// findHash mirrors hamt.get with a caller-chosen hash, so that tests can
// reach collision buckets, which real keys practically never do.
func findHash[V any](n *hamtNode[V], key string, hash uint64) (v V, ok bool) {
	for depth := 0; n != nil; depth++ {
		if depth >= hamtMaxDepth {
			for _, e := range n.bucket {
				if e.key == key {
					return e.value, true
				}
			}
			return v, false
		}
		bit := uint32(1) << ((hash >> (depth * hamtBits)) & hamtMask)
		if n.bitmap&bit == 0 {
			return v, false
		}
		s := n.children[bits.OnesCount32(n.bitmap&(bit-1))]
		if s.entry != nil {
			if s.entry.key == key {
				return s.entry.value, true
			}
			return v, false
		}
		n = s.node
	}
	return v, false
}

func hkey(i int) string { return "host-" + strconv.Itoa(i) + ".example.com" }

func TestHamtEmpty(t *testing.T) {
	var h hamt[int]
	if _, ok := h.get("x"); ok {
		t.Fatal("empty trie found a key")
	}
	if _, ok := h.getBytes([]byte("x")); ok {
		t.Fatal("empty trie found a key by bytes")
	}
	d := h.delete("x")
	if d.root != nil || d.count != 0 {
		t.Fatal("delete on empty trie produced a non-empty trie")
	}
	h.each(func(string, int) { t.Fatal("each on empty trie called fn") })
}

func TestHamtSetGetDelete(t *testing.T) {
	const n = 50000
	var h hamt[int]
	for i := 0; i < n; i++ {
		h = h.set(hkey(i), i)
	}
	if h.count != n {
		t.Fatalf("count = %d, want %d", h.count, n)
	}
	verifyHamt(t, h)
	for i := 0; i < n; i++ {
		if v, ok := h.get(hkey(i)); !ok || v != i {
			t.Fatalf("get(%q) = %d, %v; want %d, true", hkey(i), v, ok, i)
		}
		if v, ok := h.getBytes([]byte(hkey(i))); !ok || v != i {
			t.Fatalf("getBytes(%q) = %d, %v; want %d, true", hkey(i), v, ok, i)
		}
	}
	for i := n; i < n+1000; i++ {
		if _, ok := h.get(hkey(i)); ok {
			t.Fatalf("get(%q) found a key never set", hkey(i))
		}
	}
	// A 50k-key trie must be several levels deep for the test to mean much.
	maxDepth := 0
	for i := 0; i < n; i++ {
		if d := depthOf(h.root, hkey(i), hashKey(hkey(i))); d > maxDepth {
			maxDepth = d
		}
	}
	if maxDepth < 3 {
		t.Fatalf("deepest entry at level %d; expected a deeper trie", maxDepth)
	}

	// Delete the odd keys.
	for i := 1; i < n; i += 2 {
		h = h.delete(hkey(i))
	}
	if h.count != n/2 {
		t.Fatalf("count after deleting odd keys = %d, want %d", h.count, n/2)
	}
	verifyHamt(t, h)
	for i := 0; i < n; i++ {
		v, ok := h.get(hkey(i))
		if want := i%2 == 0; ok != want || (ok && v != i) {
			t.Fatalf("get(%q) = %d, %v after deleting odd keys", hkey(i), v, ok)
		}
	}

	// Delete the rest: the trie must come back to the empty root.
	for i := 0; i < n; i += 2 {
		h = h.delete(hkey(i))
	}
	if h.root != nil || h.count != 0 {
		t.Fatalf("after deleting every key: root=%p count=%d, want nil, 0", h.root, h.count)
	}
}

func TestHamtOverwrite(t *testing.T) {
	var h hamt[string]
	for i := 0; i < 1000; i++ {
		h = h.set(hkey(i), "old")
	}
	before := h
	for i := 0; i < 1000; i += 3 {
		h = h.set(hkey(i), "new")
	}
	if h.count != 1000 {
		t.Fatalf("count after overwrite = %d, want 1000", h.count)
	}
	verifyHamt(t, h)
	for i := 0; i < 1000; i++ {
		want := "old"
		if i%3 == 0 {
			want = "new"
		}
		if v, _ := h.get(hkey(i)); v != want {
			t.Fatalf("get(%q) = %q, want %q", hkey(i), v, want)
		}
		if v, _ := before.get(hkey(i)); v != "old" {
			t.Fatalf("old version changed: get(%q) = %q", hkey(i), v)
		}
	}
}

func TestHamtDeleteMissing(t *testing.T) {
	var h hamt[int]
	for i := 0; i < 5000; i++ {
		h = h.set(hkey(i), i)
	}
	for i := 5000; i < 6000; i++ {
		d := h.delete(hkey(i))
		if d.root != h.root || d.count != h.count {
			t.Fatalf("deleting missing key %q changed the trie", hkey(i))
		}
	}
}

func TestHamtPersistence(t *testing.T) {
	const n = 3000
	versions := make([]hamt[int], 0, 2*n+1)
	var h hamt[int]
	versions = append(versions, h)
	for i := 0; i < n; i++ {
		h = h.set(hkey(i), i)
		versions = append(versions, h)
	}
	for i := 0; i < n; i++ {
		h = h.delete(hkey(i))
		versions = append(versions, h)
	}
	// Version v holds keys [0, v) while growing, then [v-n, n) while shrinking.
	check := func(v int) {
		lo, hi := 0, v
		if v > n {
			lo, hi = v-n, n
		}
		hv := versions[v]
		if hv.count != hi-lo {
			t.Fatalf("version %d: count %d, want %d", v, hv.count, hi-lo)
		}
		for i := 0; i < n; i++ {
			val, ok := hv.get(hkey(i))
			if want := lo <= i && i < hi; ok != want || (ok && val != i) {
				t.Fatalf("version %d: get(%q) = %d, %v; want present=%v", v, hkey(i), val, ok, want)
			}
		}
	}
	for v := 0; v <= 2*n; v += 97 {
		check(v)
	}
	check(n)
	check(2 * n)
	if versions[2*n].root != nil {
		t.Fatal("final version is not empty")
	}
	verifyHamt(t, versions[n])
	verifyHamt(t, versions[n+n/2])
}

func TestHamtEach(t *testing.T) {
	const n = 20000
	var h hamt[int]
	for i := 0; i < n; i++ {
		h = h.set(hkey(i), i)
	}
	seen := make(map[string]int, n)
	h.each(func(k string, v int) {
		if k != hkey(v) {
			t.Fatalf("each: key %q with value %d", k, v)
		}
		seen[k]++
	})
	if len(seen) != n {
		t.Fatalf("each visited %d distinct keys, want %d", len(seen), n)
	}
	for k, c := range seen {
		if c != 1 {
			t.Fatalf("each visited %q %d times", k, c)
		}
	}
}

func TestHamtDeleteCollapses(t *testing.T) {
	const n = 10000
	var h hamt[int]
	for i := 0; i < n; i++ {
		h = h.set(hkey(i), i)
	}
	// Delete in an order unrelated to insertion, checking invariants on the
	// way: every removal must pull lone entries back up.
	for i := n - 1; i >= 1; i-- {
		h = h.delete(hkey((i * 7919) % n))
		if i%1000 == 0 {
			verifyHamt(t, h)
		}
	}
	verifyHamt(t, h)
	if h.count != 1 {
		t.Fatalf("count = %d, want 1", h.count)
	}
	if len(h.root.children) != 1 || h.root.children[0].entry == nil {
		t.Fatal("last remaining key was not pulled up into the root")
	}
	if v, ok := h.get(hkey(0)); !ok || v != 0 {
		t.Fatalf("get(%q) = %d, %v", hkey(0), v, ok)
	}
}

// The tests below build tries with crafted hashes through insertNode and
// deleteNode, to reach the deep levels and the collision buckets.

func craftedInsert(root *hamtNode[int], key string, hash uint64, v int) (*hamtNode[int], bool) {
	return insertNode(root, &hamtEntry[int]{key: key, hash: hash, value: v}, 0)
}

func TestHamtCollisionBucket(t *testing.T) {
	const hash = 0x0123456789abcdef
	// Same 60-bit prefix, different top bits: still one bucket.
	hashes := []uint64{hash, hash, hash ^ 1<<60, hash ^ 1<<63, hash}
	var root *hamtNode[int]
	var versions []*hamtNode[int]
	for i, hs := range hashes {
		var added bool
		root, added = craftedInsert(root, "c"+strconv.Itoa(i), hs, i)
		if !added {
			t.Fatalf("insert %d: added = false", i)
		}
		versions = append(versions, root)
	}
	// An unrelated key sharing only the first level.
	other := uint64(hash&hamtMask) | 0x1f<<hamtBits
	root, _ = craftedInsert(root, "other", other, 99)

	if got := checkTrie(t, root, 0, 0, true, false); got != len(hashes)+1 {
		t.Fatalf("trie holds %d entries, want %d", got, len(hashes)+1)
	}
	for i, hs := range hashes {
		k := "c" + strconv.Itoa(i)
		if d := depthOf(root, k, hs); d != hamtMaxDepth {
			t.Fatalf("%s at depth %d, want bucket depth %d", k, d, hamtMaxDepth)
		}
		if v, ok := findHash(root, k, hs); !ok || v != i {
			t.Fatalf("find %s = %d, %v", k, v, ok)
		}
	}
	if d := depthOf(root, "other", other); d != 1 {
		t.Fatalf("other at depth %d, want 1", d)
	}
	if _, ok := findHash(root, "missing", hash); ok {
		t.Fatal("found a key that shares the bucket but was never inserted")
	}

	// Overwrite inside the bucket.
	root2, added := craftedInsert(root, "c2", hashes[2], 42)
	if added {
		t.Fatal("overwrite in bucket reported added")
	}
	if v, _ := findHash(root2, "c2", hashes[2]); v != 42 {
		t.Fatalf("overwritten value = %d, want 42", v)
	}
	if v, _ := findHash(root, "c2", hashes[2]); v != 2 {
		t.Fatalf("old version changed by overwrite: %d", v)
	}
	// Old versions are unchanged.
	for i, r := range versions {
		if got := checkTrie(t, r, 0, 0, true, false); got != i+1 {
			t.Fatalf("version %d holds %d entries, want %d", i, got, i+1)
		}
	}

	// Deleting a missing key from the bucket changes nothing.
	if r, removed := deleteNode(root2, "missing", hash, 0); removed || r != root2 {
		t.Fatal("deleting a missing key from a bucket changed the trie")
	}
	// Delete the bucket entries one by one.
	r := root2
	for i, hs := range hashes {
		var removed bool
		before := r
		r, removed = deleteNode(r, "c"+strconv.Itoa(i), hs, 0)
		if !removed {
			t.Fatalf("delete c%d: removed = false", i)
		}
		if got := checkTrie(t, r, 0, 0, true, false); got != len(hashes)-i {
			t.Fatalf("after deleting c%d: %d entries, want %d", i, got, len(hashes)-i)
		}
		if _, ok := findHash(before, "c"+strconv.Itoa(i), hs); !ok {
			t.Fatalf("delete c%d modified the previous version", i)
		}
	}
	if d := depthOf(r, "other", other); d != 0 {
		t.Fatalf("other at depth %d after emptying the bucket, want 0", d)
	}
	r, removed := deleteNode(r, "other", other, 0)
	if !removed || r != nil {
		t.Fatalf("deleting the last key: removed=%v root=%p", removed, r)
	}
}

func TestHamtDeepChainCollapses(t *testing.T) {
	// Two hashes that agree on every interior level but the last force a
	// chain of single-child nodes down to depth hamtMaxDepth-1.
	const a = uint64(0x0aaaaaaaaaaaaaaa)
	b := a ^ 1<<((hamtMaxDepth-1)*hamtBits)
	root, _ := craftedInsert(nil, "a", a, 1)
	root, _ = craftedInsert(root, "b", b, 2)
	if got := checkTrie(t, root, 0, 0, true, false); got != 2 {
		t.Fatalf("trie holds %d entries, want 2", got)
	}
	if da, db := depthOf(root, "a", a), depthOf(root, "b", b); da != hamtMaxDepth-1 || db != hamtMaxDepth-1 {
		t.Fatalf("depths %d, %d; want %d", da, db, hamtMaxDepth-1)
	}
	// Removing one must pull the other back to the root.
	r, removed := deleteNode(root, "a", a, 0)
	if !removed {
		t.Fatal("delete a: removed = false")
	}
	checkTrie(t, r, 0, 0, true, false)
	if d := depthOf(r, "b", b); d != 0 {
		t.Fatalf("b at depth %d after deleting a, want 0", d)
	}
	if v, ok := findHash(r, "b", b); !ok || v != 2 {
		t.Fatalf("find b = %d, %v", v, ok)
	}
	// The old version still has both, at full depth.
	if v, ok := findHash(root, "a", a); !ok || v != 1 {
		t.Fatalf("old version lost a: %d, %v", v, ok)
	}
	if d := depthOf(root, "b", b); d != hamtMaxDepth-1 {
		t.Fatalf("old version: b at depth %d", d)
	}
}
