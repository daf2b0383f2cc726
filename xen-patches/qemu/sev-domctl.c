/*
 * sev-domctl: drive XEN_DOMCTL_sev_op from Dom0 through libxencall.
 *
 * Compiled against the *patched* public header (xen/include/public/domctl.h
 * of the build tree), so it checks that the header is usable from userspace
 * and exercises the same library path as sevd's Python backend
 * (sevd/xen/domctl.py).  libxencall is used without its development
 * headers: the few prototypes below are its stable ABI (libxencall.so.1).
 *
 *   sev-domctl info
 *   sev-domctl make DOMID [es]
 *   sev-domctl ranges DOMID GFN NR
 *   sev-domctl enable DOMID
 *   sev-domctl flushed ASID...
 *   sev-domctl check ASID SPA LEN
 *   sev-domctl read ASID SPA LEN     (sev=test only; prints the first 16 bytes)
 *   sev-domctl wbinvd
 *   sev-domctl release DOMID        (after DECOMMISSION: drop the page references)
 *   sev-domctl balloon DOMID GFN    (XENMEM_decrease_reservation of one frame)
 *
 * Prints one line "SEV-<OP>: ..." per call; exit status 0 on success, 1 on a
 * refusal (the line then says "error <errno name> (<n>)").
 */
#define __XEN_TOOLS__ 1

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "public/xen.h"
#include "public/domctl.h"
#include "public/memory.h"

typedef struct xencall_handle xencall_handle;
struct xentoollog_logger;
xencall_handle *xencall_open(struct xentoollog_logger *logger, unsigned int open_flags);
int xencall_close(xencall_handle *xcall);
int xencall1(xencall_handle *xcall, unsigned int op, uint64_t arg1);
int xencall2(xencall_handle *xcall, unsigned int op, uint64_t arg1, uint64_t arg2);
void *xencall_alloc_buffer(xencall_handle *xcall, size_t size);
void xencall_free_buffer(xencall_handle *xcall, void *p);

static xencall_handle *xc;

static const char *errname(int e)
{
    switch ( e )
    {
    case EPERM: return "EPERM";
    case ESRCH: return "ESRCH";
    case EBUSY: return "EBUSY";
    case EINVAL: return "EINVAL";
    case ENOSPC: return "ENOSPC";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS";
    case EFAULT: return "EFAULT";
    default: return "E?";
    }
}

/* Issue one sev_op; the domctl lives in a hypercall-safe buffer. */
static int sev_op(struct xen_domctl *in, const char *tag)
{
    struct xen_domctl *buf = xencall_alloc_buffer(xc, sizeof(*buf));
    int rc;

    if ( !buf )
    {
        printf("SEV-%s: error allocating a hypercall buffer\n", tag);
        exit(2);
    }
    memcpy(buf, in, sizeof(*buf));
    buf->cmd = XEN_DOMCTL_sev_op;
    buf->interface_version = XEN_DOMCTL_INTERFACE_VERSION;
    rc = xencall1(xc, __HYPERVISOR_domctl, (uint64_t)(uintptr_t)buf);
    if ( rc < 0 )
    {
        int e = errno;

        printf("SEV-%s: error %s (%d)\n", tag, errname(e), e);
        xencall_free_buffer(xc, buf);
        return -1;
    }
    memcpy(in, buf, sizeof(*buf));
    xencall_free_buffer(xc, buf);
    return 0;
}

static int do_info(void)
{
    struct xen_domctl d = { .domain = DOMID_INVALID };
    struct xen_domctl_sev_info *info = &d.u.sev_op.u.info;
    uint32_t *dirty = xencall_alloc_buffer(xc, 4096);
    unsigned int i;

    d.u.sev_op.op = XEN_DOMCTL_SEV_INFO;
    info->nr_dirty = 1024;
    set_xen_guest_handle(info->dirty, dirty);
    if ( sev_op(&d, "INFO") )
        return 1;

    printf("SEV-INFO: available=%u test_mode=%u es=%u cbit=%u phys_reduction=%u "
           "max_asid=%u min_sev_asid=%u dirty=[",
           !!(info->flags & XEN_SEV_INFO_AVAILABLE),
           !!(info->flags & XEN_SEV_INFO_TEST_MODE),
           !!(info->flags & XEN_SEV_INFO_ES), info->cbit, info->phys_reduction,
           info->max_asid, info->min_sev_asid);
    for ( i = 0; i < info->nr_dirty && i < 1024; i++ )
        printf("%s%u", i ? "," : "", dirty[i]);
    printf("]\n");
    xencall_free_buffer(xc, dirty);
    return 0;
}

static int do_make(domid_t domid, int es)
{
    struct xen_domctl d = { .domain = domid };

    d.u.sev_op.op = XEN_DOMCTL_SEV_MAKE_SEV;
    d.u.sev_op.flags = es ? XEN_DOMCTL_SEV_ES : 0;
    if ( sev_op(&d, "MAKE") )
        return 1;
    printf("SEV-MAKE: domid=%u es=%d asid=%u cbit=%u\n", domid, es,
           d.u.sev_op.u.make.asid, d.u.sev_op.u.make.cbit);
    return 0;
}

static int do_ranges(domid_t domid, uint64_t gfn, uint32_t nr)
{
    struct xen_domctl d = { .domain = domid };
    struct xen_domctl_sev_ranges *r = &d.u.sev_op.u.ranges;
    xen_sev_range_t *out = xencall_alloc_buffer(xc, 256 * sizeof(*out));
    unsigned int i;

    d.u.sev_op.op = XEN_DOMCTL_SEV_GET_RANGES;
    r->gfn = gfn;
    r->nr_frames = nr;
    r->nr_ranges = 256;
    set_xen_guest_handle(r->ranges, out);
    if ( sev_op(&d, "RANGES") )
        return 1;
    printf("SEV-RANGES: domid=%u gfn=%#llx frames=%u ranges=%u", domid,
           (unsigned long long)gfn, r->nr_frames, r->nr_ranges);
    for ( i = 0; i < r->nr_ranges; i++ )
        printf(" %#llx+%#llx", (unsigned long long)out[i].spa,
               (unsigned long long)out[i].len);
    printf("\n");
    xencall_free_buffer(xc, out);
    return 0;
}

static int do_enable(domid_t domid)
{
    struct xen_domctl d = { .domain = domid };

    d.u.sev_op.op = XEN_DOMCTL_SEV_ENABLE;
    if ( sev_op(&d, "ENABLE") )
        return 1;
    printf("SEV-ENABLE: domid=%u ok\n", domid);
    return 0;
}

static int do_flushed(int n, char **argv)
{
    struct xen_domctl d = { .domain = DOMID_INVALID };
    uint32_t *asids = xencall_alloc_buffer(xc, 4096);
    int i;

    if ( n > 1024 )
        n = 1024;
    for ( i = 0; i < n; i++ )
        asids[i] = strtoul(argv[i], NULL, 0);
    d.u.sev_op.op = XEN_DOMCTL_SEV_ASID_FLUSHED;
    d.u.sev_op.u.flushed.nr_asids = n;
    set_xen_guest_handle(d.u.sev_op.u.flushed.asids, asids);
    if ( sev_op(&d, "FLUSHED") )
        return 1;
    printf("SEV-FLUSHED: freed=%u\n", d.u.sev_op.u.flushed.nr_asids);
    xencall_free_buffer(xc, asids);
    return 0;
}

static int do_check(uint32_t asid, uint64_t spa, uint64_t len)
{
    struct xen_domctl d = { .domain = DOMID_INVALID };

    d.u.sev_op.op = XEN_DOMCTL_SEV_CHECK_SPA;
    d.u.sev_op.u.check.asid = asid;
    d.u.sev_op.u.check.spa = spa;
    d.u.sev_op.u.check.len = len;
    if ( sev_op(&d, "CHECK") )
        return 1;
    printf("SEV-CHECK: asid=%u spa=%#llx len=%#llx ok\n", asid,
           (unsigned long long)spa, (unsigned long long)len);
    return 0;
}

static int do_read(uint32_t asid, uint64_t spa, uint64_t len)
{
    struct xen_domctl d = { .domain = DOMID_INVALID };
    uint8_t *out = xencall_alloc_buffer(xc, len ? len : 1);
    unsigned long long sum = 0;
    uint64_t i;

    if ( !out )
    {
        printf("SEV-READ: error allocating a hypercall buffer\n");
        return 1;
    }
    d.u.sev_op.op = XEN_DOMCTL_SEV_READ_SPA;
    d.u.sev_op.u.read.asid = asid;
    d.u.sev_op.u.read.spa = spa;
    d.u.sev_op.u.read.len = len;
    set_xen_guest_handle(d.u.sev_op.u.read.buffer, out);
    if ( sev_op(&d, "READ") )
    {
        xencall_free_buffer(xc, out);
        return 1;
    }
    for ( i = 0; i < len; i++ )
        sum += out[i];
    printf("SEV-READ: asid=%u spa=%#llx len=%#llx sum=%llu head=", asid,
           (unsigned long long)spa, (unsigned long long)len, sum);
    for ( i = 0; i < len && i < 16; i++ )
        printf("%02x", out[i]);
    printf("\n");
    xencall_free_buffer(xc, out);
    return 0;
}

static int do_wbinvd(void)
{
    struct xen_domctl d = { .domain = DOMID_INVALID };

    d.u.sev_op.op = XEN_DOMCTL_SEV_WBINVD;
    if ( sev_op(&d, "WBINVD") )
        return 1;
    printf("SEV-WBINVD: ok\n");
    return 0;
}

static int do_release_refs(domid_t domid)
{
    struct xen_domctl d = { .domain = domid };

    d.u.sev_op.op = XEN_DOMCTL_SEV_RELEASE;
    if ( sev_op(&d, "RELEASE") )
        return 1;
    printf("SEV-RELEASE: domid=%u ok\n", domid);
    return 0;
}

/* Take one frame away from a domain, as a balloon driver or the toolstack would. */
static int do_release(domid_t domid, uint64_t gfn)
{
    struct xen_memory_reservation *r = xencall_alloc_buffer(xc, sizeof(*r));
    xen_pfn_t *ext = xencall_alloc_buffer(xc, sizeof(*ext));
    int rc;

    if ( !r || !ext )
    {
        printf("SEV-BALLOON: error allocating a hypercall buffer\n");
        return 2;
    }
    memset(r, 0, sizeof(*r));
    *ext = gfn;
    set_xen_guest_handle(r->extent_start, ext);
    r->nr_extents = 1;
    r->domid = domid;
    rc = xencall2(xc, __HYPERVISOR_memory_op, XENMEM_decrease_reservation,
                  (uint64_t)(uintptr_t)r);
    if ( rc == 1 )
        printf("SEV-BALLOON: domid=%u gfn=%#llx released\n", domid,
               (unsigned long long)gfn);
    else
        printf("SEV-BALLOON: domid=%u gfn=%#llx refused (rc %d, %s)\n", domid,
               (unsigned long long)gfn, rc, rc < 0 ? errname(errno) : "0 extents");
    xencall_free_buffer(xc, ext);
    xencall_free_buffer(xc, r);
    return rc == 1 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int rc = 2;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if ( argc < 2 )
        goto usage;
    xc = xencall_open(NULL, 0);
    if ( !xc )
    {
        printf("SEV-%s: cannot open libxencall: %s\n", argv[1], strerror(errno));
        return 2;
    }

    if ( !strcmp(argv[1], "info") )
        rc = do_info();
    else if ( !strcmp(argv[1], "make") && argc >= 3 )
        rc = do_make(atoi(argv[2]), argc > 3 && !strcmp(argv[3], "es"));
    else if ( !strcmp(argv[1], "ranges") && argc == 5 )
        rc = do_ranges(atoi(argv[2]), strtoull(argv[3], NULL, 0),
                       strtoul(argv[4], NULL, 0));
    else if ( !strcmp(argv[1], "enable") && argc == 3 )
        rc = do_enable(atoi(argv[2]));
    else if ( !strcmp(argv[1], "flushed") && argc >= 3 )
        rc = do_flushed(argc - 2, argv + 2);
    else if ( !strcmp(argv[1], "wbinvd") && argc == 2 )
        rc = do_wbinvd();
    else if ( !strcmp(argv[1], "release") && argc == 3 )
        rc = do_release_refs(atoi(argv[2]));
    else if ( !strcmp(argv[1], "balloon") && argc == 4 )
        rc = do_release(atoi(argv[2]), strtoull(argv[3], NULL, 0));
    else if ( !strcmp(argv[1], "check") && argc == 5 )
        rc = do_check(strtoul(argv[2], NULL, 0), strtoull(argv[3], NULL, 0),
                      strtoull(argv[4], NULL, 0));
    else if ( !strcmp(argv[1], "read") && argc == 5 )
        rc = do_read(strtoul(argv[2], NULL, 0), strtoull(argv[3], NULL, 0),
                     strtoull(argv[4], NULL, 0));
    else
        goto usage;

    xencall_close(xc);
    return rc;

 usage:
    fprintf(stderr, "usage: sev-domctl info | make DOMID [es] | ranges DOMID GFN NR"
            " | enable DOMID | flushed ASID... | check ASID SPA LEN | read ASID SPA LEN"
            " | wbinvd | balloon DOMID GFN | release DOMID\n");
    return 2;
}
