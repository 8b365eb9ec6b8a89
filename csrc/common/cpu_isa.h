// The instruction set the CPU kernels run: the widest this CPU supports, or a lower one asked for
// with HVISION_CPU_ISA, so that any machine can run (and test, and time) every build of the
// kernels. Read once, when the library is loaded.
#pragma once

#include <array>
#include <string_view>

namespace hvision::cpu {

// In increasing order; the value indexes the variants of HV_CPU_DISPATCH (cpu_dispatch.h).
enum class Isa : int { baseline, avx2, avx512 };

constexpr std::array<std::string_view, 3> kIsaNames = {"baseline", "avx2", "avx512"};
constexpr const char* kIsaVariable = "HVISION_CPU_ISA";

constexpr std::string_view isa_name(Isa isa) { return kIsaNames[static_cast<int>(isa)]; }

// The widest instruction set this CPU (and its operating system) supports.
Isa native_isa();

// The one the kernels run. Raises c10::Error, naming the allowed values, when HVISION_CPU_ISA
// holds an unknown name or one wider than native_isa().
Isa active_isa();

}  // namespace hvision::cpu
