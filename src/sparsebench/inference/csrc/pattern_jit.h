// Machine code compiled for one sparsity pattern (x86-64 with AVX-512, Linux): the sparse
// product of a group of output rows, with each row's sums held in a register for the whole
// group and each weight read by the multiply-add itself as a broadcast memory operand.
//
// Why: in the count-class kernel every nonzero loads its input vector (64 bytes per 16
// multiply-adds) from L1, and on Zen 4 those loads, not the multiply-adds, set the pace:
// about 1.7 cycles per 512-bit multiply-add from L1 against 1.0 from registers (a
// microbenchmark of both instruction mixes, not kept). When the sums of R rows live in
// registers, one load of an input feature serves every row of the group that has a nonzero
// there (2.6 rows on average at 90% and R = 28), and the weight costs 4 bytes. Registers can
// only be named in the instruction, so the code is generated for the pattern, as
// DeepSparse's engine does; in the same microbenchmark this form ran one multiply-add per
// cycle.
//
// Only the instruction forms the kernels need are encoded (Intel SDM vol. 2, 2.7 "EVEX"):
// vmovaps zmm <-> [gpr + disp], vbroadcastss zmm, [gpr + disp], vfmadd231ps zmm, zmm,
// [gpr + disp]{1to16}, add gpr, imm32 and ret. Displacements use the compressed 8-bit form
// where they fit (disp8 * N, N = 64 for a vector, 4 for a broadcast float) and 32 bits
// otherwise.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <set>
#include <utility>
#include <vector>

namespace pattern_jit {

// Register numbers of the System V calling convention's first four arguments.
constexpr int kRdi = 7, kRsi = 6, kRdx = 2, kRcx = 1;

class Emitter {
 public:
  std::vector<uint8_t> bytes;

  // zmm <- [base + disp] (64-byte aligned).
  void load(int zmm, int base, int32_t disp) {
    evex(1, 0, zmm, -1, base, false);
    bytes.push_back(0x28);
    memory(zmm, base, disp, 64);
  }
  // [base + disp] <- zmm.
  void store(int base, int32_t disp, int zmm) {
    evex(1, 0, zmm, -1, base, false);
    bytes.push_back(0x29);
    memory(zmm, base, disp, 64);
  }
  // zmm <- broadcast(float at [base + disp]) (vbroadcastss).
  void broadcast(int zmm, int base, int32_t disp) {
    evex(2, 1, zmm, -1, base, false);
    bytes.push_back(0x18);
    memory(zmm, base, disp, 4);
  }
  // acc += x * broadcast(float at [base + disp]).
  void fma_broadcast(int acc, int x, int base, int32_t disp) {
    evex(2, 1, acc, x, base, true);
    bytes.push_back(0xB8);
    memory(acc, base, disp, 4);
  }
  // base += imm (64-bit register).
  void add(int base, int32_t imm) {
    bytes.push_back(static_cast<uint8_t>(0x48 | (base >> 3)));
    bytes.push_back(0x81);
    bytes.push_back(static_cast<uint8_t>(0xC0 | (base & 7)));
    put32(imm);
  }
  void ret() { bytes.push_back(0xC3); }

 private:
  // The 4-byte EVEX prefix of a 512-bit instruction: map 1 = 0F, 2 = 0F38; pp 1 = 66;
  // reg is ModRM.reg's vector register (0-31), vreg the second source (-1: none), base a
  // general register (its 4th bit goes to B); no index register, no mask, W0.
  void evex(int map, int pp, int reg, int vreg, int base, bool broadcast) {
    const int v = vreg < 0 ? 0 : vreg;
    bytes.push_back(0x62);
    bytes.push_back(static_cast<uint8_t>(map | ((reg & 8) ? 0 : 0x80) | 0x40 |
                                         ((base & 8) ? 0 : 0x20) | ((reg & 16) ? 0 : 0x10)));
    bytes.push_back(static_cast<uint8_t>(((~v & 15) << 3) | 0x04 | pp));
    bytes.push_back(static_cast<uint8_t>(0x40 | (broadcast ? 0x10 : 0) | ((v & 16) ? 0 : 0x08)));
  }
  // ModRM with a displacement from base (never rsp or r12, which would need a SIB byte).
  void memory(int reg, int base, int32_t disp, int n) {
    const int r = (reg & 7) << 3, b = base & 7;
    if (disp % n == 0 && disp / n >= -128 && disp / n <= 127) {
      bytes.push_back(static_cast<uint8_t>(0x40 | r | b));
      bytes.push_back(static_cast<uint8_t>(static_cast<int8_t>(disp / n)));
    } else {
      bytes.push_back(static_cast<uint8_t>(0x80 | r | b));
      put32(disp);
    }
  }
  void put32(int32_t v) {
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    bytes.insert(bytes.end(), b, b + 4);
  }
};

// A base register moved along a stream of increasing offsets so that each stays within the
// compressed 8-bit displacement: when one would not fit, the register is advanced (one add)
// to put it at the low end of the window.
struct MovingBase {
  int reg;
  int n;           // the displacement's scale: 64 (vectors) or 4 (floats)
  int64_t at = 0;  // the offset the register points to now, from its value at entry
  int32_t disp(Emitter& e, int64_t offset) {
    if (offset - at > 127 * n || offset - at < -128 * n) {
      const int64_t to = offset + 128 * n;
      e.add(reg, static_cast<int32_t>(to - at));
      at = to;
    }
    return static_cast<int32_t>(offset - at);
  }
};

// Code copied to pages mapped executable (and no longer writable); map returns a null pointer
// (errno set) where the system refuses such pages. Live regions are
// registered, so a caller can check that a byte tensor it is handed is such code and not a
// copy of it in ordinary memory (as deepcopy or clone would make).
class Executable {
 public:
  static std::pair<void*, size_t> map(const std::vector<uint8_t>& code) {
    // Code of a megabyte or more goes on 2 MB pages where the kernel gives them (transparent
    // huge pages, asked for by madvise): run once per panel, a 2.2 MB kernel on 4 KB pages
    // needs more translations than the instruction TLBs hold, and with caches cold BERT's
    // 768x3072 product at 1,024 rows took 7.41 ms, on 2 MB pages 6.24 (the count-class
    // layout 7.60 and 7.55; a script, not kept). Smaller code keeps 4 KB pages: a 2 MB page
    // per layer would waste most of it.
    const size_t huge = size_t{2} << 20;
    const bool big = code.size() >= huge / 2;
    const size_t page = big ? huge : static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t size = std::max<size_t>(page, (code.size() + page - 1) / page * page);
    void* p = MAP_FAILED;
    if (big) {
      // Mapped 2 MB longer, then trimmed to a 2 MB boundary at both ends.
      void* raw =
          mmap(nullptr, size + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (raw != MAP_FAILED) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(raw);
        const uintptr_t aligned = (a + huge - 1) / huge * huge;
        if (aligned > a) munmap(raw, aligned - a);
        munmap(reinterpret_cast<void*>(aligned + size), a + huge - aligned);
        p = reinterpret_cast<void*>(aligned);
        madvise(p, size, MADV_HUGEPAGE);
      }
    } else {
      p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (p == MAP_FAILED) return {nullptr, 0};
    std::memcpy(p, code.data(), code.size());
    if (mprotect(p, size, PROT_READ | PROT_EXEC) != 0) {  // a system that forbids it (W^X)
      const int error = errno;
      munmap(p, size);
      errno = error;
      return {nullptr, 0};
    }
    std::lock_guard<std::mutex> lock(mutex());
    regions().emplace(reinterpret_cast<uintptr_t>(p), size);
    return {p, size};
  }
  static void unmap(void* p, size_t size) {
    {
      std::lock_guard<std::mutex> lock(mutex());
      regions().erase({reinterpret_cast<uintptr_t>(p), size});
    }
    munmap(p, size);
  }
  // Whether [p, p + size) lies in one live region.
  static bool holds(const void* p, size_t size) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    std::lock_guard<std::mutex> lock(mutex());
    auto it = regions().upper_bound({a, SIZE_MAX});
    if (it == regions().begin()) return false;
    --it;
    return a >= it->first && a + size <= it->first + it->second;
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::set<std::pair<uintptr_t, size_t>>& regions() {
    static std::set<std::pair<uintptr_t, size_t>> r;
    return r;
  }
};

}  // namespace pattern_jit
