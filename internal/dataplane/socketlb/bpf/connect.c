// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// kubenat's socket load balancer: cgroup programs that rewrite the
// destination of a TCP connect() to a Service frontend into one of the
// Service's endpoints, chosen at random, before the first packet exists.
// The connection then runs pod to pod: no DNAT, no conntrack entry for the
// translation, nothing to undo on the way back.
//
// connect4 serves IPv4 sockets; connect6 serves IPv6 sockets, both to IPv6
// frontends (the *6 maps) and to IPv4-mapped ones (::ffff:a.b.c.d, the
// same IPv4 connection made through a dual-stack socket, Java's default,
// served from the IPv4 maps). A Multipath TCP socket meets the connect
// hooks through its first subflow, a TCP socket. The frontend a socket was
// connected to is kept with the socket the application holds
// (socket-local storage, freed with it; for Multipath TCP, the MPTCP
// socket, not the subflow), and getpeername4/6 return it instead of the
// endpoint: to the application, the connection is to the ClusterIP it
// asked for. Frontends the maps do not hold (unknown
// addresses, Services without endpoints, UDP) are left untouched:
// nftables then serves them as before, so the programs only ever
// accelerate, they never decide alone.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// A frontend: destination address and port (network order) and protocol.
struct frontend {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

// A frontend's current backend group: slots 0..count-1 of group id.
// Userspace writes a new group under a fresh id, then swaps this value in
// one update, then deletes the old group's slots.
struct group {
	__u32 id;
	__u32 count;
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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct frontend);
	__type(value, struct group);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct slot);
	__type(value, struct backend);
} backends SEC(".maps");

// A balanced socket's frontend and the endpoint it was sent to, as
// getpeername would otherwise return them (network order).
struct origin {
	__u32 frontend_addr;
	__u32 backend_addr;
	__u16 frontend_port;
	__u16 backend_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct origin);
} origins SEC(".maps");

// The IPv6 forms of the above. Groups are numbered apart from IPv4's.
struct frontend6 {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct backend6 {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
};

struct origin6 {
	__u32 frontend_addr[4];
	__u32 backend_addr[4];
	__u16 frontend_port;
	__u16 backend_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct frontend6);
	__type(value, struct group);
} frontends6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct slot);
	__type(value, struct backend6);
} backends6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct origin6);
} origins6 SEC(".maps");

// DEFINE_PICK defines a function, pick for IPv4 frontends and pick6 for
// IPv6 ones, that copies one of fe's endpoints to *out and returns 1, or
// returns 0 when the maps hold none.
//
// The kernel may reuse a replaced or deleted map element at once for
// another key (hash maps without preallocation, Linux 6.1 and later;
// preallocated ones always could), also while a program still reads it
// through the pointer a lookup returned. So the group is read in one load,
// the endpoint copied, and both are used only if looking up the same keys
// again finds that group and that endpoint still in place: a reused
// element has another key by then. Slots are never rewritten in place
// (a group gets fresh ids), so an endpoint element still found under its
// key was not changed while it was copied. A lookup also races with
// userspace replacing the group normally: the old group's slot may be gone
// by the time it is read; the new group is then in place, and looking
// again finds it.
#define DEFINE_PICK(name, frontend_t, backend_t, frontends_map, backends_map) \
static __always_inline int name(frontend_t *fe, backend_t *out)            \
{                                                                          \
	for (int try = 0; try < 3; try++) {                                \
		struct group *gp = bpf_map_lookup_elem(&frontends_map, fe); \
		if (!gp)                                                   \
			return 0;                                          \
		__u64 raw = *(volatile __u64 *)gp;                         \
		struct group g;                                            \
		__builtin_memcpy(&g, &raw, sizeof(g));                     \
		if (g.count == 0)                                          \
			return 0;                                          \
		struct slot s = {                                          \
			.id = g.id,                                        \
			.index = bpf_get_prandom_u32() % g.count,          \
		};                                                         \
		backend_t *bp = bpf_map_lookup_elem(&backends_map, &s);     \
		if (!bp)                                                   \
			continue;                                          \
		backend_t be;                                              \
		__builtin_memcpy(&be, bp, sizeof(be));                     \
		gp = bpf_map_lookup_elem(&frontends_map, fe);              \
		if (!gp || *(volatile __u32 *)&gp->id != g.id)             \
			continue;                                          \
		if (bpf_map_lookup_elem(&backends_map, &s) != bp)          \
			continue;                                          \
		*out = be;                                                 \
		return 1;                                                  \
	}                                                                  \
	return 0;                                                          \
}

// pick for IPv4 frontends, pick6 for IPv6 ones.
DEFINE_PICK(pick, struct frontend, struct backend, frontends, backends)
DEFINE_PICK(pick6, struct frontend6, struct backend6, frontends6, backends6)

struct mptcp_sock;

// Set by the loader when the kernel offers bpf_skc_to_mptcp_sock to these
// programs (Linux 5.19 and later, loaded with CAP_PERFMON); the verifier
// skips the branch otherwise.
volatile const __u8 have_mptcp_helper = 0;

// storage returns the storage in map of the socket the application holds
// (created with BPF_SK_STORAGE_GET_F_CREATE in flags): the hook's socket,
// or, when that is the subflow of a Multipath TCP socket, the MPTCP
// socket, which getpeername sees.
static __always_inline void *storage(void *map, struct bpf_sock_addr *ctx,
				     __u64 flags)
{
	if (have_mptcp_helper) {
		struct mptcp_sock *msk = bpf_skc_to_mptcp_sock(ctx->sk);
		if (msk)
			return bpf_sk_storage_get(map, msk, 0, flags);
	}
	return bpf_sk_storage_get(map, ctx->sk, 0, flags);
}

// remember keeps fe and be with the socket for getpeername. Without
// memory for it, getpeername returns the endpoint: the connect goes on.
static __always_inline void remember(struct bpf_sock_addr *ctx,
				     struct frontend *fe, struct backend *be)
{
	struct origin *o = storage(&origins, ctx, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return;
	o->frontend_addr = fe->addr;
	o->frontend_port = fe->port;
	o->backend_addr = be->addr;
	o->backend_port = be->port;
}

// origin returns what the socket was connected to when its peer is still
// the endpoint the balancer chose (a socket can be disconnected and
// connected again elsewhere), else NULL.
static __always_inline struct origin *origin(struct bpf_sock_addr *ctx,
					     __u32 addr)
{
	struct origin *o = storage(&origins, ctx, 0);
	if (!o || o->backend_addr != addr ||
	    o->backend_port != (__u16)ctx->user_port)
		return NULL;
	return o;
}

// forget clears what remember kept for a socket connected again without
// the balancer (after connect(AF_UNSPEC)): getpeername must not take its
// new peer, were it the same endpoint, for the old frontend.
static __always_inline void forget(struct bpf_sock_addr *ctx)
{
	struct origin *o = storage(&origins, ctx, 0);
	if (o) {
		o->backend_addr = 0;
		o->backend_port = 0;
	}
}

static __always_inline void forget6(struct bpf_sock_addr *ctx)
{
	struct origin6 *o = storage(&origins6, ctx, 0);
	if (o)
		o->backend_port = 0;
}

// remember6 and origin6 are remember and origin for IPv6 frontends.
static __always_inline void remember6(struct bpf_sock_addr *ctx,
				      struct frontend6 *fe, struct backend6 *be)
{
	struct origin6 *o = storage(&origins6, ctx, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return;
	for (int i = 0; i < 4; i++) {
		o->frontend_addr[i] = fe->addr[i];
		o->backend_addr[i] = be->addr[i];
	}
	o->frontend_port = fe->port;
	o->backend_port = be->port;
}

static __always_inline struct origin6 *origin6(struct bpf_sock_addr *ctx)
{
	struct origin6 *o = storage(&origins6, ctx, 0);
	if (!o || o->backend_port != (__u16)ctx->user_port)
		return NULL;
	// ctx fields are read with constant offsets only (the verifier
	// refuses a computed one), hence no loops over user_ip6.
	if (o->backend_addr[0] != ctx->user_ip6[0] ||
	    o->backend_addr[1] != ctx->user_ip6[1] ||
	    o->backend_addr[2] != ctx->user_ip6[2] ||
	    o->backend_addr[3] != ctx->user_ip6[3])
		return NULL;
	return o;
}

// v4mapped reports whether the socket address is ::ffff:a.b.c.d.
static __always_inline int v4mapped(struct bpf_sock_addr *ctx)
{
	return ctx->user_ip6[0] == 0 && ctx->user_ip6[1] == 0 &&
	       ctx->user_ip6[2] == bpf_htonl(0xffff);
}

SEC("cgroup/connect4")
int kubenat_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	struct frontend fe = {
		.addr = ctx->user_ip4,
		.port = (__u16)ctx->user_port,
		.proto = IPPROTO_TCP,
	};
	struct backend be;
	if (!pick(&fe, &be)) {
		forget(ctx);
		return 1;
	}
	remember(ctx, &fe, &be);
	ctx->user_ip4 = be.addr;
	ctx->user_port = be.port;
	return 1;
}

SEC("cgroup/connect6")
int kubenat_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	// One store to user_port, after the branches: clang would otherwise
	// merge the branches' stores through a computed ctx pointer, which
	// the verifier refuses.
	__u16 port;
	if (v4mapped(ctx)) {
		// The kernel makes this an IPv4 connection, which connect4
		// never sees.
		struct frontend fe = {
			.addr = ctx->user_ip6[3],
			.port = (__u16)ctx->user_port,
			.proto = IPPROTO_TCP,
		};
		struct backend be;
		if (!pick(&fe, &be)) {
			forget(ctx);
			return 1;
		}
		remember(ctx, &fe, &be);
		ctx->user_ip6[3] = be.addr;
		port = be.port;
	} else {
		struct frontend6 fe = {
			.addr = { ctx->user_ip6[0], ctx->user_ip6[1],
				  ctx->user_ip6[2], ctx->user_ip6[3] },
			.port = (__u16)ctx->user_port,
			.proto = IPPROTO_TCP,
		};
		struct backend6 be;
		if (!pick6(&fe, &be)) {
			forget6(ctx);
			return 1;
		}
		remember6(ctx, &fe, &be);
		ctx->user_ip6[0] = be.addr[0];
		ctx->user_ip6[1] = be.addr[1];
		ctx->user_ip6[2] = be.addr[2];
		ctx->user_ip6[3] = be.addr[3];
		port = be.port;
	}
	ctx->user_port = port;
	return 1;
}

SEC("cgroup/getpeername4")
int kubenat_getpeername4(struct bpf_sock_addr *ctx)
{
	struct origin *o = origin(ctx, ctx->user_ip4);
	if (o) {
		ctx->user_ip4 = o->frontend_addr;
		ctx->user_port = o->frontend_port;
	}
	return 1;
}

SEC("cgroup/getpeername6")
int kubenat_getpeername6(struct bpf_sock_addr *ctx)
{
	__u16 port; // stored once, as in connect6
	if (v4mapped(ctx)) {
		struct origin *o = origin(ctx, ctx->user_ip6[3]);
		if (!o)
			return 1;
		ctx->user_ip6[3] = o->frontend_addr;
		port = o->frontend_port;
	} else {
		struct origin6 *o = origin6(ctx);
		if (!o)
			return 1;
		ctx->user_ip6[0] = o->frontend_addr[0];
		ctx->user_ip6[1] = o->frontend_addr[1];
		ctx->user_ip6[2] = o->frontend_addr[2];
		ctx->user_ip6[3] = o->frontend_addr[3];
		port = o->frontend_port;
	}
	ctx->user_port = port;
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
