// Large CPU buffers of the ops and the Function (the (T, B, 4H) input product, hw, dpre,
// ...), reused from one call to the next. glibc serves such sizes from its heap and hands them
// back to the system when a call frees them together, so every call paged them in afresh: 7600
// page faults a forward+backward at T=100, B=32, 128/128, about 1.8 us each on this VM (a
// quarter of the call), where nn.LSTM took none. A buffer's memory returns to the cache when
// its storage dies (the deleter of its DataPtr: whoever held the storage last, a view, a
// Python object, a saved tensor), so memory in use is never handed out twice. Free memory
// beyond BNLSTM_CPU_CACHE_MB (256 MiB; 0 turns the cache off) is released, least recently
// freed first. CUDA tensors come from PyTorch's caching allocator already.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace bnlstm {

namespace cpu_buffers {

// Smaller buffers come from malloc as they are. From 64 KiB on they are cached: with 256 KiB,
// a call's (T, 2, 4H) sums at T=50, B=32, 128/128 (200 KB) went through glibc's heap top, which
// it trimmed and grew again each call (tests/test_cpu_buffers.py counted up to 535 page faults
// a call; with 64 KiB, 0.4-74 in eight processes).
constexpr size_t kMinBytes = size_t(1) << 16;

// The bound, read once: BNLSTM_CPU_CACHE_MB, 256 MiB where unset.
inline size_t cache_bytes() {
  static const size_t bytes = [] {
    const char* mb = std::getenv("BNLSTM_CPU_CACHE_MB");
    if (mb == nullptr || *mb == '\0') return size_t(256) << 20;
    char* end = nullptr;
    const unsigned long long value = std::strtoull(mb, &end, 10);
    TORCH_CHECK(*end == '\0' && *mb != '-' && value < (1ull << 40),
                "BNLSTM_CPU_CACHE_MB must be a whole number of MiB (0 turns the buffer cache "
                "off), got '", mb, "'");
    return static_cast<size_t>(value) << 20;
  }();
  return bytes;
}

struct Block {
  void* data;
  size_t bytes;
};

struct Cache {
  std::mutex mutex;
  std::vector<Block> free;  // least recently freed first
  size_t free_bytes = 0;
};

inline Cache& cache() {
  static Cache* instance = new Cache();  // never destroyed: storages may die after teardown
  return *instance;
}

// A storage's deleter: its memory goes back to the free list, and the oldest free memory
// beyond the bound goes back to the system.
inline void give_back(void* context) {
  const Block* block = static_cast<const Block*>(context);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  c.free.push_back(*block);
  c.free_bytes += block->bytes;
  delete block;
  size_t drop = 0;
  for (; drop < c.free.size() && c.free_bytes > cache_bytes(); ++drop) {
    c10::free_cpu(c.free[drop].data);
    c.free_bytes -= c.free[drop].bytes;
  }
  c.free.erase(c.free.begin(), c.free.begin() + drop);
}

// The smallest free block that holds `bytes` without wasting more than as much again (of
// equal ones the most recently freed, whose pages are likeliest still in the caches), taken off
// the free list, or a new one.
inline Block take(size_t bytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    int64_t best = -1;
    for (int64_t i = static_cast<int64_t>(c.free.size()) - 1; i >= 0; --i) {
      const size_t have = c.free[i].bytes;
      if (have >= bytes && have <= 2 * bytes &&
          (best < 0 || have < c.free[best].bytes)) {
        best = i;
      }
    }
    if (best >= 0) {
      const Block block = c.free[best];
      c.free.erase(c.free.begin() + best);
      c.free_bytes -= block.bytes;
      return block;
    }
  }
  return {c10::alloc_cpu(bytes), bytes};
}

}  // namespace cpu_buffers

// at::empty(sizes, options) for the ops' outputs and scratch, from the cache where the tensor is
// on the CPU and large. The contents are undefined, as at::empty's.
inline at::Tensor reusable_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  using namespace cpu_buffers;
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (options.device().type() != at::kCPU || bytes < kMinBytes || bytes > cache_bytes()) {
    return at::empty(sizes, options);
  }
  const Block block = take(bytes);
  c10::DataPtr data(block.data, new Block(block), &give_back, at::Device(at::kCPU));
  // resizable as at::empty's: a storage resized past its block gets the CPU allocator's memory,
  // and the block comes back here
  c10::Storage storage(c10::Storage::use_byte_size_t(), block.bytes, std::move(data),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, options).set_(storage, 0, sizes);
}

}  // namespace bnlstm
