/*
 * A fake libnvidia-ml for otel-gpu-receiver's tests.
 *
 * It exports the nvml* symbols that the receiver reaches through nvml-wrapper 0.13
 * (nvml-wrapper-sys 0.10 resolves each symbol lazily, so a symbol we do not export
 * only fails the call that needs it), with the real signatures and struct layouts
 * from nvml-wrapper-sys's bindings. Values are fixed: each device gets defaults
 * derived from its index, and a script overrides them.
 *
 * The script is a text file named by FAKE_NVML_SCRIPT, or, when that is unset,
 * the file `fake_nvml.script` beside this library (so tests that load several
 * copies in one process each get their own). One directive per line, '#' starts
 * a comment:
 *
 *   devices N                  device count (default 0)
 *   devices_at CYCLE N         device count from that cycle on (hot-plug; repeatable)
 *   driver VERSION             nvmlSystemGetDriverVersion (default 550.54.15)
 *   init_error CODE            nvmlInit_v2 returns CODE (e.g. 9 = DRIVER_NOT_LOADED)
 *   count_sleep CYCLE MS       nvmlDeviceGetCount_v2 of that cycle sleeps MS milliseconds
 *                              (after the cycle has started: other calls still answer)
 *   stats PATH                 write call counts to PATH at every cycle start and at shutdown
 *   xid CYCLE DEV CODE         queue a critical Xid event, deliverable from CYCLE on
 *   dev I|* KEY VALUE...       per-device value (see `set_key` for the keys)
 *   dev I|* notsup FUNCTION    FUNCTION returns NVML_ERROR_NOT_SUPPORTED for that device
 *   dev I|* sleep FUNCTION MS  FUNCTION sleeps MS milliseconds before answering
 *   dev I|* lost FROM UNTIL    every call on the device returns GPU_IS_LOST for cycles
 *                              FROM <= c < UNTIL (UNTIL 0: forever)
 *   dev I proc PID BYTES SM MEM NAME   a compute process with its memory and utilisation
 *   dev I mig N                MIG mode on, with N instances (default values); 0: off
 *
 * NVML coming and going, MIG reconfiguration, failing fields (issue 13):
 *
 *   init_fail N CODE           the first N nvmlInit_v2 calls return CODE (9 = DRIVER_NOT_LOADED,
 *                              12 = LIBRARY_NOT_FOUND): the driver appears late
 *   init_sleep N MS            the first N nvmlInit_v2 calls sleep MS milliseconds first
 *   driver_gone CYCLE N [CODE] from CYCLE on every call returns CODE (default 1 = UNINITIALIZED;
 *                              9 = DRIVER_NOT_LOADED), nvmlInit_v2 returns DRIVER_NOT_LOADED for
 *                              the next N attempts, and the attempt after them brings it back
 *   mig_at CYCLE DEV N         from CYCLE on, GPU DEV has N MIG instances (0: MIG off); handles
 *                              of removed instances answer INVALID_ARGUMENT
 *   dev I|* fail FUNCTION CODE [FROM [UNTIL]]   FUNCTION returns CODE on the GPU's own handle
 *                              (not its MIG instances') in cycles FROM <= c < UNTIL (FROM 0:
 *                              from the start, UNTIL 0: forever)
 *   dev I|* field_error ID|* CODE [FROM [UNTIL]] field ID (or every field) of
 *                              nvmlDeviceGetFieldValues fails on its own with CODE, while the
 *                              call itself succeeds (what a GPU reset looks like)
 *   dev I proc PID BYTES SM MEM NAME [GI CI [FROM]]   a process, in MIG instance GI/CI when given
 *                              (NO_ID 4294967295: none), running from cycle FROM on
 *   dev I mps PID BYTES NAME [GI CI]            an MPS client (nvmlDeviceGetMPSComputeRunningProcesses_v3)
 *   dev I nvlink_errors REPLAY RECOVERY CRC_FLIT CRC_DATA   link L reports each times (L + 1)
 *
 * nvmlDeviceGetProcessUtilization behaves as the driver does: it keeps the last 3 samples of
 * each process (one per cycle, CPU timestamps in microseconds, older ones at half the
 * utilisation), returns those newer than lastSeenTimeStamp, and NOT_FOUND when there are none.
 *
 * Churn, for soak tests (everything repeats, so a long run sees it thousands of times):
 *
 *   dev I flap PERIOD DOWN     lost (GPU_IS_LOST) for DOWN cycles out of every PERIOD,
 *                              from cycle PERIOD on: a GPU lost and found again
 *   dev I pid_churn EVERY SPAN every EVERY cycles the device's processes get new pids
 *                              (the scripted pid plus a step that cycles through SPAN values)
 *   dev I mig_churn EVERY      every EVERY cycles the MIG instances are reconfigured: new
 *                              UUIDs, and one instance fewer every other time
 *   xid_storm EVERY DEV CODE N every EVERY cycles, N Xid events of CODE on device DEV
 *
 * A "cycle" is one call of nvmlDeviceGetCount_v2: the receiver calls it once at the
 * start of every collection cycle.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_DEV 16
#define MAX_MIG 7
#define MAX_PROC 8
#define MAX_RULES 16
#define MAX_XID 32
#define MAX_FANS 4
#define MAX_LINKS 18
#define MAX_COUNTED 2048

typedef struct fake_dev fake_dev;
struct fake_dev {
    int index;
    int present;
    fake_dev *parent; /* MIG instance: its parent GPU */
    char name[96], uuid[96], serial[32], vbios[32];
    unsigned util_gpu, util_mem, enc, dec;
    unsigned long long mem_total, mem_used;
    unsigned power_mw, power_limit_mw;
    unsigned long long energy_mj, energy_step_mj;
    unsigned temp_gpu, temp_mem, temp_slowdown, temp_shutdown;
    unsigned long long ecc_corr, ecc_uncorr;
    unsigned pcie_replay;
    unsigned clk_graphics, clk_sm, clk_mem, clk_video;
    unsigned long long throttle;
    unsigned long long viol_ns[12];
    unsigned nfans, fan[MAX_FANS];
    int pstate;
    unsigned long long pcie_tx, pcie_rx;
    unsigned nvlinks;
    unsigned long long nvlink_tx_kib[MAX_LINKS], nvlink_rx_kib[MAX_LINKS];
    unsigned remap_cor, remap_unc, remap_pending, remap_failure;
    unsigned pages_pending;
    unsigned gpm;
    double gpm_sm, gpm_occ, gpm_tensor, gpm_dram;
    unsigned gi, ci; /* MIG instance ids */
    unsigned nmig;
    fake_dev *mig[MAX_MIG];
    unsigned nproc;
    struct { unsigned pid; unsigned long long bytes; unsigned sm, mem; char name[64]; unsigned gi, ci; int from; } proc[MAX_PROC];
    int nnotsup;
    char notsup[MAX_RULES][64];
    int nsleep;
    struct { char fn[64]; unsigned ms; } sleeps[MAX_RULES];
    int lost_from, lost_until;
    unsigned flap_period, flap_down;
    unsigned pid_every, pid_span;
    unsigned mig_every, mig_full;
    unsigned long long events_registered;
    /* issue 13 */
    unsigned long long ecc_corr_agg, ecc_uncorr_agg;
    unsigned retired_sbe, retired_dbe;
    unsigned long long nvlink_err[4]; /* DL_REPLAY, DL_RECOVERY, DL_CRC_FLIT, DL_CRC_DATA */
    int nfail;
    struct { char fn[64]; int code, from, until; } fails[MAX_RULES];
    int nfield_err;
    struct { int field; int code, from, until; } field_errs[MAX_RULES]; /* field -1: every field */
    unsigned nmps;
    struct { unsigned pid; unsigned long long bytes; unsigned gi, ci; char name[64]; } mps[MAX_PROC];
    unsigned pcie_gen, pcie_gen_max, pcie_width, pcie_width_max;
    unsigned clk_max[4], clk_app[4]; /* graphics, sm, memory, video; 0: not supported */
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
/* Signalled when a cycle starts: queued Xid events become deliverable then. */
static pthread_cond_t g_cycle_cond = PTHREAD_COND_INITIALIZER;
static int g_loaded;
static int g_init_error;
static int g_count_sleep_cycle = -1;
static unsigned g_count_sleep_ms;
static unsigned g_devices;
#define MAX_AT 8
static struct { int cycle; unsigned count; } g_devices_at[MAX_AT];
static int g_ndevices_at;
static char g_driver[64] = "550.54.15";
static char g_stats[512];
static int g_cycle;
static fake_dev g_dev[MAX_DEV];
static fake_dev g_mig[MAX_DEV][MAX_MIG];
static struct { int cycle; int dev; unsigned long long code; int delivered; } g_xid[MAX_XID];
static int g_nxid;
static struct { char fn[64]; int dev; unsigned long long n; } g_counts[MAX_COUNTED];
static int g_ncounts;
#define MAX_STORMS 4
static struct { unsigned every; int dev; unsigned long long code; unsigned n; unsigned pending; } g_storm[MAX_STORMS];
static int g_nstorms;
/* issue 13: the driver appears late, goes away and comes back; MIG is reconfigured. */
static int g_init_fail_left, g_init_fail_code;
static int g_init_sleep_left;
static unsigned g_init_sleep_ms;
#define MAX_GONE 4
static struct { int cycle, attempts, code; } g_gone_at[MAX_GONE];
static int g_ngone;
static int g_gone_code, g_gone_attempts_left;
#define MAX_MIG_AT 8
static struct { int cycle, dev; unsigned n; } g_mig_at[MAX_MIG_AT];
static int g_nmig_at;
#define NO_ID 0xFFFFFFFFu

static void defaults(fake_dev *d, int i) {
    memset(d, 0, sizeof *d);
    d->index = i;
    snprintf(d->name, sizeof d->name, "NVIDIA Fake H100 80GB HBM3");
    snprintf(d->uuid, sizeof d->uuid, "GPU-00000000-0000-4000-8000-%012d", i);
    snprintf(d->serial, sizeof d->serial, "165000000%04d", i);
    snprintf(d->vbios, sizeof d->vbios, "96.00.99.00.%02d", i);
    d->util_gpu = 10 + i;
    d->util_mem = 20 + i;
    d->enc = 30 + i;
    d->dec = 40 + i;
    d->mem_total = 85899345920ULL; /* 80 GiB */
    d->mem_used = (unsigned long long)(i + 1) << 30;
    d->power_mw = 100500 + 1000 * i;
    d->power_limit_mw = 700000;
    d->energy_mj = 1000000ULL + 1000ULL * i;
    d->energy_step_mj = 5000;
    d->temp_gpu = 40 + i;
    d->temp_mem = 50 + i;
    d->temp_slowdown = 87;
    d->temp_shutdown = 92;
    d->ecc_corr = 10ULL * i;
    d->ecc_uncorr = i;
    d->pcie_replay = 100 + i;
    d->clk_graphics = 1500 + i;
    d->clk_sm = 1510 + i;
    d->clk_mem = 2600 + i;
    d->clk_video = 1200 + i;
    d->viol_ns[0] = 1000000000ULL * (i + 1);
    d->viol_ns[1] = 500000000ULL * (i + 1);
    d->nfans = 1;
    d->fan[0] = 30 + i;
    d->pstate = 0;
    d->pcie_tx = 1000000000ULL * (i + 1);
    d->pcie_rx = 2000000000ULL * (i + 1);
    d->remap_cor = i;
    d->gpm_sm = 0.50 + 0.01 * i;
    d->gpm_occ = 0.30 + 0.01 * i;
    d->gpm_tensor = 0.20 + 0.01 * i;
    d->gpm_dram = 0.10 + 0.01 * i;
    d->lost_from = -1;
    d->ecc_corr_agg = 1000ULL + 10ULL * i;
    d->ecc_uncorr_agg = 2ULL + i;
    d->retired_sbe = i;
    d->retired_dbe = 0;
    d->nvlink_err[0] = 3; d->nvlink_err[1] = 1; d->nvlink_err[2] = 20; d->nvlink_err[3] = 5;
    d->pcie_gen = 4; d->pcie_gen_max = 5; d->pcie_width = 8; d->pcie_width_max = 16;
    d->clk_max[0] = 1980 + i; d->clk_max[1] = 1980 + i; d->clk_max[2] = 2619; d->clk_max[3] = 1755;
    d->clk_app[0] = 1755 + i; d->clk_app[2] = 2619; /* no SM or video application clocks */
}

static void mig_defaults(fake_dev *parent, fake_dev *m, int k) {
    memset(m, 0, sizeof *m);
    m->index = k;
    m->present = 1;
    m->parent = parent;
    snprintf(m->name, sizeof m->name, "NVIDIA Fake H100 80GB HBM3 MIG 3g.40gb");
    snprintf(m->uuid, sizeof m->uuid, "MIG-00000000-0000-4000-8000-%06d%06d", parent->index, k);
    m->util_gpu = m->util_mem = 0;
    m->mem_total = 42949672960ULL; /* 40 GiB */
    m->mem_used = (unsigned long long)(k + 1) << 29;
    m->gi = 1 + k;
    m->ci = 0;
    m->gpm = parent->gpm;
    m->gpm_sm = 0.2 + 0.1 * k;
    m->gpm_occ = 0.15;
    m->gpm_tensor = 0.05;
    m->gpm_dram = 0.1;
    m->lost_from = -1;
}

/* MIG on with n instances (0: off). Instances keep their slot's UUID; removed ones stay
 * allocated but answer INVALID_ARGUMENT, like a stale handle. */
static void set_mig(fake_dev *d, unsigned n) {
    if (d->parent) return;
    if (n > MAX_MIG) n = MAX_MIG;
    for (unsigned k = 0; k < MAX_MIG; k++) {
        fake_dev *m = &g_mig[d->index][k];
        if (k < n) {
            if (!m->present) mig_defaults(d, m, (int)k);
            d->mig[k] = m;
        } else {
            m->present = 0;
            d->mig[k] = NULL;
        }
    }
    d->nmig = n;
}

static int in_window(int from, int until) {
    return g_cycle >= from && (until == 0 || g_cycle < until);
}

static void set_key(fake_dev *d, const char *key, char *rest) {
    unsigned long long a = 0, b = 0;
    sscanf(rest, "%llu %llu", &a, &b);
#define U(k, field) else if (!strcmp(key, k)) d->field = a
    if (!strcmp(key, "name")) { while (*rest == ' ') rest++; snprintf(d->name, sizeof d->name, "%s", rest); }
    else if (!strcmp(key, "uuid")) sscanf(rest, "%95s", d->uuid);
    U("util_gpu", util_gpu); U("util_mem", util_mem); U("enc", enc); U("dec", dec);
    U("mem_total", mem_total); U("mem_used", mem_used);
    U("power_mw", power_mw); U("power_limit_mw", power_limit_mw);
    U("energy_mj", energy_mj); U("energy_step_mj", energy_step_mj);
    U("temp_gpu", temp_gpu); U("temp_mem", temp_mem);
    U("temp_slowdown", temp_slowdown); U("temp_shutdown", temp_shutdown);
    U("ecc_corr", ecc_corr); U("ecc_uncorr", ecc_uncorr); U("pcie_replay", pcie_replay);
    U("clk_graphics", clk_graphics); U("clk_sm", clk_sm); U("clk_mem", clk_mem); U("clk_video", clk_video);
    U("throttle", throttle); U("pstate", pstate);
    U("pcie_tx", pcie_tx); U("pcie_rx", pcie_rx);
    U("remap_cor", remap_cor); U("remap_unc", remap_unc);
    U("remap_pending", remap_pending); U("remap_failure", remap_failure);
    U("pages_pending", pages_pending);
    U("gpm", gpm);
    else if (!strcmp(key, "violation") && a < 12) d->viol_ns[a] = b;
    else if (!strcmp(key, "fans")) d->nfans = a > MAX_FANS ? MAX_FANS : (unsigned)a;
    else if (!strcmp(key, "fan") && a < MAX_FANS) d->fan[a] = (unsigned)b;
    else if (!strcmp(key, "nvlinks")) {
        d->nvlinks = a > MAX_LINKS ? MAX_LINKS : (unsigned)a;
        for (unsigned l = 0; l < d->nvlinks; l++) {
            d->nvlink_tx_kib[l] = 1000ULL * (l + 1);
            d->nvlink_rx_kib[l] = 2000ULL * (l + 1);
        }
    }
    else if (!strcmp(key, "gpm_values")) sscanf(rest, "%lf %lf %lf %lf", &d->gpm_sm, &d->gpm_occ, &d->gpm_tensor, &d->gpm_dram);
    else if (!strcmp(key, "notsup") && d->nnotsup < MAX_RULES) sscanf(rest, "%63s", d->notsup[d->nnotsup++]);
    else if (!strcmp(key, "sleep") && d->nsleep < MAX_RULES) {
        sscanf(rest, "%63s %u", d->sleeps[d->nsleep].fn, &d->sleeps[d->nsleep].ms);
        d->nsleep++;
    }
    else if (!strcmp(key, "lost")) { d->lost_from = (int)a; d->lost_until = (int)b; }
    else if (!strcmp(key, "flap")) { d->flap_period = (unsigned)a; d->flap_down = (unsigned)b; }
    else if (!strcmp(key, "pid_churn")) { d->pid_every = (unsigned)a; d->pid_span = b ? (unsigned)b : 1; }
    else if (!strcmp(key, "mig_churn")) d->mig_every = (unsigned)a;
    else if (!strcmp(key, "proc") && d->nproc < MAX_PROC) {
        unsigned pid = 0, sm = 0, mem = 0, gi = NO_ID, ci = NO_ID; unsigned long long bytes = 0; char name[64] = {0};
        int from = 0;
        sscanf(rest, "%u %llu %u %u %63s %u %u %d", &pid, &bytes, &sm, &mem, name, &gi, &ci, &from);
        d->proc[d->nproc].from = from;
        d->proc[d->nproc].pid = pid; d->proc[d->nproc].bytes = bytes;
        d->proc[d->nproc].sm = sm; d->proc[d->nproc].mem = mem;
        d->proc[d->nproc].gi = gi; d->proc[d->nproc].ci = ci;
        snprintf(d->proc[d->nproc].name, sizeof d->proc[d->nproc].name, "%s", name);
        d->nproc++;
    }
    else if (!strcmp(key, "mig")) set_mig(d, (unsigned)a);
    else if (!strcmp(key, "mps") && d->nmps < MAX_PROC) {
        unsigned pid = 0, gi = NO_ID, ci = NO_ID; unsigned long long bytes = 0; char name[64] = {0};
        sscanf(rest, "%u %llu %63s %u %u", &pid, &bytes, name, &gi, &ci);
        d->mps[d->nmps].pid = pid; d->mps[d->nmps].bytes = bytes;
        d->mps[d->nmps].gi = gi; d->mps[d->nmps].ci = ci;
        snprintf(d->mps[d->nmps].name, sizeof d->mps[d->nmps].name, "%s", name);
        d->nmps++;
    }
    else if (!strcmp(key, "fail") && d->nfail < MAX_RULES) {
        int code = 0, from = 0, until = 0;
        sscanf(rest, "%63s %d %d %d", d->fails[d->nfail].fn, &code, &from, &until);
        d->fails[d->nfail].code = code; d->fails[d->nfail].from = from; d->fails[d->nfail].until = until;
        d->nfail++;
    }
    else if (!strcmp(key, "field_error") && d->nfield_err < MAX_RULES) {
        char field[16] = {0}; int code = 0, from = 0, until = 0;
        sscanf(rest, "%15s %d %d %d", field, &code, &from, &until);
        d->field_errs[d->nfield_err].field = strcmp(field, "*") ? atoi(field) : -1;
        d->field_errs[d->nfield_err].code = code;
        d->field_errs[d->nfield_err].from = from;
        d->field_errs[d->nfield_err].until = until;
        d->nfield_err++;
    }
    else if (!strcmp(key, "nvlink_errors"))
        sscanf(rest, "%llu %llu %llu %llu", &d->nvlink_err[0], &d->nvlink_err[1], &d->nvlink_err[2], &d->nvlink_err[3]);
    U("ecc_corr_agg", ecc_corr_agg); U("ecc_uncorr_agg", ecc_uncorr_agg);
    U("retired_sbe", retired_sbe); U("retired_dbe", retired_dbe);
    U("pcie_gen", pcie_gen); U("pcie_gen_max", pcie_gen_max);
    U("pcie_width", pcie_width); U("pcie_width_max", pcie_width_max);
    else fprintf(stderr, "fake_nvml: unknown key %s\n", key);
#undef U
}

static const char *script_path(char *buf, size_t n) {
    const char *env = getenv("FAKE_NVML_SCRIPT");
    if (env && *env) return env;
    Dl_info info;
    if (dladdr((void *)&script_path, &info) && info.dli_fname) {
        snprintf(buf, n, "%s", info.dli_fname);
        char *slash = strrchr(buf, '/');
        if (slash) { slash[1] = 0; strncat(buf, "fake_nvml.script", n - strlen(buf) - 1); return buf; }
    }
    return NULL;
}

static void load_script(void) {
    if (g_loaded) return;
    g_loaded = 1;
    for (int i = 0; i < MAX_DEV; i++) defaults(&g_dev[i], i);
    char pbuf[1024];
    const char *path = script_path(pbuf, sizeof pbuf);
    FILE *f = path ? fopen(path, "r") : NULL;
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        line[strcspn(line, "\r\n")] = 0;
        char word[64] = {0};
        int off = 0;
        if (sscanf(line, "%63s %n", word, &off) < 1) continue;
        char *rest = line + off;
        if (!strcmp(word, "devices")) g_devices = (unsigned)atoi(rest);
        else if (!strcmp(word, "devices_at") && g_ndevices_at < MAX_AT) {
            sscanf(rest, "%d %u", &g_devices_at[g_ndevices_at].cycle, &g_devices_at[g_ndevices_at].count);
            g_ndevices_at++;
        }
        else if (!strcmp(word, "driver")) sscanf(rest, "%63s", g_driver);
        else if (!strcmp(word, "init_error")) g_init_error = atoi(rest);
        else if (!strcmp(word, "init_fail")) sscanf(rest, "%d %d", &g_init_fail_left, &g_init_fail_code);
        else if (!strcmp(word, "init_sleep")) sscanf(rest, "%d %u", &g_init_sleep_left, &g_init_sleep_ms);
        else if (!strcmp(word, "driver_gone") && g_ngone < MAX_GONE) {
            int code = NVML_ERROR_UNINITIALIZED;
            sscanf(rest, "%d %d %d", &g_gone_at[g_ngone].cycle, &g_gone_at[g_ngone].attempts, &code);
            g_gone_at[g_ngone].code = code;
            g_ngone++;
        }
        else if (!strcmp(word, "mig_at") && g_nmig_at < MAX_MIG_AT) {
            sscanf(rest, "%d %d %u", &g_mig_at[g_nmig_at].cycle, &g_mig_at[g_nmig_at].dev, &g_mig_at[g_nmig_at].n);
            g_nmig_at++;
        }
        else if (!strcmp(word, "count_sleep")) sscanf(rest, "%d %u", &g_count_sleep_cycle, &g_count_sleep_ms);
        else if (!strcmp(word, "stats")) sscanf(rest, "%511s", g_stats);
        else if (!strcmp(word, "xid_storm") && g_nstorms < MAX_STORMS) {
            sscanf(rest, "%u %d %llu %u", &g_storm[g_nstorms].every, &g_storm[g_nstorms].dev,
                   &g_storm[g_nstorms].code, &g_storm[g_nstorms].n);
            g_nstorms++;
        }
        else if (!strcmp(word, "xid") && g_nxid < MAX_XID) {
            sscanf(rest, "%d %d %llu", &g_xid[g_nxid].cycle, &g_xid[g_nxid].dev, &g_xid[g_nxid].code);
            g_nxid++;
        } else if (!strcmp(word, "dev")) {
            char which[16] = {0}, key[64] = {0};
            int off2 = 0;
            if (sscanf(rest, "%15s %63s %n", which, key, &off2) < 2) continue;
            char *vals = rest + off2;
            if (!strcmp(which, "*")) {
                for (int i = 0; i < MAX_DEV; i++) set_key(&g_dev[i], key, vals);
            } else {
                int i = atoi(which);
                if (i >= 0 && i < MAX_DEV) set_key(&g_dev[i], key, vals);
            }
        }
    }
    fclose(f);
    if (g_devices > MAX_DEV) g_devices = MAX_DEV;
}

static unsigned current_count(void) {
    unsigned n = g_devices;
    int best = -1;
    for (int i = 0; i < g_ndevices_at; i++)
        if (g_cycle >= g_devices_at[i].cycle && g_devices_at[i].cycle > best) {
            best = g_devices_at[i].cycle;
            n = g_devices_at[i].count;
        }
    return n > MAX_DEV ? MAX_DEV : n;
}

static void write_stats(void) {
    if (!g_stats[0]) return;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", g_stats);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "cycle -1 %d\n", g_cycle);
    for (int i = 0; i < g_ncounts; i++) fprintf(f, "%s %d %llu\n", g_counts[i].fn, g_counts[i].dev, g_counts[i].n);
    fclose(f);
    rename(tmp, g_stats);
}

static void count_call(const char *fn, int dev) {
    if (!g_stats[0]) return; /* counting is for tests that read the stats; benchmarks skip it */
    for (int i = 0; i < g_ncounts; i++)
        if (g_counts[i].dev == dev && !strcmp(g_counts[i].fn, fn)) { g_counts[i].n++; return; }
    if (g_ncounts < MAX_COUNTED) {
        snprintf(g_counts[g_ncounts].fn, sizeof g_counts[g_ncounts].fn, "%s", fn);
        g_counts[g_ncounts].dev = dev;
        g_counts[g_ncounts].n = 1;
        g_ncounts++;
    }
}

static fake_dev *root(fake_dev *d) { return d->parent ? d->parent : d; }

/* pid_churn: what is added to the scripted pids this cycle (a multiple of 16, so the
 * processes of one device never collide). */
static unsigned pid_offset(const fake_dev *d) {
    if (!d->pid_every) return 0;
    return 16u * (((unsigned)g_cycle / d->pid_every) % d->pid_span);
}

/* mig_churn: a new set of MIG instances, with UUIDs of this generation. */
static void mig_reconfigure(fake_dev *d, unsigned generation) {
    if (!d->mig_full) d->mig_full = d->nmig;
    unsigned n = generation % 2 ? d->mig_full - (d->mig_full > 1) : d->mig_full;
    for (unsigned k = 0; k < n; k++) {
        mig_defaults(d, &g_mig[d->index][k], (int)k);
        snprintf(g_mig[d->index][k].uuid, sizeof g_mig[d->index][k].uuid,
                 "MIG-%08u-0000-4000-8000-%06d%06d", generation, d->index, k);
        d->mig[k] = &g_mig[d->index][k];
    }
    d->nmig = n;
}

/* Called at the start of every cycle, under g_lock. */
static void churn(void) {
    for (int i = 0; i < MAX_DEV; i++) {
        fake_dev *d = &g_dev[i];
        if (d->mig_every && g_cycle % d->mig_every == 0)
            mig_reconfigure(d, (unsigned)g_cycle / d->mig_every);
    }
    for (int s = 0; s < g_nstorms; s++)
        if (g_storm[s].every && g_cycle % g_storm[s].every == 0) g_storm[s].pending += g_storm[s].n;
}

/*
 * Common entry for every per-device call: counts it, applies NOT_SUPPORTED,
 * GPU_IS_LOST and sleep rules. Returns NVML_SUCCESS when the call should answer.
 */
static nvmlReturn_t enter(void *handle, const char *fn, fake_dev **out) {
    fake_dev *d = (fake_dev *)handle;
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned sleep_ms = 0;
    pthread_mutex_lock(&g_lock);
    fake_dev *r = root(d);
    count_call(fn, r->index);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (g_gone_code)
        rc = g_gone_code; /* the driver went away: nothing answers until NVML is initialised again */
    else if (d->parent && !d->present)
        rc = NVML_ERROR_INVALID_ARGUMENT; /* a MIG instance removed by a reconfiguration */
    for (int i = 0; rc == NVML_SUCCESS && !d->parent && i < r->nfail; i++)
        if (!strcmp(r->fails[i].fn, fn) && in_window(r->fails[i].from, r->fails[i].until)) rc = r->fails[i].code;
    if (rc == NVML_SUCCESS && r->lost_from >= 0 && g_cycle >= r->lost_from && (r->lost_until == 0 || g_cycle < r->lost_until))
        rc = NVML_ERROR_GPU_IS_LOST;
    if (r->flap_period && (unsigned)g_cycle >= r->flap_period && (unsigned)g_cycle % r->flap_period < r->flap_down)
        rc = NVML_ERROR_GPU_IS_LOST;
    for (int i = 0; rc == NVML_SUCCESS && i < r->nnotsup; i++)
        if (!strcmp(r->notsup[i], fn)) rc = NVML_ERROR_NOT_SUPPORTED;
    for (int i = 0; rc == NVML_SUCCESS && i < r->nsleep; i++)
        if (!strcmp(r->sleeps[i].fn, fn)) sleep_ms = r->sleeps[i].ms;
    pthread_mutex_unlock(&g_lock);
    if (sleep_ms) {
        struct timespec ts = { sleep_ms / 1000, (long)(sleep_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    *out = d;
    return rc;
}

#define ENTER(handle)                                  \
    fake_dev *d;                                       \
    {                                                  \
        nvmlReturn_t rc_ = enter(handle, __func__, &d); \
        if (rc_ != NVML_SUCCESS) return rc_;           \
    }

static nvmlReturn_t copy_str(char *dst, unsigned len, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > len) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- init */

nvmlReturn_t nvmlInit_v2(void) {
    pthread_mutex_lock(&g_lock);
    load_script();
    count_call(__func__, -1);
    int err = g_init_error;
    if (!err && g_init_fail_left > 0) {
        g_init_fail_left--;
        err = g_init_fail_code;
    }
    if (!err && g_gone_code) {
        if (g_gone_attempts_left > 0) {
            g_gone_attempts_left--;
            err = NVML_ERROR_DRIVER_NOT_LOADED;
        } else {
            g_gone_code = 0; /* the driver is back */
        }
    }
    unsigned sleep_ms = 0;
    if (g_init_sleep_left > 0) {
        g_init_sleep_left--;
        sleep_ms = g_init_sleep_ms;
    }
    write_stats(); /* a test waiting for the driver reads the attempts from here */
    pthread_mutex_unlock(&g_lock);
    if (sleep_ms) {
        struct timespec ts = { sleep_ms / 1000, (long)(sleep_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    return err;
}

nvmlReturn_t nvmlInitWithFlags(unsigned flags) { (void)flags; return nvmlInit_v2(); }

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&g_lock);
    count_call(__func__, -1);
    write_stats();
    pthread_mutex_unlock(&g_lock);
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned length) {
    pthread_mutex_lock(&g_lock);
    count_call(__func__, -1);
    int gone = g_gone_code;
    pthread_mutex_unlock(&g_lock);
    if (gone) return gone;
    return copy_str(version, length, g_driver);
}

nvmlReturn_t nvmlSystemGetProcessName(unsigned pid, char *name, unsigned length) {
    pthread_mutex_lock(&g_lock);
    count_call(__func__, -1);
    const char *found = NULL;
    for (unsigned i = 0; i < MAX_DEV && !found; i++)
        for (unsigned p = 0; p < g_dev[i].nproc; p++)
            if (g_dev[i].proc[p].pid + pid_offset(&g_dev[i]) == pid) { found = g_dev[i].proc[p].name; break; }
    pthread_mutex_unlock(&g_lock);
    if (!found) return NVML_ERROR_NOT_FOUND;
    return copy_str(name, length, found);
}

/* ------------------------------------------------------- discovery, ids */

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    pthread_mutex_lock(&g_lock);
    write_stats(); /* counts up to the end of the previous cycle */
    g_cycle++;
    churn();
    pthread_cond_broadcast(&g_cycle_cond);
    count_call(__func__, -1);
    for (int i = 0; i < g_ngone; i++)
        if (g_gone_at[i].cycle == g_cycle) {
            g_gone_code = g_gone_at[i].code;
            g_gone_attempts_left = g_gone_at[i].attempts;
        }
    for (int i = 0; i < g_nmig_at; i++)
        if (g_mig_at[i].cycle == g_cycle && g_mig_at[i].dev >= 0 && g_mig_at[i].dev < MAX_DEV)
            set_mig(&g_dev[g_mig_at[i].dev], g_mig_at[i].n);
    if (g_gone_code) {
        int rc = g_gone_code;
        pthread_mutex_unlock(&g_lock);
        return rc;
    }
    *count = current_count();
    unsigned sleep_ms = g_cycle == g_count_sleep_cycle ? g_count_sleep_ms : 0;
    pthread_mutex_unlock(&g_lock);
    if (sleep_ms) {
        struct timespec ts = { sleep_ms / 1000, (long)(sleep_ms % 1000) * 1000000L };
        nanosleep(&ts, NULL);
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, void **device) {
    pthread_mutex_lock(&g_lock);
    count_call(__func__, -1);
    unsigned n = current_count();
    int gone = g_gone_code;
    pthread_mutex_unlock(&g_lock);
    if (gone) return gone;
    if (index >= n) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_dev[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, void **device) {
    pthread_mutex_lock(&g_lock);
    count_call(__func__, -1);
    unsigned n = current_count();
    pthread_mutex_unlock(&g_lock);
    for (unsigned i = 0; i < n; i++)
        if (!strcmp(g_dev[i].uuid, uuid)) { *device = &g_dev[i]; return NVML_SUCCESS; }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetUUID(void *h, char *uuid, unsigned length) { ENTER(h); return copy_str(uuid, length, d->uuid); }
nvmlReturn_t nvmlDeviceGetName(void *h, char *name, unsigned length) { ENTER(h); return copy_str(name, length, d->name); }
nvmlReturn_t nvmlDeviceGetSerial(void *h, char *s, unsigned length) { ENTER(h); return copy_str(s, length, d->serial); }
nvmlReturn_t nvmlDeviceGetVbiosVersion(void *h, char *s, unsigned length) { ENTER(h); return copy_str(s, length, d->vbios); }
nvmlReturn_t nvmlDeviceGetIndex(void *h, unsigned *index) { ENTER(h); *index = (unsigned)d->index; return NVML_SUCCESS; }

/* ------------------------------------------------------------- readings */

typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
nvmlReturn_t nvmlDeviceGetUtilizationRates(void *h, nvmlUtilization_t *u) {
    ENTER(h);
    /* Neither a MIG instance nor a GPU in MIG mode has utilisation rates. */
    if (d->parent || d->nmig) return NVML_ERROR_NOT_SUPPORTED;
    u->gpu = d->util_gpu;
    u->memory = d->util_mem;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEncoderUtilization(void *h, unsigned *u, unsigned *period) {
    ENTER(h); *u = d->enc; *period = 167000; return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetDecoderUtilization(void *h, unsigned *u, unsigned *period) {
    ENTER(h); *u = d->dec; *period = 167000; return NVML_SUCCESS;
}

typedef struct { unsigned version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void *h, nvmlMemory_v2_t *m) {
    ENTER(h);
    m->total = d->mem_total;
    m->reserved = 0;
    m->used = d->mem_used;
    m->free = d->mem_total - d->mem_used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPowerUsage(void *h, unsigned *mw) { ENTER(h); *mw = d->power_mw; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(void *h, unsigned *mw) { ENTER(h); *mw = d->power_limit_mw; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *mj) {
    ENTER(h);
    /* grows by energy_step_mj per cycle, so counters are seen to be monotonic */
    *mj = d->energy_mj + d->energy_step_mj * (unsigned long long)g_cycle;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(void *h, int sensor, unsigned *t) {
    ENTER(h);
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
    *t = d->temp_gpu;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTemperatureThreshold(void *h, int type, unsigned *t) {
    ENTER(h);
    if (type == 0) *t = d->temp_shutdown;
    else if (type == 1) *t = d->temp_slowdown;
    else return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(void *h, int error_type, int counter_type, unsigned long long *n) {
    ENTER(h);
    if (counter_type == 1) /* NVML_AGGREGATE_ECC: kept across driver reloads */
        *n = error_type == 0 ? d->ecc_corr_agg : d->ecc_uncorr_agg;
    else
        *n = error_type == 0 ? d->ecc_corr : d->ecc_uncorr;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPcieReplayCounter(void *h, unsigned *n) { ENTER(h); *n = d->pcie_replay; return NVML_SUCCESS; }

nvmlReturn_t nvmlDeviceGetClockInfo(void *h, int type, unsigned *mhz) {
    ENTER(h);
    switch (type) {
    case 0: *mhz = d->clk_graphics; break;
    case 1: *mhz = d->clk_sm; break;
    case 2: *mhz = d->clk_mem; break;
    case 3: *mhz = d->clk_video; break;
    default: return NVML_ERROR_INVALID_ARGUMENT;
    }
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMaxClockInfo(void *h, int type, unsigned *mhz) {
    ENTER(h);
    if (type < 0 || type > 3) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->clk_max[type]) return NVML_ERROR_NOT_SUPPORTED;
    *mhz = d->clk_max[type];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetApplicationsClock(void *h, int type, unsigned *mhz) {
    ENTER(h);
    if (type < 0 || type > 3) return NVML_ERROR_INVALID_ARGUMENT;
    if (!d->clk_app[type]) return NVML_ERROR_NOT_SUPPORTED;
    *mhz = d->clk_app[type];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(void *h, unsigned *v) { ENTER(h); *v = d->pcie_gen; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(void *h, unsigned *v) { ENTER(h); *v = d->pcie_gen_max; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(void *h, unsigned *v) { ENTER(h); *v = d->pcie_width; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(void *h, unsigned *v) { ENTER(h); *v = d->pcie_width_max; return NVML_SUCCESS; }

nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(void *h, unsigned long long *r) {
    ENTER(h); *r = d->throttle; return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(void *h, unsigned long long *r) {
    ENTER(h); *r = d->throttle; return NVML_SUCCESS;
}

typedef struct { unsigned long long referenceTime, violationTime; } nvmlViolationTime_t;
nvmlReturn_t nvmlDeviceGetViolationStatus(void *h, int policy, nvmlViolationTime_t *v) {
    ENTER(h);
    if (policy < 0 || policy >= 12) return NVML_ERROR_INVALID_ARGUMENT;
    v->referenceTime = 1700000000000000ULL;
    v->violationTime = d->viol_ns[policy];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetNumFans(void *h, unsigned *n) { ENTER(h); *n = d->nfans; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetFanSpeed_v2(void *h, unsigned fan, unsigned *speed) {
    ENTER(h);
    if (fan >= d->nfans) return NVML_ERROR_INVALID_ARGUMENT;
    *speed = d->fan[fan];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPerformanceState(void *h, int *p) { ENTER(h); *p = d->pstate; return NVML_SUCCESS; }

typedef int nvmlEnableState_t;
nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(void *h, nvmlEnableState_t *pending) {
    ENTER(h); *pending = d->pages_pending ? 1 : 0; return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetRemappedRows(void *h, unsigned *c, unsigned *u, unsigned *p, unsigned *f) {
    ENTER(h);
    *c = d->remap_cor; *u = d->remap_unc; *p = d->remap_pending; *f = d->remap_failure;
    return NVML_SUCCESS;
}

/* Field values: the layout of nvmlFieldValue_t (nvml-wrapper-sys bindings.rs). */
typedef union { double dVal; int siVal; unsigned uiVal; unsigned long ulVal; unsigned long long ullVal; long long sllVal; unsigned short usVal; } nvmlValue_t;
typedef struct {
    unsigned fieldId;
    unsigned scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

enum { VT_UINT = 1, VT_ULL = 3 };
nvmlReturn_t nvmlDeviceGetFieldValues(void *h, int count, nvmlFieldValue_t *values) {
    ENTER(h);
    for (int i = 0; i < count; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->timestamp = 1700000000000000LL;
        v->latencyUsec = 0;
        v->nvmlReturn = NVML_SUCCESS;
        v->valueType = VT_ULL;
        switch (v->fieldId) {
        case 82: v->valueType = VT_UINT; v->value.uiVal = d->temp_mem; break;               /* MEMORY_TEMP */
        case 91: v->valueType = VT_UINT; v->value.uiVal = d->nvlinks; break;                /* NVLINK_LINK_COUNT */
        case 138: /* NVLINK_THROUGHPUT_DATA_TX, KiB, per link in scopeId */
        case 139:
            if (v->scopeId >= d->nvlinks) { v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED; break; }
            v->value.ullVal = v->fieldId == 138 ? d->nvlink_tx_kib[v->scopeId] : d->nvlink_rx_kib[v->scopeId];
            break;
        case 142: v->valueType = VT_UINT; v->value.uiVal = d->remap_cor; break;
        case 143: v->valueType = VT_UINT; v->value.uiVal = d->remap_unc; break;
        case 144: v->valueType = VT_UINT; v->value.uiVal = d->remap_pending; break;
        case 145: v->valueType = VT_UINT; v->value.uiVal = d->remap_failure; break;
        case 197: v->value.ullVal = d->pcie_tx; break;                                      /* PCIE_COUNT_TX_BYTES */
        case 198: v->value.ullVal = d->pcie_rx; break;                                      /* PCIE_COUNT_RX_BYTES */
        case 29: v->valueType = VT_UINT; v->value.uiVal = d->retired_sbe; break;            /* RETIRED_SBE */
        case 30: v->valueType = VT_UINT; v->value.uiVal = d->retired_dbe; break;            /* RETIRED_DBE */
        default: v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED; break;
        }
        fake_dev *r = root(d);
        for (int k = 0; k < r->nfield_err; k++)
            if ((r->field_errs[k].field < 0 || r->field_errs[k].field == (int)v->fieldId)
                && in_window(r->field_errs[k].from, r->field_errs[k].until))
                v->nvmlReturn = r->field_errs[k].code;
    }
    return NVML_SUCCESS;
}

/* NVML_NVLINK_ERROR_DL_REPLAY, _RECOVERY, _CRC_FLIT, _CRC_DATA; ECC_DATA is not supported here. */
nvmlReturn_t nvmlDeviceGetNvLinkErrorCounter(void *h, unsigned link, int counter, unsigned long long *value) {
    ENTER(h);
    if (link >= d->nvlinks) return NVML_ERROR_INVALID_ARGUMENT;
    if (counter < 0 || counter > 3) return NVML_ERROR_NOT_SUPPORTED;
    *value = d->nvlink_err[counter] * (link + 1ULL);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ MIG */

nvmlReturn_t nvmlDeviceGetMigMode(void *h, unsigned *current, unsigned *pending) {
    ENTER(h);
    if (d->parent) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = d->nmig ? 1 : 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *h, unsigned *n) { ENTER(h); *n = d->nmig ? 7 : 0; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(void *h, unsigned index, void **mig) {
    ENTER(h);
    if (index >= d->nmig) return NVML_ERROR_NOT_FOUND;
    *mig = d->mig[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *h, void **parent) {
    ENTER(h);
    if (!d->parent) return NVML_ERROR_INVALID_ARGUMENT;
    *parent = d->parent;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(void *h, unsigned *is_mig) { ENTER(h); *is_mig = d->parent ? 1 : 0; return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetGpuInstanceId(void *h, unsigned *id) {
    ENTER(h); if (!d->parent) return NVML_ERROR_INVALID_ARGUMENT; *id = d->gi; return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetComputeInstanceId(void *h, unsigned *id) {
    ENTER(h); if (!d->parent) return NVML_ERROR_INVALID_ARGUMENT; *id = d->ci; return NVML_SUCCESS;
}

/* ----------------------------------------------------------- processes */

typedef struct { unsigned pid; unsigned long long usedGpuMemory; unsigned gpuInstanceId, computeInstanceId; } nvmlProcessInfo_t;
/* On a GPU: every process, with its MIG instance ids; on a MIG instance: its own processes. */
static int in_instance(fake_dev *d, unsigned gi, unsigned ci) { return !d->parent || (gi == d->gi && ci == d->ci); }
static int running(fake_dev *r, unsigned i) { return g_cycle >= r->proc[i].from; }
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(void *h, unsigned *count, nvmlProcessInfo_t *infos) {
    ENTER(h);
    fake_dev *r = root(d);
    unsigned n = 0;
    for (unsigned i = 0; i < r->nproc; i++) n += running(r, i) && in_instance(d, r->proc[i].gi, r->proc[i].ci);
    if (!infos || *count < n) {
        *count = n;
        return n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < r->nproc; i++) {
        if (!running(r, i) || !in_instance(d, r->proc[i].gi, r->proc[i].ci)) continue;
        infos[k].pid = r->proc[i].pid + pid_offset(r);
        infos[k].usedGpuMemory = r->proc[i].bytes;
        infos[k].gpuInstanceId = d->parent ? NO_ID : r->proc[i].gi;
        infos[k].computeInstanceId = d->parent ? NO_ID : r->proc[i].ci;
        k++;
    }
    *count = n;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(void *h, unsigned *count, nvmlProcessInfo_t *infos) {
    ENTER(h);
    fake_dev *r = root(d);
    unsigned n = 0;
    for (unsigned i = 0; i < r->nmps; i++) n += in_instance(d, r->mps[i].gi, r->mps[i].ci);
    if (!infos || *count < n) {
        *count = n;
        return n ? NVML_ERROR_INSUFFICIENT_SIZE : NVML_SUCCESS;
    }
    unsigned k = 0;
    for (unsigned i = 0; i < r->nmps; i++) {
        if (!in_instance(d, r->mps[i].gi, r->mps[i].ci)) continue;
        infos[k].pid = r->mps[i].pid;
        infos[k].usedGpuMemory = r->mps[i].bytes;
        infos[k].gpuInstanceId = d->parent ? NO_ID : r->mps[i].gi;
        infos[k].computeInstanceId = d->parent ? NO_ID : r->mps[i].ci;
        k++;
    }
    *count = n;
    return NVML_SUCCESS;
}

typedef struct { unsigned pid; unsigned long long timeStamp; unsigned smUtil, memUtil, encUtil, decUtil; } nvmlProcessUtilizationSample_t;
/* The driver samples each process once per cycle (CPU time in microseconds) and keeps the
 * last SAMPLES_KEPT samples; older ones here show half the utilisation. */
#define SAMPLES_KEPT 3
static unsigned long long sample_time(int cycle) { return 1700000000000000ULL + (unsigned long long)cycle * 1000000ULL; }
nvmlReturn_t nvmlDeviceGetProcessUtilization(void *h, nvmlProcessUtilizationSample_t *s, unsigned *count, unsigned long long last_seen) {
    ENTER(h);
    if (d->parent || d->nmig) return NVML_ERROR_NOT_SUPPORTED; /* not in MIG mode */
    unsigned n = 0;
    for (unsigned i = 0; i < d->nproc; i++)
        for (int c = g_cycle - SAMPLES_KEPT + 1; c <= g_cycle; c++)
            n += c >= 1 && sample_time(c) > last_seen;
    if (!n) return NVML_ERROR_NOT_FOUND; /* no sample newer than last_seen */
    if (!s || *count < n) { *count = n; return NVML_ERROR_INSUFFICIENT_SIZE; }
    unsigned k = 0;
    for (unsigned i = 0; i < d->nproc; i++)
        for (int c = g_cycle - SAMPLES_KEPT + 1; c <= g_cycle; c++) {
            if (c < 1 || sample_time(c) <= last_seen) continue;
            unsigned div = c == g_cycle ? 1 : 2;
            s[k].pid = d->proc[i].pid + pid_offset(d);
            s[k].timeStamp = sample_time(c);
            s[k].smUtil = d->proc[i].sm / div;
            s[k].memUtil = d->proc[i].mem / div;
            s[k].encUtil = 0;
            s[k].decUtil = 0;
            k++;
        }
    *count = n;
    return NVML_SUCCESS;
}

/* -------------------------------------------------------------- events */

typedef struct { void *device; unsigned long long eventType, eventData; unsigned gpuInstanceId, computeInstanceId; } nvmlEventData_t;
typedef struct { int magic; } fake_set;

nvmlReturn_t nvmlEventSetCreate(void **set) {
    fake_set *s = calloc(1, sizeof *s);
    if (!s) return NVML_ERROR_UNKNOWN;
    s->magic = 0x5e7;
    *set = s;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlEventSetFree(void *set) { free(set); return NVML_SUCCESS; }
nvmlReturn_t nvmlDeviceGetSupportedEventTypes(void *h, unsigned long long *types) {
    ENTER(h); *types = 0x8 | 0x4 | 0x2; return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceRegisterEvents(void *h, unsigned long long types, void *set) {
    ENTER(h);
    (void)set;
    pthread_mutex_lock(&g_lock);
    d->events_registered |= types;
    pthread_cond_broadcast(&g_cycle_cond);
    pthread_mutex_unlock(&g_lock);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlEventSetWait_v2(void *set, nvmlEventData_t *data, unsigned timeout_ms) {
    (void)set;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000L; }
    pthread_mutex_lock(&g_lock);
    for (;;) {
        if (g_gone_code) {
            int rc = g_gone_code;
            pthread_mutex_unlock(&g_lock);
            return rc;
        }
        for (int s = 0; s < g_nstorms; s++) {
            fake_dev *d = g_storm[s].dev >= 0 && g_storm[s].dev < MAX_DEV ? &g_dev[g_storm[s].dev] : NULL;
            if (g_storm[s].pending && d && (d->events_registered & 0x8)) {
                g_storm[s].pending--;
                data->device = d;
                data->eventType = 0x8;
                data->eventData = g_storm[s].code;
                data->gpuInstanceId = 0xFFFFFFFF;
                data->computeInstanceId = 0xFFFFFFFF;
                count_call(__func__, d->index);
                pthread_mutex_unlock(&g_lock);
                return NVML_SUCCESS;
            }
        }
        for (int i = 0; i < g_nxid; i++) {
            fake_dev *d = g_xid[i].dev >= 0 && g_xid[i].dev < MAX_DEV ? &g_dev[g_xid[i].dev] : NULL;
            if (!g_xid[i].delivered && d && g_cycle >= g_xid[i].cycle && (d->events_registered & 0x8)) {
                g_xid[i].delivered = 1;
                data->device = d;
                data->eventType = 0x8;
                data->eventData = g_xid[i].code;
                data->gpuInstanceId = 0xFFFFFFFF;
                data->computeInstanceId = 0xFFFFFFFF;
                count_call(__func__, d->index);
                pthread_mutex_unlock(&g_lock);
                return NVML_SUCCESS;
            }
        }
        /* Blocks like the driver does (no polling), until a cycle starts or time is up. */
        if (pthread_cond_timedwait(&g_cycle_cond, &g_lock, &deadline) != 0) {
            pthread_mutex_unlock(&g_lock);
            return NVML_ERROR_TIMEOUT;
        }
    }
}

/* ----------------------------------------------------------------- GPM */

typedef struct { unsigned version, isSupportedDevice; } nvmlGpmSupport_t;
typedef struct { fake_dev *dev; int taken; } fake_sample;
typedef struct { char *shortName, *longName, *unit; } nvmlGpmMetricInfo;
typedef struct { unsigned metricId; nvmlReturn_t nvmlReturn; double value; nvmlGpmMetricInfo metricInfo; } nvmlGpmMetric_t;
typedef struct { unsigned version, numMetrics; void *sample1, *sample2; nvmlGpmMetric_t metrics[210]; } nvmlGpmMetricsGet_t;

nvmlReturn_t nvmlGpmQueryDeviceSupport(void *h, nvmlGpmSupport_t *s) {
    ENTER(h); s->isSupportedDevice = root(d)->gpm ? 1 : 0; return NVML_SUCCESS;
}
nvmlReturn_t nvmlGpmSampleAlloc(void **sample) {
    fake_sample *s = calloc(1, sizeof *s);
    if (!s) return NVML_ERROR_UNKNOWN;
    *sample = s;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlGpmSampleFree(void *sample) { free(sample); return NVML_SUCCESS; }
nvmlReturn_t nvmlGpmSampleGet(void *h, void *sample) {
    ENTER(h);
    if (!root(d)->gpm) return NVML_ERROR_NOT_SUPPORTED;
    ((fake_sample *)sample)->dev = d;
    ((fake_sample *)sample)->taken = 1;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlGpmMigSampleGet(void *h, unsigned gi, void *sample) {
    ENTER(h);
    if (!d->gpm) return NVML_ERROR_NOT_SUPPORTED;
    for (unsigned k = 0; k < d->nmig; k++)
        if (d->mig[k]->gi == gi) {
            ((fake_sample *)sample)->dev = d->mig[k];
            ((fake_sample *)sample)->taken = 1;
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}
static char s_short[] = "fake", s_long[] = "fake gpm metric", s_unit[] = "%";
nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *m) {
    fake_sample *a = m->sample1, *b = m->sample2;
    if (!a || !b || !a->taken || !b->taken || a->dev != b->dev) return NVML_ERROR_INVALID_ARGUMENT;
    fake_dev *d = b->dev;
    pthread_mutex_lock(&g_lock);
    count_call(__func__, root(d)->index);
    pthread_mutex_unlock(&g_lock);
    for (unsigned i = 0; i < m->numMetrics && i < 210; i++) {
        nvmlGpmMetric_t *x = &m->metrics[i];
        x->nvmlReturn = NVML_SUCCESS;
        x->metricInfo.shortName = s_short;
        x->metricInfo.longName = s_long;
        x->metricInfo.unit = s_unit;
        switch (x->metricId) {
        case 2: x->value = d->gpm_sm * 100.0; break;     /* SM_UTIL */
        case 3: x->value = d->gpm_occ * 100.0; break;    /* SM_OCCUPANCY */
        case 5: x->value = d->gpm_tensor * 100.0; break; /* ANY_TENSOR_UTIL */
        case 10: x->value = d->gpm_dram * 100.0; break;  /* DRAM_BW_UTIL */
        default: x->nvmlReturn = NVML_ERROR_NOT_SUPPORTED; break;
        }
    }
    return NVML_SUCCESS;
}
