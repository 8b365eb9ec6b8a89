#include "common/cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace hvision::cpu {
namespace {

struct IsaChoice {
  Isa isa;
  std::string error;  // empty when the request is valid
};

std::string allowed_names() {
  std::string names;
  for (std::string_view name : kIsaNames) names += (names.empty() ? "" : "|") + std::string(name);
  return names;
}

IsaChoice choose_isa(const char* requested) {
  const Isa native = native_isa();
  if (requested == nullptr || *requested == '\0') return {native, ""};
  for (size_t i = 0; i < kIsaNames.size(); ++i) {
    if (kIsaNames[i] != requested) continue;
    const Isa isa = static_cast<Isa>(i);
    if (isa <= native) return {isa, ""};
    return {native, std::string(kIsaVariable) + "=" + requested + ": this CPU supports at most " +
                        std::string(isa_name(native)) + " (allowed: " + allowed_names() + ")"};
  }
  return {native, std::string(kIsaVariable) + "=" + requested +
                      " is not an instruction set the kernels are built for (allowed: " +
                      allowed_names() + ")"};
}

}  // namespace

Isa native_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  // The same levels the kernels are compiled for (cpu_dispatch.h); libgcc also checks that the
  // operating system saves the wider registers.
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::avx512;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::avx2;
#endif
  return Isa::baseline;
}

Isa active_isa() {
  // Resolved on first use: the Python module asks while it is imported, before any kernel runs.
  static const IsaChoice choice = choose_isa(std::getenv(kIsaVariable));
  TORCH_CHECK(choice.error.empty(), choice.error);
  return choice.isa;
}

}  // namespace hvision::cpu
