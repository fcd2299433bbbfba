package main

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// record is one operation of the history: what was asked, when (call and
// return, nanoseconds since the run started, on the monotonic clock), of
// which instance, and what came back.
type record struct {
	Client   int
	Instance int
	Input    opInput
	Output   opOutput
	Call     int64
	Return   int64
}

const (
	opTimeout = 5 * time.Second // per request
	leaseTTL  = 300             // seconds: nothing expires during a run
	maxLeases = 3               // live leases per client
)

// trafficClient is one etcd client, bound to one instance, doing random
// operations on the hot keys until the load ends.
type trafficClient struct {
	id   int
	inst *instance
	cli  *clientv3.Client
	// Gets and lists go here: cli, or with -cross-reads a client of
	// another instance, so that what a client wrote on one instance is
	// read back through another.
	readCli *clientv3.Client
	// Raw: clientv3's Lease API retries a Revoke whose answer was lost,
	// which would turn "revoked" into "not found". Calls wait for a
	// connection, as clientv3's own do (grpc.WaitForReady).
	leaseCli pb.LeaseClient
	rng      *rand.Rand
	keys     []string
	prefix   string
	clock    func() int64

	counter int
	lastRev []int64 // the key's mod revision as last seen (0: missing)
	leases  []int64 // granted (answer seen) and not known revoked
	revoked []int64 // revoked for sure: Puts with these must fail
	// A Revoke whose outcome is unknown is repeated until it is known,
	// so that the model is not left with a lease that may or may not be.
	pendingRevoke int64
	nextLease     int64

	ops []*record
}

func newTrafficClient(id int, inst *instance, cli, readCli *clientv3.Client, seed int64, keys []string, prefix string, clock func() int64) *trafficClient {
	return &trafficClient{
		id: id, inst: inst, cli: cli, readCli: readCli,
		leaseCli: pb.NewLeaseClient(cli.ActiveConnection()),
		rng:      rand.New(rand.NewSource(seed)),
		keys:     keys, prefix: prefix, clock: clock,
		lastRev: make([]int64, len(keys)),
	}
}

func (c *trafficClient) run(ctx context.Context, pause time.Duration) {
	for ctx.Err() == nil {
		r := c.next()
		c.ops = append(c.ops, r)
		if r.Output.Status == statusUnknown {
			// Errors come in bursts (an instance or the database is down):
			// back off so that the history does not fill with attempts.
			sleepCtx(ctx, time.Duration(100+c.rng.Intn(150))*time.Millisecond)
		} else if pause > 0 {
			sleepCtx(ctx, pause)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (c *trafficClient) value() string {
	c.counter++
	return fmt.Sprintf("c%d-%d", c.id, c.counter)
}

// next picks and performs one operation.
func (c *trafficClient) next() *record {
	if c.pendingRevoke != 0 {
		return c.revoke(c.pendingRevoke)
	}
	key := c.rng.Intn(len(c.keys))
	switch n := c.rng.Intn(100); {
	case n < 25:
		return c.get(key)
	case n < 30:
		return c.list()
	case n < 48:
		return c.put(key, 0)
	case n < 56:
		if len(c.leases) == 0 {
			return c.grant()
		}
		return c.put(key, c.leases[c.rng.Intn(len(c.leases))])
	case n < 58:
		if len(c.revoked) == 0 {
			return c.put(key, 0)
		}
		// A lease revoked for sure: the Put must fail and change nothing.
		return c.put(key, c.revoked[c.rng.Intn(len(c.revoked))])
	case n < 66:
		return c.del(key)
	case n < 88:
		return c.cas(key)
	case n < 94:
		if len(c.leases) >= maxLeases {
			return c.revoke(c.leases[c.rng.Intn(len(c.leases))])
		}
		return c.grant()
	default:
		if len(c.leases) == 0 {
			return c.grant()
		}
		return c.revoke(c.leases[c.rng.Intn(len(c.leases))])
	}
}

// do times one request.
func (c *trafficClient) do(in opInput, f func(ctx context.Context) (opOutput, error)) *record {
	r := &record{Client: c.id, Instance: c.inst.id, Input: in}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	r.Call = c.clock()
	out, err := f(ctx)
	r.Return = c.clock()
	cancel()
	if err != nil {
		out = opOutput{Status: classify(err), Err: err.Error()}
	}
	r.Output = out
	return r
}

// classify: "requested lease not found" is a definite failure that changed
// nothing; anything else (unavailable, request timed out, a deadline, a
// reset connection) may or may not have been applied.
func classify(err error) outStatus {
	if strings.Contains(err.Error(), "requested lease not found") {
		return statusLeaseNotFound
	}
	return statusUnknown
}

func toKV(k interface {
	GetValue() []byte
	GetModRevision() int64
	GetCreateRevision() int64
	GetVersion() int64
	GetLease() int64
}) kv {
	return kv{Value: string(k.GetValue()), ModRev: k.GetModRevision(), CreateRev: k.GetCreateRevision(),
		Version: k.GetVersion(), Lease: k.GetLease()}
}

func (c *trafficClient) get(key int) *record {
	r := c.do(opInput{Kind: opGet, Key: key}, func(ctx context.Context) (opOutput, error) {
		resp, err := c.readCli.Get(ctx, c.keys[key])
		if err != nil {
			return opOutput{}, err
		}
		out := opOutput{Rev: resp.Header.GetRevision()}
		if len(resp.Kvs) > 1 {
			return opOutput{}, fmt.Errorf("protocol: Get(%s) returned %d kvs", c.keys[key], len(resp.Kvs))
		}
		if len(resp.Kvs) == 1 {
			out.KV = toKV(resp.Kvs[0])
		}
		return out, nil
	})
	if r.Output.Status == statusOK {
		c.lastRev[key] = r.Output.KV.ModRev
	}
	return r
}

func (c *trafficClient) list() *record {
	r := c.do(opInput{Kind: opList}, func(ctx context.Context) (opOutput, error) {
		return listKeys(ctx, c.readCli, c.prefix, c.keys)
	})
	if r.Output.Status == statusOK {
		for i, k := range r.Output.List {
			c.lastRev[i] = k.ModRev
		}
	}
	return r
}

// listKeys reads the whole prefix: one kv per hot key.
func listKeys(ctx context.Context, cli *clientv3.Client, prefix string, keys []string) (opOutput, error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return opOutput{}, err
	}
	out := opOutput{Rev: resp.Header.GetRevision(), List: make([]kv, len(keys))}
	for _, k := range resp.Kvs {
		i := keyIndex(keys, string(k.Key))
		if i < 0 {
			return opOutput{}, fmt.Errorf("protocol: Get(prefix) returned unexpected key %q", k.Key)
		}
		out.List[i] = toKV(k)
	}
	return out, nil
}

func keyIndex(keys []string, k string) int {
	for i, x := range keys {
		if x == k {
			return i
		}
	}
	return -1
}

func (c *trafficClient) put(key int, lease int64) *record {
	in := opInput{Kind: opPut, Key: key, Value: c.value(), Lease: lease}
	r := c.do(in, func(ctx context.Context) (opOutput, error) {
		var opts []clientv3.OpOption
		if lease != 0 {
			opts = append(opts, clientv3.WithLease(clientv3.LeaseID(lease)))
		}
		resp, err := c.cli.Put(ctx, c.keys[key], in.Value, opts...)
		if err != nil {
			return opOutput{}, err
		}
		return opOutput{Rev: resp.Header.GetRevision()}, nil
	})
	switch r.Output.Status {
	case statusOK:
		c.lastRev[key] = r.Output.Rev
	case statusLeaseNotFound:
		c.forgetLease(lease)
	}
	return r
}

func (c *trafficClient) del(key int) *record {
	r := c.do(opInput{Kind: opDelete, Key: key}, func(ctx context.Context) (opOutput, error) {
		resp, err := c.cli.Delete(ctx, c.keys[key])
		if err != nil {
			return opOutput{}, err
		}
		return opOutput{Rev: resp.Header.GetRevision(), Deleted: resp.Deleted}, nil
	})
	if r.Output.Status == statusOK {
		c.lastRev[key] = 0
	}
	return r
}

// cas is Txn(If(ModRevision(k) == last seen) Then(Put(k, v)) Else(Get(k))).
func (c *trafficClient) cas(key int) *record {
	in := opInput{Kind: opCAS, Key: key, Value: c.value(), ExpectRev: c.lastRev[key]}
	k := c.keys[key]
	r := c.do(in, func(ctx context.Context) (opOutput, error) {
		resp, err := c.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(k), "=", in.ExpectRev)).
			Then(clientv3.OpPut(k, in.Value)).
			Else(clientv3.OpGet(k)).
			Commit()
		if err != nil {
			return opOutput{}, err
		}
		out := opOutput{Rev: resp.Header.GetRevision(), Succeeded: resp.Succeeded}
		if !resp.Succeeded {
			if len(resp.Responses) != 1 || resp.Responses[0].GetResponseRange() == nil {
				return opOutput{}, fmt.Errorf("protocol: failed Txn answered %d responses without its Get", len(resp.Responses))
			}
			kvs := resp.Responses[0].GetResponseRange().Kvs
			if len(kvs) > 1 {
				return opOutput{}, fmt.Errorf("protocol: Txn's Get(%s) returned %d kvs", k, len(kvs))
			}
			if len(kvs) == 1 {
				out.KV = toKV(kvs[0])
			}
		}
		return out, nil
	})
	if r.Output.Status == statusOK {
		if r.Output.Succeeded {
			c.lastRev[key] = r.Output.Rev
		} else {
			c.lastRev[key] = r.Output.KV.ModRev
		}
	}
	return r
}

func (c *trafficClient) grant() *record {
	c.nextLease++
	// Ids chosen here (etcd lets the client choose): never reused, and
	// each names its client.
	id := int64(c.id+1)<<32 | c.nextLease
	r := c.do(opInput{Kind: opGrant, Lease: id}, func(ctx context.Context) (opOutput, error) {
		resp, err := c.leaseCli.LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: leaseTTL, ID: id}, grpc.WaitForReady(true))
		if err != nil {
			return opOutput{}, err
		}
		if resp.Error != "" {
			return opOutput{}, fmt.Errorf("LeaseGrant: %s", resp.Error)
		}
		if resp.ID != id {
			return opOutput{}, fmt.Errorf("protocol: LeaseGrant(id=%x) granted id %x", id, resp.ID)
		}
		return opOutput{Rev: resp.Header.GetRevision()}, nil
	})
	// A grant whose outcome is unknown is never used: nothing can then
	// tell whether it exists, and the checker leaves it out.
	if r.Output.Status == statusOK {
		c.leases = append(c.leases, id)
	}
	return r
}

func (c *trafficClient) revoke(id int64) *record {
	r := c.do(opInput{Kind: opRevoke, Lease: id}, func(ctx context.Context) (opOutput, error) {
		resp, err := c.leaseCli.LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id}, grpc.WaitForReady(true))
		if err != nil {
			return opOutput{}, err
		}
		return opOutput{Rev: resp.Header.GetRevision()}, nil
	})
	switch r.Output.Status {
	case statusOK, statusLeaseNotFound:
		c.pendingRevoke = 0
		c.forgetLease(id)
	default:
		c.pendingRevoke = id
	}
	return r
}

// forgetLease moves a lease known to be gone to the revoked list.
func (c *trafficClient) forgetLease(id int64) {
	for i, l := range c.leases {
		if l == id {
			c.leases = append(c.leases[:i], c.leases[i+1:]...)
			c.revoked = append(c.revoked, id)
			return
		}
	}
}
