// CUDA's WMMA API (mma.h's nvcuda::wmma) for the emulator: fragments, fill_fragment,
// load_matrix_sync, mma_sync and store_matrix_sync with their warp-collective meaning. Every
// lane of the warp must make the same call with the same pointer and leading dimension (a lane
// missing or passing another is reported); pointers must be 256-bit aligned and leading
// dimensions a multiple of 16 bytes, as CUDA requires. Lane l holds elements l E .. l E + E - 1
// of its tile in row-major order (CUDA leaves that mapping unspecified: the kernels move
// fragments through these calls, or map every element alike). Shapes: m16n16k16 (16-bit
// operands) and m16n16k8 (precision::tf32, stored as float). mma_sync multiplies the operands
// exactly and adds in the accumulator's type, k in order; a TF32 operand that was not rounded to
// TF32 first (__float_to_tf32, as CUDA asks) is reported. Included by cuda_emu.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K> struct tile_shape;
template <int M, int N, int K> struct tile_shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K> struct tile_shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K> struct tile_shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

namespace precision {
struct tf32 {};  // TF32 operands: 10 mantissa bits, held in a float
}  // namespace precision

// The element a fragment of T stores: TF32 in a float.
template <typename T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && (K == 16 || K == 8),
                "the emulation has the m16n16k16 and m16n16k8 shapes");
  using shape = tile_shape<Use, M, N, K>;
  using element = typename storage<T>::type;
  static constexpr int rows = shape::rows, cols = shape::cols;
  static constexpr int num_elements = rows * cols / 32;
  element x[num_elements];
};

// cvt.rna.tf32.f32: v rounded to TF32's 10 mantissa bits, ties away from zero (the low 13 bits
// of the float are zero); infinities and NaN pass.
inline float __float_to_tf32(float v) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

namespace emu {

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Element v of an operand of type T as the product reads it: a TF32 operand must have been
// rounded to TF32 (its low 13 bits zero).
template <typename T, typename V>
float operand(const char* site, V v) {
  if constexpr (std::is_same_v<T, precision::tf32>) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    if ((bits & 0x1fffu) != 0 && (bits & 0x7f800000u) != 0x7f800000u) {
      const char* slash = std::strrchr(site, '/');
      bnlstm_emu::fail_block(std::string("WMMA call at ") + (slash != nullptr ? slash + 1 : site) +
                             ": a TF32 operand was not rounded to TF32 (__float_to_tf32)");
    }
  }
  return to_float(v);
}

// The checks CUDA states for a fragment's memory operand.
template <typename T>
void check_operand(const char* site, const T* p, unsigned ldm, unsigned min_ldm) {
  const char* slash = std::strrchr(site, '/');
  const std::string call = std::string("WMMA call at ") + (slash != nullptr ? slash + 1 : site);
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0) {
    bnlstm_emu::fail_block(call + ": the pointer is not 256-bit aligned");
  }
  if (ldm * sizeof(T) % 16 != 0 || ldm < min_ldm) {
    bnlstm_emu::fail_block(call + ": leading dimension " +
                           std::to_string(ldm) + " is not a multiple of 16 bytes or is under " +
                           std::to_string(min_ldm));
  }
}

// Row r, column c of the tile at p: row-major or column-major with leading dimension ldm.
inline std::size_t at(int r, int c, unsigned ldm, bool row_major) {
  return row_major ? std::size_t(r) * ldm + c : std::size_t(c) * ldm + r;
}

// The warp-wide barrier of one call with `uniform` arguments; returns this lane.
inline unsigned collective(const char* site, const void* a, const void* b, const void* c,
                           int uniform, bnlstm_emu::Published* published = nullptr) {
  const void* const words[bnlstm_emu::kPublished] = {a, b, c, nullptr};
  unsigned lane = 0;
  const auto all = bnlstm_emu::warp_collective(site, words, uniform, lane);
  if (published != nullptr) *published = all;
  return lane;
}

inline const void* word(unsigned long v) { return reinterpret_cast<const void*>(v); }

template <typename Frag, typename T>
void load(const char* site, Frag& f, const T* p, unsigned ldm, bool row_major) {
  check_operand(site, p, ldm, row_major ? Frag::cols : Frag::rows);
  const unsigned lane = collective(site, p, word(ldm), word(row_major), 3);
  for (int e = 0; e < Frag::num_elements; ++e) {
    const int flat = int(lane) * Frag::num_elements + e;
    f.x[e] = p[at(flat / Frag::cols, flat % Frag::cols, ldm, row_major)];
  }
}

}  // namespace emu

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
void fill_fragment_at(const char* site, fragment<Use, M, N, K, T, L>& f, const V& v) {
  const typename storage<T>::type value = v;
  unsigned long bits = 0;
  std::memcpy(&bits, &value, sizeof value < sizeof bits ? sizeof value : sizeof bits);
  emu::collective(site, emu::word(bits), nullptr, nullptr, 1);
  for (auto& x : f.x) x = value;
}

template <typename Use, int M, int N, int K, typename T, typename L>
void load_matrix_sync_at(const char* site, fragment<Use, M, N, K, T, L>& f,
                         const typename storage<T>::type* p, unsigned ldm) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator's load names its layout");
  emu::load(site, f, p, ldm, std::is_same_v<L, row_major>);
}

template <int M, int N, int K, typename T>
void load_matrix_sync_at(const char* site, fragment<accumulator, M, N, K, T>& f, const T* p,
                         unsigned ldm, layout_t layout) {
  emu::load(site, f, p, ldm, layout == mem_row_major);
}

template <int M, int N, int K, typename T>
void store_matrix_sync_at(const char* site, T* p, const fragment<accumulator, M, N, K, T>& f,
                          unsigned ldm, layout_t layout) {
  using Frag = fragment<accumulator, M, N, K, T>;
  const bool row_major = layout == mem_row_major;
  emu::check_operand(site, p, ldm, row_major ? Frag::cols : Frag::rows);
  const unsigned lane = emu::collective(site, p, emu::word(ldm), emu::word(row_major), 3);
  for (int e = 0; e < Frag::num_elements; ++e) {
    const int flat = int(lane) * Frag::num_elements + e;
    p[emu::at(flat / Frag::cols, flat % Frag::cols, ldm, row_major)] = f.x[e];
  }
}

// d = a b + c for the warp's tiles: each lane computes its own elements of d from every lane's
// a and b (published at the call), so every lane must take part.
template <int M, int N, int K, typename TC, typename TAB, typename LA, typename LB>
void mma_sync_at(const char* site, fragment<accumulator, M, N, K, TC>& d,
                 const fragment<matrix_a, M, N, K, TAB, LA>& a,
                 const fragment<matrix_b, M, N, K, TAB, LB>& b,
                 const fragment<accumulator, M, N, K, TC>& c) {
  using FA = fragment<matrix_a, M, N, K, TAB, LA>;
  using FB = fragment<matrix_b, M, N, K, TAB, LB>;
  using FC = fragment<accumulator, M, N, K, TC>;
  bnlstm_emu::Published all = nullptr;
  const unsigned lane = emu::collective(site, &a, &b, nullptr, 0, &all);
  TC out[FC::num_elements];
  for (int e = 0; e < FC::num_elements; ++e) {
    const int flat = int(lane) * FC::num_elements + e, i = flat / FC::cols, j = flat % FC::cols;
    TC sum = c.x[e];
    for (int k = 0; k < K; ++k) {
      const int fa = i * FA::cols + k, fb = k * FB::cols + j;
      const auto* la = static_cast<const FA*>(all[fa / FA::num_elements][0]);
      const auto* lb = static_cast<const FB*>(all[fb / FB::num_elements][1]);
      sum += TC(emu::operand<TAB>(site, la->x[fa % FA::num_elements])) *
             TC(emu::operand<TAB>(site, lb->x[fb % FB::num_elements]));
    }
    out[e] = sum;
  }
  // every lane has read the operands before any returns (and reuses their memory), as the one
  // instruction consumes them at once
  emu::collective(site, nullptr, nullptr, nullptr, 0);
  for (int e = 0; e < FC::num_elements; ++e) d.x[e] = out[e];
}

}  // namespace nvcuda::wmma

// The call site of each WMMA call, as __syncthreads names its own.
#define fill_fragment(...) fill_fragment_at(__FILE__ ":" BNLSTM_EMU_STR(__LINE__), __VA_ARGS__)
#define load_matrix_sync(...) \
  load_matrix_sync_at(__FILE__ ":" BNLSTM_EMU_STR(__LINE__), __VA_ARGS__)
#define store_matrix_sync(...) \
  store_matrix_sync_at(__FILE__ ":" BNLSTM_EMU_STR(__LINE__), __VA_ARGS__)
#define mma_sync(...) mma_sync_at(__FILE__ ":" BNLSTM_EMU_STR(__LINE__), __VA_ARGS__)
