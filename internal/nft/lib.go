//go:build cgo

package nft

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <malloc.h>
#include <stdlib.h>

// The subset of libnftables' API kubenat uses, called through pointers
// resolved with dlsym so the binary does not link against the library.
typedef void *(*ctx_new_fn)(unsigned int);
typedef void (*ctx_free_fn)(void *);
typedef int (*buffer_fn)(void *);
typedef const char *(*get_buffer_fn)(void *);
typedef int (*run_fn)(void *, const char *);

struct nftlib {
	ctx_new_fn ctx_new;
	ctx_free_fn ctx_free;
	buffer_fn buffer_output;
	buffer_fn buffer_error;
	get_buffer_fn get_output;
	get_buffer_fn get_error;
	run_fn run;
};

static const char *nftlib_open(struct nftlib *l) {
	void *h = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) return dlerror();
	l->ctx_new = (ctx_new_fn)dlsym(h, "nft_ctx_new");
	l->ctx_free = (ctx_free_fn)dlsym(h, "nft_ctx_free");
	l->buffer_output = (buffer_fn)dlsym(h, "nft_ctx_buffer_output");
	l->buffer_error = (buffer_fn)dlsym(h, "nft_ctx_buffer_error");
	l->get_output = (get_buffer_fn)dlsym(h, "nft_ctx_get_output_buffer");
	l->get_error = (get_buffer_fn)dlsym(h, "nft_ctx_get_error_buffer");
	l->run = (run_fn)dlsym(h, "nft_run_cmd_from_buffer");
	if (!l->ctx_new || !l->ctx_free || !l->buffer_output || !l->buffer_error ||
	    !l->get_output || !l->get_error || !l->run)
		return "libnftables.so.1 lacks an expected symbol";
	return NULL;
}

static void *nftlib_ctx_new(struct nftlib *l) {
	void *ctx = l->ctx_new(0);
	if (!ctx) return NULL;
	if (l->buffer_output(ctx) || l->buffer_error(ctx)) {
		l->ctx_free(ctx);
		return NULL;
	}
	return ctx;
}
static void nftlib_ctx_free(struct nftlib *l, void *ctx) { l->ctx_free(ctx); }
static int nftlib_run(struct nftlib *l, void *ctx, const char *buf) { return l->run(ctx, buf); }
static const char *nftlib_output(struct nftlib *l, void *ctx) { return l->get_output(ctx); }
static const char *nftlib_error(struct nftlib *l, void *ctx) { return l->get_error(ctx); }
static void nftlib_trim(void) { malloc_trim(0); }
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Lib runs scripts in-process through libnftables. It keeps one
// libnftables context, created by the first Run: its netlink socket belongs
// to the network namespace that thread was in, and every later Run acts on
// that namespace. Runs are serialized; a Lib is safe for concurrent use.
//
// After a large script (ReleaseThreshold bytes or more: a full sync, or one
// group of Services of a full sync) succeeds, Lib releases in the
// background the cache libnftables keeps of it and returns the freed
// memory to the system. Without that the cache grows with every group of
// a full sync (~100 MiB more peak RSS at 50,000 Services × 5 endpoints),
// and after a single-transaction full sync it holds ~700 MB of parsed
// elements that the next Run would spend ~0.5 s freeing. A Run that starts
// before the release makes it first, so that the next group of a full sync
// never runs over the previous group's cache. A change of a few Services
// (a few KB) does not trigger one; a large batch of changes may.
type Lib struct {
	mu    sync.Mutex
	lib   C.struct_nftlib
	nctx  unsafe.Pointer
	stale bool // the cache of a large script is still held
}

// ReleaseThreshold is the script size from which Lib releases libnftables'
// cache after the run. A group of Services of the nftables backend's full
// sync (~10,000 elements, ~370 KB) is above it.
const ReleaseThreshold = 256 << 10

// NewLib loads libnftables.so.1.
func NewLib() (*Lib, error) {
	l := &Lib{}
	if msg := C.nftlib_open(&l.lib); msg != nil {
		return nil, fmt.Errorf("loading libnftables: %s", C.GoString(msg))
	}
	return l, nil
}

// Name returns "libnftables".
func (l *Lib) Name() string { return "libnftables" }

// Run applies script through nft_run_cmd_from_buffer. The context is only
// checked before starting: a transaction cannot be interrupted halfway.
func (l *Lib) Run(ctx context.Context, script string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// The netlink socket is opened in the current thread's namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	if l.nctx == nil {
		l.nctx = C.nftlib_ctx_new(&l.lib)
		if l.nctx == nil {
			return "", errors.New("libnftables: creating a context failed")
		}
	}
	if l.stale {
		l.releaseLocked()
	}
	nctx := l.nctx
	cs := C.CString(script)
	defer C.free(unsafe.Pointer(cs))
	rc := C.nftlib_run(&l.lib, nctx, cs)
	// Reading a buffer rewinds it for the next run: read both every time.
	out := C.GoString(C.nftlib_output(&l.lib, nctx))
	errOut := C.GoString(C.nftlib_error(&l.lib, nctx))
	if rc != 0 {
		return out, &Error{Script: script, Output: errOut, Err: fmt.Errorf("libnftables returned %d", int(rc))}
	}
	if len(script) >= ReleaseThreshold {
		l.stale = true
		go l.release()
	}
	return out, nil
}

// release makes the pending release unless a Run made it already.
func (l *Lib) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stale {
		l.releaseLocked()
	}
}

// releaseLocked makes libnftables drop the cache it keeps of the last
// script and returns freed heap memory to the system (malloc_trim); called
// with l.mu held and l.nctx set. libnftables has no call for that: listing
// a table that does not exist makes it discard the old (now stale) cache
// and fetch only the list of tables. ("list tables" would not do: nft
// 1.0.6 fetches every set element for it.)
func (l *Lib) releaseLocked() {
	l.stale = false
	cs := C.CString("list table ip kubenat-nft-release-cache")
	defer C.free(unsafe.Pointer(cs))
	C.nftlib_run(&l.lib, l.nctx, cs)
	C.nftlib_output(&l.lib, l.nctx)
	C.nftlib_error(&l.lib, l.nctx)
	C.nftlib_trim()
}
