// Run-time dispatch of the CPU kernels by instruction set. HV_CPU_DISPATCH(name, body) compiles
// the always-inline function (template) `body` three times, into functions marked for AVX-512
// (x86-64-v4), AVX2 + FMA (x86-64-v3) and baseline x86-64 (SSE2), and defines `name(args...)`,
// which calls the one for the instruction set chosen when the library loaded (cpu_isa.h). One
// portable build thus runs vectorised code everywhere, and every variant can be forced and
// tested on a wide machine. Only what is inlined into these functions sees the wider ISA.
#pragma once

#include <cstdint>
#include <utility>

#include "common/cpu_isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define HV_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define HV_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#else  // one instruction set: the three variants are the same code, only baseline is chosen
#define HV_TARGET_AVX2
#define HV_TARGET_AVX512
#endif

// For the bodies of the dispatched functions and their helpers: inlined into each variant.
#define HV_INLINE inline __attribute__((always_inline))
// For a lambda in such a body, after its parameters: a lambda is a function of its own, compiled
// for the baseline instruction set unless it is inlined.
#define HV_INLINE_LAMBDA __attribute__((always_inline))

namespace hvision::cpu {

// The bytes of one vector register of each instruction set (zmm, ymm, xmm).
constexpr int64_t vector_bytes(Isa isa) {
  return isa == Isa::avx512 ? 64 : isa == Isa::avx2 ? 32 : 16;
}

}  // namespace hvision::cpu

#define HV_CPU_VARIANT(name, isa, target, body)       \
  template <typename... Args>                         \
  target decltype(auto) name##_##isa(Args&&... args) { \
    return body(std::forward<Args>(args)...);         \
  }

// A variant that calls body<vector_bytes(isa)>(args...): for bodies written with GCC vector types
// one register wide, which GCC lowers lane by lane where a vector is wider than the hardware's.
#define HV_CPU_VECTOR_VARIANT(name, isa, target, body)                                   \
  template <typename... Args>                                                            \
  target decltype(auto) name##_##isa(Args&&... args) {                                   \
    return body<::hvision::cpu::vector_bytes(::hvision::cpu::Isa::isa)>(                 \
        std::forward<Args>(args)...);                                                    \
  }

#define HV_CPU_DISPATCH_WITH(variant, name, body)                                       \
  variant(name, baseline, , body)                                                       \
  variant(name, avx2, HV_TARGET_AVX2, body)                                             \
  variant(name, avx512, HV_TARGET_AVX512, body)                                         \
  template <typename... Args>                                                           \
  decltype(auto) name(Args&&... args) {                                                 \
    static constexpr decltype(&name##_baseline<Args...>) kVariants[] = {                \
        &name##_baseline<Args...>, &name##_avx2<Args...>, &name##_avx512<Args...>};     \
    return kVariants[static_cast<int>(::hvision::cpu::active_isa())](                   \
        std::forward<Args>(args)...);                                                   \
  }

#define HV_CPU_DISPATCH(name, body) HV_CPU_DISPATCH_WITH(HV_CPU_VARIANT, name, body)
#define HV_CPU_VECTOR_DISPATCH(name, body) HV_CPU_DISPATCH_WITH(HV_CPU_VECTOR_VARIANT, name, body)
