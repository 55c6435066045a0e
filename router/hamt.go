package router

import (
	"hash/maphash"
	"math/bits"
	"unsafe"
)

// hamt is a persistent hash array mapped trie from string keys to values.
// Every update copies only the nodes on the path from the root to the
// changed leaf (at most a dozen small nodes), so publishing one changed host
// costs the same whether the table holds a thousand hosts or a million, and
// readers holding an old root keep seeing exactly that old version.
type hamt[V any] struct {
	root  *hamtNode[V]
	count int
}

const (
	hamtBits     = 5
	hamtFanout   = 1 << hamtBits
	hamtMask     = hamtFanout - 1
	hamtMaxDepth = 64 / hamtBits // levels below this share a collision bucket
)

type hamtEntry[V any] struct {
	key   string
	hash  uint64
	value V
}

// hamtNode is either an interior node (bitmap + children) or, at the bottom,
// a collision bucket holding every entry with the same 60-bit hash prefix.
// Interior slots hold either a child node or a single entry.
type hamtNode[V any] struct {
	bitmap   uint32
	children []hamtSlot[V]
	bucket   []hamtEntry[V]
}

type hamtSlot[V any] struct {
	node  *hamtNode[V]
	entry *hamtEntry[V]
}

var hashSeed = maphash.MakeSeed()

func hashKey(s string) uint64 { return maphash.String(hashSeed, s) }

// get looks a key up without allocating; b is only read.
func (h *hamt[V]) getBytes(b []byte) (V, bool) {
	return h.get(unsafe.String(unsafe.SliceData(b), len(b)))
}

func (h *hamt[V]) get(key string) (v V, ok bool) {
	n := h.root
	if n == nil {
		return v, false
	}
	hash := hashKey(key)
	for depth := 0; ; depth++ {
		if depth >= hamtMaxDepth {
			for i := range n.bucket {
				if n.bucket[i].key == key {
					return n.bucket[i].value, true
				}
			}
			return v, false
		}
		bit := uint32(1) << ((hash >> (depth * hamtBits)) & hamtMask)
		if n.bitmap&bit == 0 {
			return v, false
		}
		slot := &n.children[bits.OnesCount32(n.bitmap&(bit-1))]
		if slot.entry != nil {
			if slot.entry.key == key {
				return slot.entry.value, true
			}
			return v, false
		}
		n = slot.node
	}
}

// set returns a new trie with key bound to v; h is unchanged.
func (h hamt[V]) set(key string, v V) hamt[V] {
	e := &hamtEntry[V]{key: key, hash: hashKey(key), value: v}
	root, added := insertNode(h.root, e, 0)
	if added {
		h.count++
	}
	h.root = root
	return h
}

// delete returns a new trie without key; h is unchanged.
func (h hamt[V]) delete(key string) hamt[V] {
	if h.root == nil {
		return h
	}
	root, removed := deleteNode(h.root, key, hashKey(key), 0)
	if removed {
		h.count--
	}
	h.root = root
	return h
}

func insertNode[V any](n *hamtNode[V], e *hamtEntry[V], depth int) (*hamtNode[V], bool) {
	if depth >= hamtMaxDepth {
		out := &hamtNode[V]{}
		if n != nil {
			out.bucket = make([]hamtEntry[V], 0, len(n.bucket)+1)
			for _, old := range n.bucket {
				if old.key != e.key {
					out.bucket = append(out.bucket, old)
				}
			}
		}
		out.bucket = append(out.bucket, *e)
		return out, n == nil || len(out.bucket) > len(n.bucket)
	}
	bit := uint32(1) << ((e.hash >> (depth * hamtBits)) & hamtMask)
	if n == nil {
		return &hamtNode[V]{bitmap: bit, children: []hamtSlot[V]{{entry: e}}}, true
	}
	idx := bits.OnesCount32(n.bitmap & (bit - 1))
	out := &hamtNode[V]{bitmap: n.bitmap}
	if n.bitmap&bit == 0 {
		out.bitmap |= bit
		out.children = make([]hamtSlot[V], len(n.children)+1)
		copy(out.children, n.children[:idx])
		out.children[idx] = hamtSlot[V]{entry: e}
		copy(out.children[idx+1:], n.children[idx:])
		return out, true
	}
	out.children = make([]hamtSlot[V], len(n.children))
	copy(out.children, n.children)
	slot := n.children[idx]
	switch {
	case slot.entry != nil && slot.entry.key == e.key:
		out.children[idx] = hamtSlot[V]{entry: e}
		return out, false
	case slot.entry != nil:
		// Two keys share this slot: push both one level down.
		child, _ := insertNode[V](nil, slot.entry, depth+1)
		child, _ = insertNode(child, e, depth+1)
		out.children[idx] = hamtSlot[V]{node: child}
		return out, true
	default:
		child, added := insertNode(slot.node, e, depth+1)
		out.children[idx] = hamtSlot[V]{node: child}
		return out, added
	}
}

func deleteNode[V any](n *hamtNode[V], key string, hash uint64, depth int) (*hamtNode[V], bool) {
	if depth >= hamtMaxDepth {
		for i := range n.bucket {
			if n.bucket[i].key == key {
				if len(n.bucket) == 1 {
					return nil, true
				}
				out := &hamtNode[V]{bucket: make([]hamtEntry[V], 0, len(n.bucket)-1)}
				out.bucket = append(out.bucket, n.bucket[:i]...)
				out.bucket = append(out.bucket, n.bucket[i+1:]...)
				return out, true
			}
		}
		return n, false
	}
	bit := uint32(1) << ((hash >> (depth * hamtBits)) & hamtMask)
	if n.bitmap&bit == 0 {
		return n, false
	}
	idx := bits.OnesCount32(n.bitmap & (bit - 1))
	slot := n.children[idx]
	var replacement hamtSlot[V]
	if slot.entry != nil {
		if slot.entry.key != key {
			return n, false
		}
	} else {
		child, removed := deleteNode(slot.node, key, hash, depth+1)
		if !removed {
			return n, false
		}
		if child != nil {
			replacement = hamtSlot[V]{node: child}
			// Pull a lone entry back up so lookups stay short.
			if child.bucket == nil && len(child.children) == 1 && child.children[0].entry != nil {
				replacement = child.children[0]
			}
		}
	}
	out := &hamtNode[V]{bitmap: n.bitmap}
	if replacement.node == nil && replacement.entry == nil {
		out.bitmap &^= bit
		if out.bitmap == 0 {
			return nil, true
		}
		out.children = make([]hamtSlot[V], 0, len(n.children)-1)
		out.children = append(out.children, n.children[:idx]...)
		out.children = append(out.children, n.children[idx+1:]...)
		return out, true
	}
	out.children = make([]hamtSlot[V], len(n.children))
	copy(out.children, n.children)
	out.children[idx] = replacement
	return out, true
}

// each calls fn for every entry, in no particular order.
func (h *hamt[V]) each(fn func(key string, v V)) {
	var walk func(n *hamtNode[V])
	walk = func(n *hamtNode[V]) {
		if n == nil {
			return
		}
		for i := range n.bucket {
			fn(n.bucket[i].key, n.bucket[i].value)
		}
		for _, s := range n.children {
			if s.entry != nil {
				fn(s.entry.key, s.entry.value)
			} else {
				walk(s.node)
			}
		}
	}
	walk(h.root)
}
