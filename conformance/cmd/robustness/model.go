package main

// The sequential specification of etcd's key-value store that porcupine
// checks the recorded history against: a store revision, the current
// version of each hot key, and the set of live leases. It follows etcd's
// own definitions (server/etcdserver/apply, server/storage/mvcc):
//
//   - every request that changes something takes exactly the next
//     revision, and its response header carries it;
//   - a request that changes nothing (a Txn whose compare failed, a Delete
//     of a missing key, a Revoke of a lease without keys, a LeaseGrant)
//     answers the current revision;
//   - a Put creates the key (create revision = mod revision, version 1) or
//     bumps its version, and attaches it to the request's lease (0: none);
//   - a Compare on ModRevision of a missing key compares against 0;
//   - a Put with a lease that does not exist, and a Revoke of one, fail with
//     "requested lease not found" and change nothing;
//   - revoking a lease deletes every key attached to it, in one revision.
//
// A request whose outcome is unknown (an error other than "lease not
// found", or a timeout) may have been applied or not: the model is
// nondeterministic and allows both (porcupine's NondeterministicModel).

import (
	"fmt"
	"hash/fnv"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

type opKind uint8

const (
	opGet opKind = iota
	opList
	opPut
	opDelete
	opCAS
	opGrant
	opRevoke
)

var opKindNames = [...]string{"get", "list", "put", "delete", "cas", "grant", "revoke"}

func (k opKind) String() string { return opKindNames[k] }

func (k opKind) isWrite() bool { return k != opGet && k != opList }

// opInput is one request as the client sent it. Keys are indexes into the
// hot key list.
type opInput struct {
	Kind      opKind
	Key       int    // get, put, delete, cas
	Value     string // put, cas: a value never written before
	Lease     int64  // put (0: none), grant, revoke
	ExpectRev int64  // cas: If(ModRevision(key) == ExpectRev)
}

type outStatus uint8

const (
	statusOK            outStatus = iota
	statusLeaseNotFound           // "etcdserver: requested lease not found": a definite failure
	statusUnknown                 // any other error or a timeout: applied or not
)

// kv is one key's version, as a Range returns it; the zero value is a
// missing key (values are never empty here).
type kv struct {
	Value     string `json:"value,omitempty"`
	ModRev    int64  `json:"mod_revision,omitempty"`
	CreateRev int64  `json:"create_revision,omitempty"`
	Version   int64  `json:"version,omitempty"`
	Lease     int64  `json:"lease,omitempty"`
}

func (k kv) exists() bool { return k.ModRev != 0 }

func (k kv) String() string {
	if !k.exists() {
		return "<none>"
	}
	s := fmt.Sprintf("%q@mod=%d,create=%d,ver=%d", k.Value, k.ModRev, k.CreateRev, k.Version)
	if k.Lease != 0 {
		s += fmt.Sprintf(",lease=%x", k.Lease)
	}
	return s
}

// opOutput is what came back.
type opOutput struct {
	Status    outStatus
	Err       string // the error, for the report (unknown, lease not found)
	Rev       int64  // the response header's revision
	KV        kv     // get; cas when it failed (its Else Get)
	List      []kv   // list: one per hot key, zero for missing keys
	Succeeded bool   // cas
	Deleted   int64  // delete
}

// state is the model's state. It is never modified once built: steps copy.
type state struct {
	Rev    int64
	Keys   []kv
	Leases []int64 // live leases, sorted
}

func (s *state) leaseLive(id int64) bool {
	i := sort.Search(len(s.Leases), func(i int) bool { return s.Leases[i] >= id })
	return i < len(s.Leases) && s.Leases[i] == id
}

func (s *state) clone() *state {
	n := &state{Rev: s.Rev, Keys: make([]kv, len(s.Keys)), Leases: s.Leases}
	copy(n.Keys, s.Keys)
	return n
}

func (s *state) withLease(id int64) []int64 {
	l := make([]int64, 0, len(s.Leases)+1)
	l = append(l, s.Leases...)
	l = append(l, id)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}

func (s *state) withoutLease(id int64) []int64 {
	l := make([]int64, 0, len(s.Leases))
	for _, x := range s.Leases {
		if x != id {
			l = append(l, x)
		}
	}
	return l
}

func statesEqual(a, b *state) bool {
	if a.Rev != b.Rev || len(a.Keys) != len(b.Keys) || len(a.Leases) != len(b.Leases) {
		return false
	}
	for i := range a.Keys {
		if a.Keys[i] != b.Keys[i] {
			return false
		}
	}
	for i := range a.Leases {
		if a.Leases[i] != b.Leases[i] {
			return false
		}
	}
	return true
}

func stateHash(s *state) uint64 {
	h := fnv.New64a()
	var b [8]byte
	put := func(x int64) {
		for i := 0; i < 8; i++ {
			b[i] = byte(x >> (8 * i))
		}
		h.Write(b[:])
	}
	put(s.Rev)
	for _, k := range s.Keys {
		h.Write([]byte(k.Value))
		put(k.ModRev)
		put(k.CreateRev)
		put(k.Version)
		put(k.Lease)
	}
	for _, l := range s.Leases {
		put(l)
	}
	return h.Sum64()
}

// response is what the model says a request answers in a given state.
type response struct {
	status    outStatus
	rev       int64
	kv        kv
	list      []kv
	succeeded bool
	deleted   int64
}

// apply runs a request on a state: the next state (s itself if nothing
// changed) and the response etcd would give.
func apply(s *state, in *opInput) (*state, response) {
	switch in.Kind {
	case opGet:
		return s, response{rev: s.Rev, kv: s.Keys[in.Key]}
	case opList:
		return s, response{rev: s.Rev, list: s.Keys}
	case opPut:
		if in.Lease != 0 && !s.leaseLive(in.Lease) {
			return s, response{status: statusLeaseNotFound}
		}
		n := put(s, in.Key, in.Value, in.Lease)
		return n, response{rev: n.Rev}
	case opDelete:
		if !s.Keys[in.Key].exists() {
			return s, response{rev: s.Rev}
		}
		n := s.clone()
		n.Rev++
		n.Keys[in.Key] = kv{}
		return n, response{rev: n.Rev, deleted: 1}
	case opCAS:
		if s.Keys[in.Key].ModRev != in.ExpectRev {
			return s, response{rev: s.Rev, kv: s.Keys[in.Key]}
		}
		n := put(s, in.Key, in.Value, 0)
		return n, response{rev: n.Rev, succeeded: true}
	case opGrant:
		if s.leaseLive(in.Lease) {
			// etcd answers "lease already exists"; ids here are never
			// reused, so an OK answer in this state is impossible.
			return s, response{status: statusUnknown}
		}
		n := &state{Rev: s.Rev, Keys: s.Keys, Leases: s.withLease(in.Lease)}
		return n, response{rev: n.Rev}
	case opRevoke:
		if !s.leaseLive(in.Lease) {
			return s, response{status: statusLeaseNotFound}
		}
		n := s.clone()
		n.Leases = s.withoutLease(in.Lease)
		deleted := false
		for i, k := range n.Keys {
			if k.exists() && k.Lease == in.Lease {
				n.Keys[i] = kv{}
				deleted = true
			}
		}
		if deleted {
			n.Rev++
		}
		return n, response{rev: n.Rev}
	}
	panic(fmt.Sprintf("unknown op kind %d", in.Kind))
}

func put(s *state, key int, value string, lease int64) *state {
	n := s.clone()
	n.Rev++
	old := s.Keys[key]
	nk := kv{Value: value, ModRev: n.Rev, CreateRev: n.Rev, Version: 1, Lease: lease}
	if old.exists() {
		nk.CreateRev = old.CreateRev
		nk.Version = old.Version + 1
	}
	n.Keys[key] = nk
	return n
}

// matches says whether an observed (definite) output is the response the
// model computed.
func matches(in *opInput, out *opOutput, r response) bool {
	if out.Status != r.status {
		return false
	}
	if r.status == statusLeaseNotFound {
		return true // an error carries no header
	}
	if out.Rev != r.rev {
		return false
	}
	switch in.Kind {
	case opGet:
		return out.KV == r.kv
	case opList:
		if len(out.List) != len(r.list) {
			return false
		}
		for i := range r.list {
			if out.List[i] != r.list[i] {
				return false
			}
		}
		return true
	case opDelete:
		return out.Deleted == r.deleted
	case opCAS:
		if out.Succeeded != r.succeeded {
			return false
		}
		return r.succeeded || out.KV == r.kv
	}
	return true
}

// step is the nondeterministic step: every state the request can lead to
// with this output (none: the output is impossible in this state).
func step(s *state, in *opInput, out *opOutput) []*state {
	n, r := apply(s, in)
	if out.Status == statusUnknown {
		// Not applied, or applied (if applying it can succeed at all).
		if n == s || r.status != statusOK {
			return []*state{s}
		}
		return []*state{s, n}
	}
	if !matches(in, out, r) {
		return nil
	}
	return []*state{n}
}

func newModel(nkeys int, keyNames []string) porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []interface{} {
			return []interface{}{&state{Rev: 1, Keys: make([]kv, nkeys)}}
		},
		Step: func(st, input, output interface{}) []interface{} {
			next := step(st.(*state), input.(*opInput), output.(*opOutput))
			res := make([]interface{}, len(next))
			for i, n := range next {
				res[i] = n
			}
			return res
		},
		Equal: func(a, b interface{}) bool { return statesEqual(a.(*state), b.(*state)) },
		Hash:  func(st interface{}) uint64 { return stateHash(st.(*state)) },
		DescribeOperation: func(input, output interface{}) string {
			return describeOp(input.(*opInput), output.(*opOutput), keyNames)
		},
		DescribeState: func(st interface{}) string {
			return describeState(st.(*state), keyNames)
		},
	}
	return nm.ToModel()
}

func describeState(s *state, keyNames []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rev=%d", s.Rev)
	for i, k := range s.Keys {
		if k.exists() {
			fmt.Fprintf(&b, " %s=%s", keyNames[i], k)
		}
	}
	if len(s.Leases) > 0 {
		b.WriteString(" leases=")
		for i, l := range s.Leases {
			if i > 0 {
				b.WriteString(",")
			}
			fmt.Fprintf(&b, "%x", l)
		}
	}
	return b.String()
}

func describeInput(in *opInput, keyNames []string) string {
	switch in.Kind {
	case opGet:
		return fmt.Sprintf("Get(%s)", keyNames[in.Key])
	case opList:
		return "Get(prefix)"
	case opPut:
		if in.Lease != 0 {
			return fmt.Sprintf("Put(%s, %q, lease=%x)", keyNames[in.Key], in.Value, in.Lease)
		}
		return fmt.Sprintf("Put(%s, %q)", keyNames[in.Key], in.Value)
	case opDelete:
		return fmt.Sprintf("Delete(%s)", keyNames[in.Key])
	case opCAS:
		return fmt.Sprintf("Txn(If(ModRevision(%s)==%d) Then(Put(%s, %q)) Else(Get(%s)))",
			keyNames[in.Key], in.ExpectRev, keyNames[in.Key], in.Value, keyNames[in.Key])
	case opGrant:
		return fmt.Sprintf("LeaseGrant(id=%x)", in.Lease)
	case opRevoke:
		return fmt.Sprintf("LeaseRevoke(id=%x)", in.Lease)
	}
	return "?"
}

func describeOutput(in *opInput, out *opOutput) string {
	switch out.Status {
	case statusUnknown:
		return "unknown outcome (" + out.Err + ")"
	case statusLeaseNotFound:
		return "lease not found"
	}
	switch in.Kind {
	case opGet:
		return fmt.Sprintf("%s, rev=%d", out.KV, out.Rev)
	case opList:
		parts := make([]string, len(out.List))
		for i, k := range out.List {
			parts[i] = k.String()
		}
		return fmt.Sprintf("[%s], rev=%d", strings.Join(parts, " "), out.Rev)
	case opDelete:
		return fmt.Sprintf("deleted=%d, rev=%d", out.Deleted, out.Rev)
	case opCAS:
		if out.Succeeded {
			return fmt.Sprintf("succeeded, rev=%d", out.Rev)
		}
		return fmt.Sprintf("failed, else %s, rev=%d", out.KV, out.Rev)
	}
	return fmt.Sprintf("ok, rev=%d", out.Rev)
}

func describeOp(in *opInput, out *opOutput, keyNames []string) string {
	return describeInput(in, keyNames) + " -> " + describeOutput(in, out)
}
