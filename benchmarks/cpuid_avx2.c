/* An AVX2-only x86 CPU for one process, to measure what a CPU without AVX-512 (AMD Zen 2/3, Intel before
 * Skylake-SP) gets: loaded with LD_PRELOAD by `benchmarks/synthesize_cpu.py --isa avx2` (built there with cc).
 *
 * Libraries pick their kernels by the CPUID instruction: oneDNN and MKL have environment variables to cap that
 * (ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), ATen too (ATEN_CPU_CAPABILITY), onnxruntime's MLAS has none. On
 * Linux a process can make CPUID fault (arch_prctl ARCH_SET_CPUID, where the CPU and hypervisor support CPUID
 * faulting: the "cpuid_fault" flag of /proc/cpuinfo); this library does so before any other library initialises,
 * and answers each faulting CPUID from a SIGSEGV handler with the AVX-512 (and AVX-VNNI) feature bits cleared.
 * Every library in the process then sees an AVX2 CPU. A later SIGSEGV handler (Python's faulthandler) would
 * break it: the benchmark does not install one. A genuine segfault goes to the handler that was there before.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

static struct sigaction previous;

static void real_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    (void)sig; (void)info;
    if (ip[0] != 0x0f || ip[1] != 0xa2) {  /* not CPUID: a real fault, for the previous handler */
        sigaction(SIGSEGV, &previous, NULL);
        return;
    }
    uint32_t leaf = (uint32_t)g[REG_RAX], subleaf = (uint32_t)g[REG_RCX], r[4];
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    real_cpuid(leaf, subleaf, r);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && subleaf == 0) {
        /* EBX: avx512 f dq ifma pf er cd bw vl; ECX: vbmi vbmi2 vnni bitalg vpopcntdq; EDX: 4vnniw 4fmaps vp2intersect fp16 */
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
    }
    if (leaf == 7 && subleaf == 1) r[0] &= ~((1u << 4) | (1u << 5)); /* avx_vnni, avx512_bf16 */
    if (leaf == 0xd && subleaf == 0) r[0] &= ~0xe0u;                  /* no opmask/ZMM state saved */
    g[REG_RAX] = r[0];
    g[REG_RBX] = r[1];
    g[REG_RCX] = r[2];
    g[REG_RDX] = r[3];
    g[REG_RIP] += 2;
}

__attribute__((constructor)) static void start(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, &previous);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}
