// Run-time dispatch of the CPU kernels by instruction set. A function marked HV_CPU_CLONES is
// compiled three times (AVX-512, AVX2+FMA, baseline x86-64) and the loader picks the widest one
// the CPU supports, so one portable build runs vectorised code everywhere. The step math it
// inlines is compiled into each clone; nothing outside these functions sees the wider ISA.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define HV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HV_CPU_CLONES
#endif

// For the per-channel loops of the CPU kernels: inlined into the clone that calls them.
#define HV_INLINE inline __attribute__((always_inline))
