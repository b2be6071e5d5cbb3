// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// kubenat's eBPF NAT for external traffic: tc ingress programs that
// translate new IPv4 TCP and UDP connections from outside the node to a
// Service's external frontends (nodeIP:NodePort, externalIPs, LoadBalancer
// IPs) and their replies, with connection state of their own, so that the
// packets never enter netfilter (no conntrack entry, no nftables rule).
//
// kubenat_external runs on the node's external interfaces (those holding a
// node address). For a packet arriving there it:
//   1. translates the packet of a connection it NATed (one lookup in the
//      conns map finds either direction: the client's next packet, or the
//      reply of an endpoint on another node);
//   2. for a new connection (a TCP SYN, any UDP datagram) to a frontend of
//      the frontends map, picks one of its endpoints at random, SNATs the
//      source to the node's address when the frontend says so
//      (externalTrafficPolicy Cluster), records both directions, and
//      translates it.
// kubenat_pod runs on the pods' interfaces and translates replies: a
// pod's reply to a connection NATed by kubenat_external. With direct
// pod-to-pod delivery on (the direct map), it also puts TCP between two of
// this node's pods that no rule of kubenat's can have translated (the
// packets nftables' untracked chain leaves untracked) straight into the
// destination pod's namespace, past the bridge and netfilter.
//
// A translated packet gets its TTL decremented and is sent straight out of
// the interface the FIB names for its new destination (bpf_redirect, or
// bpf_redirect_neigh when the neighbour is not resolved). Everything the
// programs do not translate (other traffic, frontends the maps do not
// hold, IP options, fragments, a TTL about to expire, a FIB miss, a source
// port that cannot be allocated, a mid-stream TCP packet of a connection
// the programs do not know) goes on to the next tc filter and the stack,
// where nftables serves it as before: the programs only ever accelerate.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif

#define NSEC 1000000000ULL

// A frontend: destination address and port (network order) and protocol.
struct frontend {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

// Service flags.
#define SVC_SNAT  1 // rewrite the source to the node's address
#define SVC_LOCAL 2 // externalTrafficPolicy Local: leave the node's own pods' traffic to the stack

// A frontend's current backend group: slots 0..count-1 of group id, and how
// new connections through it are translated. Userspace writes a new group
// under a fresh id, then swaps this value in one update, then deletes the
// old group's slots.
struct service {
	__u32 id;
	__u16 count;
	__u16 flags;
};

struct slot {
	__u32 id;
	__u32 index;
};

// A backend: pod address and port (network order).
struct backend {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

// A connection's addresses and ports as one direction's packets carry them
// (network order).
struct tuple {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

// Connection flags, kept alike in both directions' entries.
#define CT_REPLIED 1   // a reply was seen
#define CT_FIN_FWD 2   // the client sent a FIN
#define CT_FIN_REV 4   // the endpoint sent a FIN

// One direction of a translated connection, in the conns map: the forward
// entry is keyed by the client's packets as they arrive, the reply entry
// by the endpoint's replies as they leave it (so that one lookup finds
// either); nat is what such a packet is rewritten to.
struct ct {
	__u64 expires;   // bpf_ktime_get_ns() past which the entry is dead
	__u64 synced;    // when the other direction's expiry was last pushed
	struct tuple nat;
	__u32 lifetime;  // seconds, from the connection's state
	__u16 flags;
	__u8 reply;      // 1: the reply entry
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct frontend);
	__type(value, struct service);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct slot);
	__type(value, struct backend);
} backends SEC(".maps");

// The sources nftables takes for this node's pods (detectLocalMode by
// CIDR): for them, externalTrafficPolicy Local means the cluster
// endpoints, not the local ones, so the programs leave them to the stack.
struct pod_cidr {
	__u32 prefixlen;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pod_cidr);
	__type(value, __u8);
} local_pods SEC(".maps");

// The node side of each local pod's veth (or netkit) interface, by the
// pod's address, as the node's neighbour and bridge tables name it: a
// packet for the pod is put straight into the pod's namespace
// (bpf_redirect_peer), past the bridge and the interface's queue. Pods
// missing here, or whose route now leads elsewhere, are reached through
// the FIB's interface.
struct pod_link {
	__u32 ifindex; // the node side of the pod's interface
	__u32 via;     // the interface the FIB names for the pod: its bridge, or ifindex
	__u8 mac[ETH_ALEN]; // the pod's own MAC address
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pod_link);
} pod_links SEC(".maps");

// The interfaces this node's pods are reached through (by ifindex): the
// node side of their interfaces, with the bridge each is a port of, and
// the bridges those are ports of, with themselves.
struct pod_iface {
	__u32 bridge;              // 0: none
	__u8 bridge_mac[ETH_ALEN]; // the bridge's MAC address
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pod_iface);
} pod_ifaces SEC(".maps");

// Direct pod-to-pod delivery: on when on is 1, for TCP between addresses
// of the cluster CIDR net/mask (network order), which is where nftables'
// untracked chain leaves pod TCP untracked.
struct direct_cfg {
	__u32 on;
	__u32 net;
	__u32 mask;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct direct_cfg);
} direct SEC(".maps");

// The endpoints (struct backend: address and port) whose TCP to and from pods stays tracked (nftables'
// tracked-endpoints set: the kernel's rules may DNAT pod traffic to them
// without masquerade, so their replies need conntrack): direct delivery
// leaves their packets to the stack.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct backend);
	__type(value, __u8);
} tracked SEC(".maps");

// The address SNAT uses on each external interface (by ifindex).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} ifaddrs SEC(".maps");

// The connections: two entries each. Least recently used entries make
// room when it is full.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 19);
	__type(key, struct tuple);
	__type(value, struct ct);
} conns SEC(".maps");

// The source ports SNAT allocates from (host order, inclusive): the loader
// sets a range the node's own connections do not use.
volatile const __u16 snat_port_min = 1024;
volatile const __u16 snat_port_max = 32767;

// Lifetimes in seconds, as conntrack's with kube-proxy's settings: 120 s
// until answered, 24 h established, 1 h half-closed (close_wait), 120 s
// once closed both ways (time_wait: the endpoint that closed first may
// hold the tuple that long, so it is not reused before); UDP 30 s, 120 s
// once answered. A reset deletes both entries at once.
#define TCP_SYN_SENT  120
#define TCP_ESTABLISHED (24 * 3600)
#define TCP_HALF_CLOSED 3600
#define TCP_TIME_WAIT 120
#define UDP_NEW       30
#define UDP_STREAM    120

#define OFF_IP   ETH_HLEN
#define OFF_L4   (ETH_HLEN + sizeof(struct iphdr))
#define OFF_IP_CSUM  (OFF_IP + offsetof(struct iphdr, check))
#define OFF_TTL   (OFF_IP + offsetof(struct iphdr, ttl))
#define OFF_SADDR (OFF_IP + offsetof(struct iphdr, saddr))
#define OFF_DADDR (OFF_IP + offsetof(struct iphdr, daddr))
#define OFF_SPORT OFF_L4
#define OFF_DPORT (OFF_L4 + 2)

// Parsed is what a program needs of a packet.
struct parsed {
	struct tuple t;
	__u8 tcp_flags; // TCP flag bits (FIN 1, SYN 2, RST 4, ACK 16)
	__u8 ttl;
	__u8 tos;
	__u32 csum_off; // L4 checksum offset
	__u64 csum_flags;
};

#define F_FIN 0x01
#define F_SYN 0x02
#define F_RST 0x04
#define F_ACK 0x10

// parse fills p for an IPv4 TCP or UDP packet without options or
// fragmentation; returns 0 otherwise.
static __always_inline int parse(struct __sk_buff *skb, struct parsed *p)
{
	// Headers outside the linear data (a driver's header split) are
	// pulled in first: a known connection's packet must not reach the
	// stack for that.
	if ((void *)(long)skb->data + OFF_L4 + sizeof(struct tcphdr) > (void *)(long)skb->data_end &&
	    skb->len >= OFF_L4 + sizeof(struct tcphdr))
		bpf_skb_pull_data(skb, OFF_L4 + sizeof(struct tcphdr));
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->version != 4)
		return 0;
	if (ip->frag_off & bpf_htons(0x3fff)) // MF or an offset
		return 0;
	__builtin_memset(p, 0, sizeof(*p));
	p->t.saddr = ip->saddr;
	p->t.daddr = ip->daddr;
	p->t.proto = ip->protocol;
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = (void *)(ip + 1);
		if ((void *)(th + 1) > end)
			return 0;
		p->t.sport = th->source;
		p->t.dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->csum_off = OFF_L4 + offsetof(struct tcphdr, check);
		return 1;
	}
	if (ip->protocol == IPPROTO_UDP) {
		struct udphdr *uh = (void *)(ip + 1);
		if ((void *)(uh + 1) > end)
			return 0;
		p->t.sport = uh->source;
		p->t.dport = uh->dest;
		p->csum_off = OFF_L4 + offsetof(struct udphdr, check);
		p->csum_flags = BPF_F_MARK_MANGLED_0;
		return 1;
	}
	return 0;
}

// lifetime returns how long a connection in state flags lives without
// packets, in seconds.
static __always_inline __u32 lifetime(__u8 proto, __u32 flags)
{
	if (proto == IPPROTO_UDP)
		return (flags & CT_REPLIED) ? UDP_STREAM : UDP_NEW;
	if ((flags & (CT_FIN_FWD | CT_FIN_REV)) == (CT_FIN_FWD | CT_FIN_REV))
		return TCP_TIME_WAIT;
	if (flags & (CT_FIN_FWD | CT_FIN_REV))
		return TCP_HALF_CLOSED;
	if (flags & CT_REPLIED)
		return TCP_ESTABLISHED;
	return TCP_SYN_SENT;
}

// tcp_events returns the connection flags a TCP packet adds; reply says
// which direction it travels.
static __always_inline __u32 tcp_events(struct parsed *p, int reply)
{
	__u32 f = 0;
	if (p->t.proto != IPPROTO_TCP)
		return 0;
	if (p->tcp_flags & F_FIN)
		f |= reply ? CT_FIN_REV : CT_FIN_FWD;
	return f;
}

// reversed returns the tuple of the packets travelling the other way.
static __always_inline struct tuple reversed(struct tuple *t)
{
	struct tuple r = {
		.saddr = t->daddr,
		.daddr = t->saddr,
		.sport = t->dport,
		.dport = t->sport,
		.proto = t->proto,
	};
	return r;
}

// alive reports whether e is a live entry.
static __always_inline int alive(struct ct *e, __u64 now)
{
	return e && e->expires > now;
}

// same reports whether two tuples are equal.
static __always_inline int same(struct tuple *a, struct tuple *b)
{
	return a->saddr == b->saddr && a->daddr == b->daddr && a->sport == b->sport &&
	       a->dport == b->dport && a->proto == b->proto;
}

// twin returns the other entry of the connection whose entry e is keyed
// key (twin_key: reversed(e->nat)), or NULL when there is none: missing,
// or since taken by another connection (a tuple is claimed again once its
// connection is dead, while the other entry may linger).
static __always_inline struct ct *twin(struct tuple *key, struct ct *e, struct tuple *twin_key)
{
	struct ct *o = bpf_map_lookup_elem(&conns, twin_key);
	if (!o)
		return 0;
	struct tuple back = reversed(&o->nat);
	if (!same(&back, key) || o->reply == e->reply)
		return 0;
	return o;
}

// forget deletes the connection whose entry e is keyed key: e, and the
// other entry when it is still e's.
static __always_inline void forget(struct tuple *key, struct ct *e)
{
	struct tuple twin_key = reversed(&e->nat);
	if (twin(key, e, &twin_key))
		bpf_map_delete_elem(&conns, &twin_key);
	bpf_map_delete_elem(&conns, key);
}

// track updates entry e (keyed p->t) for a packet of p: new flags, a
// new lifetime, and, when the state changed or a second has passed, the
// other direction's entry too.
static __always_inline void track(struct ct *e, struct parsed *p, __u64 now)
{
	int reply = e->reply;
	__u32 flags = e->flags | tcp_events(p, reply) | (reply ? CT_REPLIED : 0);
	int changed = flags != e->flags;
	if (changed) {
		e->flags = flags;
		e->lifetime = lifetime(p->t.proto, flags);
	}
	e->expires = now + (__u64)e->lifetime * NSEC;
	if (!changed && now - e->synced < NSEC)
		return;
	e->synced = now;
	struct tuple twin_key = reversed(&e->nat);
	struct ct *o = twin(&p->t, e, &twin_key);
	if (!o)
		return;
	o->flags |= flags;
	o->lifetime = lifetime(p->t.proto, o->flags);
	o->expires = e->expires;
	o->synced = now;
}

// rewrite changes the packet's addresses and ports from those of p to
// those of to, fixing the checksums.
static __always_inline int rewrite(struct __sk_buff *skb, struct parsed *p, struct tuple *to)
{
	__u64 l4 = p->csum_flags;
	if (p->t.saddr != to->saddr) {
		if (bpf_l4_csum_replace(skb, p->csum_off, p->t.saddr, to->saddr, l4 | BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l3_csum_replace(skb, OFF_IP_CSUM, p->t.saddr, to->saddr, 4) ||
		    bpf_skb_store_bytes(skb, OFF_SADDR, &to->saddr, 4, 0))
			return -1;
	}
	if (p->t.daddr != to->daddr) {
		if (bpf_l4_csum_replace(skb, p->csum_off, p->t.daddr, to->daddr, l4 | BPF_F_PSEUDO_HDR | 4) ||
		    bpf_l3_csum_replace(skb, OFF_IP_CSUM, p->t.daddr, to->daddr, 4) ||
		    bpf_skb_store_bytes(skb, OFF_DADDR, &to->daddr, 4, 0))
			return -1;
	}
	if (p->t.sport != to->sport) {
		if (bpf_l4_csum_replace(skb, p->csum_off, p->t.sport, to->sport, l4 | 2) ||
		    bpf_skb_store_bytes(skb, OFF_SPORT, &to->sport, 2, 0))
			return -1;
	}
	if (p->t.dport != to->dport) {
		if (bpf_l4_csum_replace(skb, p->csum_off, p->t.dport, to->dport, l4 | 2) ||
		    bpf_skb_store_bytes(skb, OFF_DPORT, &to->dport, 2, 0))
			return -1;
	}
	// The TTL shares its checksum word with the protocol.
	__u16 old = bpf_htons(((__u16)p->ttl << 8) | p->t.proto);
	__u16 new = bpf_htons(((__u16)(p->ttl - 1) << 8) | p->t.proto);
	__u8 ttl = p->ttl - 1;
	if (bpf_l3_csum_replace(skb, OFF_IP_CSUM, old, new, 2) ||
	    bpf_skb_store_bytes(skb, OFF_TTL, &ttl, 1, 0))
		return -1;
	return 0;
}

// route looks up where a packet with tuple t, arriving on ifindex, goes.
// It returns 1 and fills fib when it leaves through an interface, with the
// neighbour resolved or not (*neigh = 0 then); 0 when the stack must
// decide (local delivery, unreachable, a forwarding-disabled interface).
static __always_inline int route(struct __sk_buff *skb, struct parsed *p, struct tuple *t,
				 struct bpf_fib_lookup *fib, int *neigh)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->tos = p->tos;
	fib->l4_protocol = t->proto;
	fib->sport = t->sport;
	fib->dport = t->dport;
	// No tot_len: the kernel then checks the packet against the egress
	// MTU itself, knowing GSO packets (a 64 KB GRO or TSO super-packet
	// is forwardable when its segments are).
	fib->ipv4_src = t->saddr;
	fib->ipv4_dst = t->daddr;
	fib->ifindex = skb->ingress_ifindex;
	long rc = bpf_fib_lookup(skb, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		*neigh = 1;
		return 1;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		*neigh = 0;
		return 1;
	}
	return 0;
}

// forward sends the rewritten packet, now addressed to daddr, out of the
// FIB's interface, or into a local pod's namespace when pod_links names
// its interface.
static __always_inline int forward(struct __sk_buff *skb, struct bpf_fib_lookup *fib, int neigh, __u32 daddr)
{
	if (!neigh)
		return bpf_redirect_neigh(fib->ifindex, 0, 0, 0);
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), fib->dmac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), fib->smac, ETH_ALEN, 0))
		return TC_ACT_SHOT;
	struct pod_link *link = bpf_map_lookup_elem(&pod_links, &daddr);
	if (link && link->via == fib->ifindex)
		return bpf_redirect_peer(link->ifindex, 0);
	return bpf_redirect(fib->ifindex, 0);
}

// translate rewrites a packet of a known connection to e->nat and sends it
// on; TC_ACT_UNSPEC leaves it to the stack unchanged. A reset ends the
// connection: both entries go once it is translated (a late packet of it
// meets the stack, which refuses it).
static __always_inline int translate(struct __sk_buff *skb, struct parsed *p, struct ct *e, __u64 now)
{
	struct tuple to = e->nat;
	struct bpf_fib_lookup fib;
	int neigh;
	if (p->ttl <= 1 || !route(skb, p, &to, &fib, &neigh))
		return TC_ACT_UNSPEC;
	if (p->t.proto == IPPROTO_TCP && (p->tcp_flags & F_RST))
		forget(&p->t, e);
	else
		track(e, p, now);
	if (rewrite(skb, p, &to))
		return TC_ACT_SHOT;
	return forward(skb, &fib, neigh, to.daddr);
}

// pick copies one of fe's endpoints and its service to *be and *svc; it
// returns 0 when the maps hold none. Looking the same keys up again after
// copying makes sure no replaced element was read (the kernel may reuse
// one at once for another key).
static __always_inline int pick(struct frontend *fe, struct service *svc, struct backend *be)
{
	for (int try = 0; try < 3; try++) {
		struct service *sp = bpf_map_lookup_elem(&frontends, fe);
		if (!sp)
			return 0;
		__u64 raw = *(volatile __u64 *)sp;
		__builtin_memcpy(svc, &raw, sizeof(*svc));
		if (svc->count == 0)
			return 0;
		struct slot s = {.id = svc->id, .index = bpf_get_prandom_u32() % svc->count};
		struct backend *bp = bpf_map_lookup_elem(&backends, &s);
		if (!bp)
			continue;
		__builtin_memcpy(be, bp, sizeof(*be));
		sp = bpf_map_lookup_elem(&frontends, fe);
		if (!sp || *(volatile __u32 *)&sp->id != svc->id)
			continue;
		if (bpf_map_lookup_elem(&backends, &s) != bp)
			continue;
		return 1;
	}
	return 0;
}

// claim records the reply entry for a new connection whose endpoint sees
// tuple nat; it returns 0 when a live connection already holds it.
static __always_inline int claim(struct tuple *nat, struct ct *rev, __u64 now)
{
	struct tuple key = reversed(nat);
	if (bpf_map_update_elem(&conns, &key, rev, BPF_NOEXIST) == 0)
		return 1;
	struct ct *old = bpf_map_lookup_elem(&conns, &key);
	if (!old || alive(old, now))
		return 0;
	// A dead connection's entry: it goes, with its other entry when that
	// is still its, and the tuple is claimed as if it had been free (two
	// CPUs cannot both win BPF_NOEXIST).
	forget(&key, old);
	return bpf_map_update_elem(&conns, &key, rev, BPF_NOEXIST) == 0;
}

// open starts translating a new connection to a frontend; TC_ACT_UNSPEC
// leaves it to the stack.
static __always_inline int open(struct __sk_buff *skb, struct parsed *p, __u64 now)
{
	if (p->t.proto == IPPROTO_TCP && (p->tcp_flags & (F_SYN | F_ACK | F_RST | F_FIN)) != F_SYN)
		return TC_ACT_UNSPEC;
	struct frontend fe = {.addr = p->t.daddr, .port = p->t.dport, .proto = p->t.proto};
	struct service svc;
	struct backend be;
	if (!pick(&fe, &svc, &be))
		return TC_ACT_UNSPEC;
	if (svc.flags & SVC_LOCAL) {
		struct pod_cidr src = {.prefixlen = 32, .addr = p->t.saddr};
		if (bpf_map_lookup_elem(&local_pods, &src))
			return TC_ACT_UNSPEC;
	}
	struct tuple nat = p->t;
	nat.daddr = be.addr;
	nat.dport = be.port;
	struct bpf_fib_lookup fib;
	int neigh;
	if (p->ttl <= 1 || !route(skb, p, &nat, &fib, &neigh))
		return TC_ACT_UNSPEC;
	__u32 flags = tcp_events(p, 0);
	struct ct fwd = {.synced = now, .nat = nat, .flags = flags,
			 .lifetime = lifetime(p->t.proto, flags)};
	fwd.expires = now + (__u64)fwd.lifetime * NSEC;
	struct ct rev = fwd;
	rev.nat = reversed(&p->t);
	rev.reply = 1;
	// The packet leaves through an external interface (an endpoint on
	// another node) or towards this node's pods (their bridge, or a
	// routed pod's own link). Anything else (a tunnel, an interface
	// without a node address) is left to the stack, whose masquerade and
	// return path know it.
	__u32 ifindex = fib.ifindex;
	__u32 *src = bpf_map_lookup_elem(&ifaddrs, &ifindex);
	if (!src) {
		if (!bpf_map_lookup_elem(&pod_ifaces, &ifindex))
			return TC_ACT_UNSPEC;
		// Towards a pod of this node: the address of the interface the
		// packet came in on, a node address, which the node's own
		// connections to its pods (from the bridge's address) and
		// nftables' masquerade towards them never use.
		ifindex = skb->ingress_ifindex;
		src = bpf_map_lookup_elem(&ifaddrs, &ifindex);
	}
	if (svc.flags & SVC_SNAT) {
		if (!src)
			return TC_ACT_UNSPEC;
		nat.saddr = *src;
		// Eight ports from a random one on (every port of a range
		// smaller than that).
		__u32 span = (__u32)snat_port_max - snat_port_min + 1;
		__u32 first = bpf_get_prandom_u32() % span;
		int got = 0;
		for (__u32 i = 0; i < 8 && !got; i++) {
			nat.sport = bpf_htons(snat_port_min + (first + i) % span);
			got = claim(&nat, &rev, now);
		}
		if (!got)
			return TC_ACT_UNSPEC;
		fwd.nat = nat;
	} else if (!claim(&nat, &rev, now)) {
		return TC_ACT_UNSPEC;
	}
	if (bpf_map_update_elem(&conns, &p->t, &fwd, BPF_ANY)) {
		struct tuple key = reversed(&nat);
		bpf_map_delete_elem(&conns, &key);
		return TC_ACT_UNSPEC;
	}
	if (rewrite(skb, p, &nat))
		return TC_ACT_SHOT;
	return forward(skb, &fib, neigh, nat.daddr);
}

SEC("tc")
int kubenat_external(struct __sk_buff *skb)
{
	struct parsed p;
	// Frames for another host (a promiscuous interface) are not ours.
	if (skb->pkt_type != PACKET_HOST || !parse(skb, &p))
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_ns();
	struct ct *e = bpf_map_lookup_elem(&conns, &p.t);
	if (alive(e, now)) {
		// An endpoint's reply (from another node), or the client's next
		// packet. A SYN for a tuple whose connection was answered is a
		// new connection reusing the client's port: the old one goes.
		int syn = p.t.proto == IPPROTO_TCP && (p.tcp_flags & (F_SYN | F_ACK)) == F_SYN;
		if (e->reply || !syn || !(e->flags & CT_REPLIED))
			return translate(skb, &p, e, now);
		forget(&p.t, e);
	}
	return open(skb, &p, now);
}

// mac_eq reports whether two MAC addresses are equal.
static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	for (int i = 0; i < ETH_ALEN; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

// deliver puts a pod's TCP packet to another pod of this node straight
// into that pod's namespace when direct delivery is on and no rule of
// kubenat's can have translated it: both addresses in the cluster CIDR,
// neither side a tracked endpoint, the destination a pod pod_links knows.
// The packet is what the node would have delivered:
//   - a frame addressed to the other pod's MAC, on the same bridge, goes
//     unchanged (the bridge would forward it);
//   - a packet addressed to the node (the MAC of the pod's link or of its
//     bridge: the pod's gateway) is routed as the stack would: the FIB
//     must name the link pod_links has for the destination, the TTL is
//     decremented and the MACs are the FIB's.
// Anything else (another bridge, an unresolved neighbour, a TTL about to
// expire) goes on to the stack.
static __always_inline int deliver(struct __sk_buff *skb, struct parsed *p)
{
	if (p->t.proto != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	__u32 zero = 0;
	struct direct_cfg *c = bpf_map_lookup_elem(&direct, &zero);
	// A zero mask is a configuration read while it was being written.
	if (!c || !c->on || !c->mask || (p->t.saddr & c->mask) != c->net || (p->t.daddr & c->mask) != c->net)
		return TC_ACT_UNSPEC;
	__u32 in = skb->ingress_ifindex;
	struct pod_link *to = bpf_map_lookup_elem(&pod_links, &p->t.daddr);
	if (!to || to->ifindex == in)
		return TC_ACT_UNSPEC;
	struct backend ep = {.addr = p->t.saddr, .port = p->t.sport};
	if (bpf_map_lookup_elem(&tracked, &ep))
		return TC_ACT_UNSPEC;
	ep.addr = p->t.daddr;
	ep.port = p->t.dport;
	if (bpf_map_lookup_elem(&tracked, &ep))
		return TC_ACT_UNSPEC;
	struct pod_iface *link = bpf_map_lookup_elem(&pod_ifaces, &in);
	struct ethhdr *eth = (void *)(long)skb->data;
	if (!link || (void *)(eth + 1) > (void *)(long)skb->data_end)
		return TC_ACT_UNSPEC;
	// The frame was addressed to another MAC than the veth's own
	// (PACKET_OTHERHOST); the pod must take it as its own (kernels before
	// 6.15 do not reset the type on bpf_redirect_peer).
	if (mac_eq(eth->h_dest, to->mac)) {
		if (to->via == to->ifindex || link->bridge != to->via || bpf_skb_change_type(skb, PACKET_HOST))
			return TC_ACT_UNSPEC;
		return bpf_redirect_peer(to->ifindex, 0);
	}
	if (skb->pkt_type != PACKET_HOST && !(link->bridge && mac_eq(eth->h_dest, link->bridge_mac)))
		return TC_ACT_UNSPEC;
	struct bpf_fib_lookup fib;
	int neigh;
	// The neighbour the FIB resolves must be the pod pod_links names (not
	// a pod that took its address since the map was written).
	if (p->ttl <= 1 || !route(skb, p, &p->t, &fib, &neigh) || !neigh || fib.ifindex != to->via ||
	    !mac_eq(fib.dmac, to->mac) || bpf_skb_change_type(skb, PACKET_HOST))
		return TC_ACT_UNSPEC;
	if (rewrite(skb, p, &p->t))
		return TC_ACT_SHOT;
	return forward(skb, &fib, neigh, p->t.daddr);
}

SEC("tc")
int kubenat_pod(struct __sk_buff *skb)
{
	struct parsed p;
	if (!parse(skb, &p))
		return TC_ACT_UNSPEC;
	__u64 now = bpf_ktime_get_ns();
	struct ct *e = bpf_map_lookup_elem(&conns, &p.t);
	if (!alive(e, now) || !e->reply)
		return deliver(skb, &p);
	return translate(skb, &p, e, now);
}

char __license[] SEC("license") = "Dual BSD/GPL";
