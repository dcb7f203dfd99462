// The CPU time loops. Each step is a pass over blocks of hidden units: a block owns all
// four gates of its units across every running row, so it computes its slice of the recurrent
// GEMM and every batch statistic of its features itself, and blocks share nothing within a
// step (the end of the step is the only barrier). One parallel region runs the whole loop.
// The blocks depend on H alone, never on the thread count, and every sum runs in a fixed
// order: results are bitwise the same for any number of threads. Inner loops run over a
// block's contiguous features, so they vectorise (step_math.h's float exp is plain arithmetic
// for that reason).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <thread>
#include <type_traits>
#include <vector>

#include "cpu_buffers.h"
#include "cpu_passes.h"
#include "loops.h"
#include "step_math.h"

#ifdef BNLSTM_WITH_MKL
// The BLAS and MKL service functions of the MKL that torch links (setup.py checks they are
// exported before it defines BNLSTM_WITH_MKL).
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc);
int MKL_Set_Num_Threads_Local(int nt);  // mkl_set_num_threads_local of mkl.h
}
#endif

namespace bnlstm {
namespace {

// Hidden units per task (all 4 gates of each), the same in both loops: as few blocks of at most
// kMaxUnits as H allows, of equal width rounded up to 8 (a vector of floats), the last taking
// what is left: H=100 gives 56 and 44, H=128 two of 64, H=256 four of 64 (H=513 eight of 64
// and one of 1). Wider blocks make a block's GEMM more efficient, and
// balanced ones keep a step's critical path short: against blocks of 32 (32, 32, 32, 4 at
// H=100), forward+backward took 1.41-1.50x nn.LSTM's time against 1.62-1.73x at T=64, B=32,
// 1/100, and 1.39-1.40x against 1.46-1.54x at T=100, B=32, 128/128 (inference 1.11-1.14x
// against 1.13-1.32x); at 256/256 the backward's 64 against 32 measured 1.06-1.09x against
// 1.10x (2 threads, alternating processes, 2026-12-06). At H <= 128 that leaves two tasks per
// step, which more than two threads cannot share. Blocks depend on H alone, never on the
// thread count.
constexpr int64_t kMaxUnits = 64;
constexpr int64_t block_units(int64_t H) {
  const int64_t blocks = (H + kMaxUnits - 1) / kMaxUnits, even = (H + blocks - 1) / blocks;
  return std::min(kMaxUnits, (even + 7) / 8 * 8);
}
static_assert(block_units(100) == 56 && block_units(128) == 64 && block_units(264) == 56,
              "blocks as the comment says");
// Below this many multiply-adds per step (n x H x 4H) a loop runs on the calling thread alone:
// handing blocks between threads costs more than the work.
constexpr int64_t kSerialWork = int64_t(1) << 16;

// Row-major C[m, ncols] (leading dimension ldc) = A[m, k] W^T with W [ncols, k] (transpose_w),
// or A W with W [k, ncols]; single-threaded inside a task.
template <typename S>
void matmul(bool transpose_w, int64_t m, int64_t ncols, int64_t k, const S* a, int64_t lda,
            const S* w, int64_t ldw, S* c, int64_t ldc) {
  if (m == 0) return;
#ifdef BNLSTM_WITH_MKL
  // column-major BLAS: C^T = op(W) A^T
  const char ta = transpose_w ? 'T' : 'N', tb = 'N';
  const int im = static_cast<int>(ncols), in = static_cast<int>(m), ik = static_cast<int>(k);
  const int ilw = static_cast<int>(ldw), ila = static_cast<int>(lda), ilc = static_cast<int>(ldc);
  const S one = 1, zero = 0;
  if constexpr (std::is_same_v<S, float>) {
    sgemm_(&ta, &tb, &im, &in, &ik, &one, w, &ilw, a, &ila, &zero, c, &ilc);
  } else {
    dgemm_(&ta, &tb, &im, &in, &ik, &one, w, &ilw, a, &ila, &zero, c, &ilc);
  }
#else
  const auto dtype = c10::CppTypeToScalarType<S>::value;
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor a_t = at::from_blob(const_cast<S*>(a), {m, k}, {lda, 1}, opts);
  const at::Tensor w_t = transpose_w
      ? at::from_blob(const_cast<S*>(w), {ncols, k}, {ldw, 1}, opts).t()
      : at::from_blob(const_cast<S*>(w), {k, ncols}, {ldw, 1}, opts);
  at::Tensor c_t = at::from_blob(c, {m, ncols}, {ldc, 1}, opts);
  at::mm_out(c_t, a_t, w_t);
#endif
}

// The recurrent weights as one loop's per-step GEMMs read them, copied once per call so that a
// block's slice is contiguous. Forward, each block's four gate slices (rows g H + j0 .. j0 + w
// - 1 of W_hh [4H, H]) next to each other: C[m, 4w] = h_{t-1} slices^T in one GEMM. Backward,
// a block's columns j0 .. j0 + w - 1 of W_hh transposed ([w, 4H]): C[m, w] = dpre_hh W_hh[:,
// j0:j0+w] without a strided read of W_hh every step.
template <typename S>
class StepWeights {
 public:
  // units: the block width; forward: which of the two layouts
  StepWeights(const S* weight_hh, int64_t H, int64_t units, bool forward)
      : H_(H),
        storage_(reusable_empty({4 * H * H},
                                at::TensorOptions(c10::CppTypeToScalarType<S>::value))),
        blocks_(storage_.data_ptr<S>()) {
    for (int64_t j0 = 0; j0 < H; j0 += units) {
      const int64_t w = std::min(units, H - j0);
      S* block = blocks_ + 4 * j0 * H;
      if (forward) {
        for (int g = 0; g < 4; ++g) {
          std::copy_n(weight_hh + (g * H + j0) * H, w * H, block + g * w * H);
        }
      } else {
        for (int64_t r = 0; r < 4 * H; ++r) {  // row r of W_hh, columns j0 ..
          for (int64_t u = 0; u < w; ++u) block[u * 4 * H + r] = weight_hh[r * H + j0 + u];
        }
      }
    }
  }

  // C[m, 4w] (gate g at columns g w ..) = A[m, H] times the block's gate slices transposed
  void forward(int64_t j0, int64_t w, int64_t m, const S* a, S* c) const {
    matmul(true, m, 4 * w, H_, a, H_, blocks_ + 4 * j0 * H_, H_, c, 4 * w);
  }

  // C[m, w] (leading dimension ldc) = A[m, 4H] times W_hh's columns j0 .. j0 + w - 1
  void backward(int64_t j0, int64_t w, int64_t m, const S* a, S* c, int64_t ldc) const {
    matmul(true, m, w, 4 * H_, a, 4 * H_, blocks_ + 4 * j0 * H_, 4 * H_, c, ldc);
  }

 private:
  int64_t H_;
  at::Tensor storage_;  // from the buffer cache: a call's copy is not paged in afresh
  S* blocks_;  // forward: [block][gate][unit][H]; backward: [block][unit][4H]
};

// The GEMMs of a loop run one thread each, inside its tasks, whatever MKL would pick outside a
// parallel region: the summation order then never depends on the thread count. ATen sizes a
// thread's OpenMP pool from MKL's count the first time that thread reaches at::parallel_for
// (unless torch.set_num_threads was called): do that first, or the pool, and every later torch
// op on the thread, would stay at one thread.
struct SerialBlas {
#ifdef BNLSTM_WITH_MKL
  int previous = (at::internal::lazy_init_num_threads(), MKL_Set_Num_Threads_Local(1));
  ~SerialBlas() { MKL_Set_Num_Threads_Local(previous); }
#endif
};

// Waits until at least `target` blocks are done: spins briefly (a step's blocks take
// microseconds), then yields the core, so a thread waiting for a descheduled one does not keep
// a competing process off the machine.
inline void wait_for(const std::atomic<int64_t>& done, int64_t target) {
  for (int spin = 0; done.load(std::memory_order_acquire) < target; ++spin) {
    if (spin >= 2000) std::this_thread::yield();
  }
}

// Runs block(s, j0, w) for the loop's steps s = 0 .. T-1 (in the caller's order) and every
// block of hidden units of each, in one parallel region for the whole loop. Blocks are tickets
// taken in order, and a ticket of step s is taken only once every block of step s - 1 is done
// (the step's barrier): a thread holds a ticket only while it computes it, so a thread that is
// descheduled (another process on the core) while it holds none delays nobody; the others take
// its share. Each block does the same arithmetic whoever runs it: results do not depend on the
// thread count. Steps whose work n x H x 4H is small run on the calling thread alone.
template <typename F>
void for_each_step_block(int64_t T, int64_t n_max, int64_t H, int64_t units, const F& block) {
  const int64_t blocks = (H + units - 1) / units, total = T * blocks;
  const auto run = [&](int64_t k) {
    const int64_t j0 = (k % blocks) * units;
    block(k / blocks, j0, std::min(units, H - j0));
  };
  if (blocks == 1 || n_max * H * 4 * H < kSerialWork || at::get_num_threads() == 1) {
    for (int64_t k = 0; k < total; ++k) run(k);
    return;
  }
  std::atomic<int64_t> next{0}, done{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t k = next.load(std::memory_order_relaxed); k < total;
         k = next.load(std::memory_order_relaxed)) {
      wait_for(done, k / blocks * blocks);  // step k / blocks may start
      if (!next.compare_exchange_weak(k, k + 1, std::memory_order_relaxed)) continue;
      run(k);
      done.fetch_add(1, std::memory_order_release);
    }
  });
}

// Asks the caches for rows b < n, columns [0, w) of a row-major matrix (leading dimension ld),
// ahead of a pass that reads them: a block issues this for the rows its step will stream (u,
// hw, c) before its GEMM, which hides their latency. Without it, the loads of u_t took 40% of
// the forward's fused pass (perf, T=100, B=32, 128/128): those rows come from memory each step.
template <typename S>
inline void prefetch_rows(const S* z, int64_t ld, int64_t n, int64_t w) {
  constexpr int64_t kLine = 64 / sizeof(S);
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t u = 0; u < w; u += kLine) __builtin_prefetch(z + b * ld + u);
  }
}

// The learnable per-feature constants of a block of units j0 .. j0 + w - 1 at step t, and the
// step's statistics of its features. The input's contribution is read as (u - in_mean) in_scale
// + in_shift: from x W_ih^T with the step's input statistics where p.input_stat is given, else
// from u itself (mean 0, scale 1, shift 0: exactly u).
template <typename S>
struct BlockConstants {
  S gamma_hh[4][kMaxUnits], mean_hh[4][kMaxUnits], rstd_hh[4][kMaxUnits];
  S gamma_c[kMaxUnits], beta_c[kMaxUnits], mean_c[kMaxUnits], rstd_c[kMaxUnits];
  S in_mean[4][kMaxUnits], in_rstd[4][kMaxUnits], in_gamma[4][kMaxUnits];
  S in_scale[4][kMaxUnits], in_shift[4][kMaxUnits];  // gamma_ih rstd, bias

  template <typename P>
  BlockConstants(const P& p, int64_t t, int64_t j0, int64_t w) {
    const int64_t H = p.H, G = 4 * H;
    const S* stat = static_cast<const S*>(p.input_stat);
    const S* gamma_ih = static_cast<const S*>(p.gamma_ih);
    const S* bias = static_cast<const S*>(p.bias);
    for (int g = 0; g < 4; ++g) {
      const int64_t c0 = g * H + j0;
      std::copy_n(static_cast<const S*>(p.gamma_hh) + c0, w, gamma_hh[g]);
      if (stat == nullptr) {
        std::fill_n(in_mean[g], w, S(0));
        std::fill_n(in_rstd[g], w, S(1));
        std::fill_n(in_gamma[g], w, S(1));
      } else {
        std::copy_n(stat + t * 2 * G + c0, w, in_mean[g]);
        std::copy_n(stat + (t * 2 + 1) * G + c0, w, in_rstd[g]);
        std::copy_n(gamma_ih + c0, w, in_gamma[g]);
      }
      for (int64_t u = 0; u < w; ++u) in_scale[g][u] = in_gamma[g][u] * in_rstd[g][u];
      if (stat != nullptr && bias != nullptr) {
        std::copy_n(bias + c0, w, in_shift[g]);
      } else {
        std::fill_n(in_shift[g], w, S(0));
      }
    }
    for (int64_t u = 0; u < w; ++u) {
      gamma_c[u] = static_cast<const S*>(p.gamma_c)[j0 + u];
      beta_c[u] = static_cast<const S*>(p.beta_c)[j0 + u];
    }
  }

  // Pre-activation of gate g at unit u, from a row's u (or x W_ih^T) at the block's first unit
  // (gates H apart) and its hw there (gates hw_gates apart: the block's width).
  S pre(int g, int64_t u, const S* u_row, const S* hw_row, int64_t H, int64_t hw_gates) const {
    const S x = input_contribution(u_row[g * H + u], in_mean[g][u], in_scale[g][u],
                                   in_shift[g][u]);
    return recurrent_preactivation(x, hw_row[g * hw_gates + u], mean_hh[g][u], rstd_hh[g][u],
                                   gamma_hh[g][u]);
  }
};

// Mean and 1/std of features z[.. u ..] (u < w) at a step: from the batch (two-pass sums over
// the n rows, the running row moving by factor) or, in evaluation and for single-row steps,
// from the running row alone, without a pass over the rows.
template <typename S>
BNLSTM_INLINE void block_statistics(const S* z, int64_t ld, int64_t n, int64_t w, bool use_batch,
                                    S factor, S eps, S* run_mean, S* run_var, S* stat,
                                    int64_t stat_ld, S* mean, S* rstd) {
  S total[kMaxUnits] = {}, centred[kMaxUnits] = {};
  if (use_batch) feature_sums(z, ld, n, w, total, centred);
  for (int64_t u = 0; u < w; ++u) {
    step_statistics(total[u], centred[u], n, use_batch, factor, eps, run_mean + u, run_var + u,
                    true, mean[u], rstd[u]);
    stat[u] = mean[u];
    stat[stat_ld + u] = rstd[u];
  }
}

template <typename S>
BNLSTM_INLINE void forward_block(const FwdParams& p, const StepWeights<S>& weights, int64_t t,
                                 int64_t n, int64_t n_next, int64_t row, bool use_batch, S factor,
                                 int64_t j0, int64_t w) {
  const int64_t H = p.H, G = 4 * H, B = p.B;
  const S eps = static_cast<S>(p.eps);
  const S* u_t = static_cast<const S*>(p.u) + t * B * G + j0;
  // the block's rows of hw_t, block-major (hw_block), written only where p.keep_hw
  S* hw_block = static_cast<S*>(p.hw) + t * B * G + 4 * j0 * B;
  const S* h_prev = static_cast<const S*>(p.y) + t * B * H;
  S* h_next = static_cast<S*>(p.y) + (t + 1) * B * H + j0;
  const S* c_prev = static_cast<const S*>(p.cell) + t * B * H + j0;
  S* c_next = static_cast<S*>(p.cell) + (t + 1) * B * H + j0;
  S* stat_hh_t = static_cast<S*>(p.stat_hh) + t * 2 * G + j0;
  S* stat_c_t = static_cast<S*>(p.stat_c) + t * 2 * H + j0;
  BlockConstants<S> k(p, t, j0, w);
  for (int64_t b = n; b < B; ++b) {  // rows not running: zero, as loops.h promises
    if (p.keep_hw) std::fill_n(hw_block + b * 4 * w, 4 * w, S(0));
    std::fill_n(c_next + b * H, w, S(0));
  }

  // hw = h_{t-1} W_hh^T for the block's features of all four gates in one GEMM (row b, gate g
  // at b 4w + g w): written straight into hw_t where the backward keeps it, else to scratch
  thread_local std::vector<S> scratch;
  if (!p.keep_hw) scratch.resize(n * 4 * w);
  S* hw = p.keep_hw ? hw_block : scratch.data();
  const int64_t hw_gates = w, ld = 4 * w;
  for (int g = 0; g < 4; ++g) prefetch_rows(u_t + g * H, G, n, w);
  prefetch_rows(c_prev, H, n, w);
  weights.forward(j0, w, n, h_prev, hw);

  // per gate: the statistics of the recurrent product
  for (int g = 0; g < 4; ++g) {
    const int64_t c0 = g * H, at = row * G + c0 + j0;
    block_statistics(hw + g * w, ld, n, w, use_batch, factor, eps,
                     static_cast<S*>(p.run_mean_hh) + at, static_cast<S*>(p.run_var_hh) + at,
                     stat_hh_t + c0, G, k.mean_hh[g], k.rstd_hh[g]);
  }

  // c_t = f c_{t-1} + i g, and h_t = o tanh(BN(c_t)); a row ending at this step leaves its
  // final state
  const auto cell_row = [&](int64_t b) {
    const S* __restrict__ x = u_t + b * G;
    const S* __restrict__ h = hw + b * ld;
    const S* __restrict__ c_in = c_prev + b * H;
    S* __restrict__ c_out = c_next + b * H;
    for (int64_t u = 0; u < w; ++u) {
      const S i = sigmoid(k.pre(0, u, x, h, H, hw_gates));
      const S f = sigmoid(k.pre(1, u, x, h, H, hw_gates));
      const S gg = tanh_(k.pre(2, u, x, h, H, hw_gates));
      c_out[u] = cell_update(i, f, gg, c_in[u]);
    }
  };
  const auto output_row = [&](int64_t b) {
    const S* __restrict__ x = u_t + b * G;
    const S* __restrict__ h = hw + b * ld;
    const S* __restrict__ c = c_next + b * H;
    S* __restrict__ out = h_next + b * H;
    for (int64_t u = 0; u < w; ++u) {
      const S o = sigmoid(k.pre(3, u, x, h, H, hw_gates));
      out[u] = o * tanh_(cell_norm(c[u], k.mean_c[u], k.rstd_c[u], k.gamma_c[u], k.beta_c[u]));
    }
    if (b >= n_next) {
      std::copy(out, out + w, static_cast<S*>(p.h_n) + b * H + j0);
      std::copy(c, c + w, static_cast<S*>(p.c_n) + b * H + j0);
    }
  };
  const int64_t at = row * H + j0;
  const auto cell_statistics = [&] {
    block_statistics(c_next, H, n, w, use_batch, factor, eps, static_cast<S*>(p.run_mean_c) + at,
                     static_cast<S*>(p.run_var_c) + at, stat_c_t, H, k.mean_c, k.rstd_c);
  };
  // BN(c_t) with batch statistics needs every row's c_t first. With the running row's the
  // passes stay apart too: one pass doing both rows' work took 11.1 ms against 8.9 ms for
  // the two (the inference forward_loop at T=100, B=32, 128/128, 2 threads).
  for (int64_t b = 0; b < n; ++b) cell_row(b);
  cell_statistics();
  for (int64_t b = 0; b < n; ++b) output_row(b);
}

// use_batch is a template argument: a run-time flag inside bn_backward keeps GCC from
// vectorising the loops that call it. input_norm: p.input_stat is given (u holds x W_ih^T).
template <typename S, bool use_batch, bool input_norm>
BNLSTM_INLINE void backward_block(const BwdParams& p, const StepWeights<S>& weights, int64_t t,
                                  int64_t n, int64_t n_next, int64_t j0, int64_t w) {
  const int64_t H = p.H, G = 4 * H, B = p.B;
  const S rows = S(n);
  const S* u_t = static_cast<const S*>(p.u) + t * B * G + j0;
  // the block's rows of hw_t, block-major as the forward stored them (its blocks are these)
  const S* hw_t = static_cast<const S*>(p.hw) + t * B * G + 4 * j0 * B;
  const int64_t hw_gates = w, hw_ld = 4 * w;  // gates and rows apart
  const S* c_prev = static_cast<const S*>(p.cell) + t * B * H + j0;
  const S* c_t = c_prev + B * H;
  const S* stat_hh_t = static_cast<const S*>(p.stat_hh) + t * 2 * G + j0;
  const S* stat_c_t = static_cast<const S*>(p.stat_c) + t * 2 * H + j0;
  const S* dy_t = static_cast<const S*>(p.dy) + t * B * H + j0;
  const S* dh_n = static_cast<const S*>(p.dh_n) + j0;
  S* dpre_t = static_cast<S*>(p.dpre) + t * B * G + j0;
  S* dpre_hh_t = static_cast<S*>(p.dpre_hh) + t * B * G + j0;
  const S* dpre_hh_next = static_cast<const S*>(p.dpre_hh) + (t + 1) * B * G;
  S* dh = static_cast<S*>(p.dh) + j0;
  S* dc = static_cast<S*>(p.dc) + j0;
  S* dsum_t = static_cast<S*>(p.dsum) + t * G + j0;
  S* dsum_c_t = static_cast<S*>(p.dsum_c) + t * 2 * H + j0;
  S* dsum_ih_t = input_norm ? static_cast<S*>(p.dsum_ih) + t * 2 * G + j0 : nullptr;
  BlockConstants<S> k(p, t, j0, w);
  for (int g = 0; g < 4; ++g) {
    for (int64_t u = 0; u < w; ++u) {
      k.mean_hh[g][u] = stat_hh_t[g * H + u];
      k.rstd_hh[g][u] = stat_hh_t[G + g * H + u];
    }
  }
  for (int64_t u = 0; u < w; ++u) {
    k.mean_c[u] = stat_c_t[u];
    k.rstd_c[u] = stat_c_t[H + u];
  }

  // 1. dh_t = dy_t + dpre_hh[t+1] W_hh (rows running at t+1) or dh_n (rows ending at t), and
  //    the batch sums through the cell norm
  for (int g = 0; g < 4; ++g) {
    prefetch_rows(u_t + g * H, G, n, w);
    prefetch_rows(hw_t + g * hw_gates, hw_ld, n, w);
  }
  for (const S* z : {c_prev, c_t, dy_t}) prefetch_rows(z, H, n, w);
  weights.backward(j0, w, n_next, dpre_hh_next, dh, H);
  S sum_dcn[kMaxUnits] = {}, sum_dcn_chat[kMaxUnits] = {};
  for (int64_t b = 0; b < n; ++b) {
    // row b's dh: the product above while it runs at t+1, else dh_n; rewritten in place
    S* dh_row = dh + b * H;
    const S* carried = b < n_next ? dh_row : dh_n + b * H;
    const S* __restrict__ dy_row = dy_t + b * H;
    for (int64_t u = 0; u < w; ++u) dh_row[u] = dy_row[u] + carried[u];
  }
  // the output gate's gradient, and dcn (the gradient of BN(c_t)'s output, kept for pass 2):
  // o and tanh/sech^2 of the normalised cell are computed here only
  thread_local std::vector<S> dcn_rows;
  dcn_rows.resize(n * w);
  for (int64_t b = 0; b < n; ++b) {
    const S* __restrict__ dh_row = dh + b * H;
    const S* __restrict__ c_row = c_t + b * H;
    const S* __restrict__ x = u_t + b * G;
    const S* __restrict__ h = hw_t + b * hw_ld;
    S* __restrict__ d_o = dpre_t + b * G + 3 * H;
    S* __restrict__ dcn_row = dcn_rows.data() + b * w;
#pragma omp simd
    for (int64_t u = 0; u < w; ++u) {
      const S dh_b = dh_row[u];
      const S c = c_row[u];
      const S chat = (c - k.mean_c[u]) * k.rstd_c[u];
      const S o = sigmoid(k.pre(3, u, x, h, H, hw_gates));
      const auto cn = tanh_sech2(cell_norm(c, k.mean_c[u], k.rstd_c[u], k.gamma_c[u],
                                           k.beta_c[u]));
      const S dcn = dh_b * o * cn.sech2;
      dcn_row[u] = dcn;
      d_o[u] = dh_b * cn.tanh * dsigmoid(o);
      sum_dcn[u] += dcn;
      sum_dcn_chat[u] += dcn * chat;
    }
  }
  std::copy(sum_dcn_chat, sum_dcn_chat + w, dsum_c_t);
  std::copy(sum_dcn, sum_dcn + w, dsum_c_t + H);
  S mean_dcn[kMaxUnits], mean_dcn_chat[kMaxUnits];
  for (int64_t u = 0; u < w; ++u) {
    mean_dcn[u] = sum_dcn[u] / rows;
    mean_dcn_chat[u] = sum_dcn_chat[u] / rows;
  }

  // 2. through the cell norm and the gates i, f, g: their pre-activation gradients (the
  //    step's dpre) and the dc carry
  for (int64_t b = 0; b < n; ++b) {
    const S* __restrict__ x = u_t + b * G;
    const S* __restrict__ h = hw_t + b * hw_ld;
    const S* __restrict__ dcn_row = dcn_rows.data() + b * w;
    const S* __restrict__ c_row = c_t + b * H;
    const S* __restrict__ c_in = c_prev + b * H;
    S* __restrict__ dc_row = dc + b * H;
    S* __restrict__ d_i = dpre_t + b * G;  // one pointer per gate: disjoint stores
    S* __restrict__ d_f = d_i + H;
    S* __restrict__ d_g = d_i + 2 * H;
    // GCC's alias analysis gives up on this many streams; every store is to its own row slice
#pragma omp simd
    for (int64_t u = 0; u < w; ++u) {
      const S chat = (c_row[u] - k.mean_c[u]) * k.rstd_c[u];
      const S i = sigmoid(k.pre(0, u, x, h, H, hw_gates));
      const S f = sigmoid(k.pre(1, u, x, h, H, hw_gates));
      const auto g = tanh_sech2(k.pre(2, u, x, h, H, hw_gates));
      const S dc_b = dc_row[u] + k.gamma_c[u] * bn_backward_means(dcn_row[u], chat, k.rstd_c[u],
                                                                  mean_dcn[u], mean_dcn_chat[u],
                                                                  use_batch);
      dc_row[u] = dc_b * f;
      d_i[u] = dc_b * g.tanh * dsigmoid(i);
      d_f[u] = dc_b * c_in[u] * dsigmoid(f);
      d_g[u] = dc_b * i * g.sech2;
    }
  }

  // 3. through BN(h W_hh^T), one gate at a time, and with p.input_stat through BN(x W_ih^T):
  //    dpre is then replaced by the gradient of x W_ih^T, row by row
  for (int g = 0; g < 4; ++g) {
    const int64_t c0 = g * H;
    S sum_d[kMaxUnits] = {}, sum_d_hh[kMaxUnits] = {}, sum_d_ih[kMaxUnits] = {};
    for (int64_t b = 0; b < n; ++b) {
      const S* __restrict__ d = dpre_t + b * G + c0;
      const S* __restrict__ h = hw_t + b * hw_ld + g * hw_gates;
      const S* __restrict__ x = u_t + b * G + c0;
      for (int64_t u = 0; u < w; ++u) {
        sum_d[u] += d[u];
        sum_d_hh[u] += d[u] * ((h[u] - k.mean_hh[g][u]) * k.rstd_hh[g][u]);
        if constexpr (input_norm) {
          sum_d_ih[u] += d[u] * ((x[u] - k.in_mean[g][u]) * k.in_rstd[g][u]);
        }
      }
    }
    std::copy(sum_d_hh, sum_d_hh + w, dsum_t + c0);
    if constexpr (input_norm) {
      std::copy(sum_d_ih, sum_d_ih + w, dsum_ih_t + c0);
      std::copy(sum_d, sum_d + w, dsum_ih_t + G + c0);
    }
    // the batch means of both norms' backward (BN(h W_hh^T)'s through its gamma_hh)
    S mean_d[kMaxUnits], mean_d_ih[kMaxUnits], mean_hh_d[kMaxUnits], mean_hh_dx[kMaxUnits];
    for (int64_t u = 0; u < w; ++u) {
      mean_d[u] = sum_d[u] / rows;
      mean_d_ih[u] = sum_d_ih[u] / rows;
      mean_hh_d[u] = k.gamma_hh[g][u] * sum_d[u] / rows;
      mean_hh_dx[u] = k.gamma_hh[g][u] * sum_d_hh[u] / rows;
    }
    for (int64_t b = 0; b < n; ++b) {
      S* __restrict__ d = dpre_t + b * G + c0;  // read, then with input_norm rewritten
      S* __restrict__ d_hh = dpre_hh_t + b * G + c0;
      const S* __restrict__ h = hw_t + b * hw_ld + g * hw_gates;
      const S* __restrict__ x = u_t + b * G + c0;
      for (int64_t u = 0; u < w; ++u) {
        const S gamma_hh = k.gamma_hh[g][u], d_pre = d[u];
        const S xhat_hh = (h[u] - k.mean_hh[g][u]) * k.rstd_hh[g][u];
        d_hh[u] = bn_backward_means(gamma_hh * d_pre, xhat_hh, k.rstd_hh[g][u], mean_hh_d[u],
                                    mean_hh_dx[u], use_batch);
        if constexpr (input_norm) {
          const S xhat_ih = (x[u] - k.in_mean[g][u]) * k.in_rstd[g][u];
          d[u] = k.in_gamma[g][u] * bn_backward_means(d_pre, xhat_ih, k.in_rstd[g][u], mean_d[u],
                                                      mean_d_ih[u], use_batch);
        }
      }
    }
  }
}

// A block's step, forward and backward: a template for float64, and for float32 an overload
// also built as an x86-64-v3 (AVX2, FMA) clone, which the loader picks where the CPU has it (8
// floats per instruction where the x86-64 baseline has 4).
template <typename S>
void run_forward_block(const FwdParams& p, const StepWeights<S>& weights, int64_t t, int64_t n,
                       int64_t n_next, int64_t row, bool use_batch, S factor, int64_t j0,
                       int64_t w) {
  forward_block<S>(p, weights, t, n, n_next, row, use_batch, factor, j0, w);
}

BNLSTM_CLONES void run_forward_block(const FwdParams& p, const StepWeights<float>& weights,
                                     int64_t t, int64_t n, int64_t n_next, int64_t row,
                                     bool use_batch, float factor, int64_t j0, int64_t w) {
  forward_block<float>(p, weights, t, n, n_next, row, use_batch, factor, j0, w);
}

template <typename S>
BNLSTM_INLINE void dispatch_backward_block(const BwdParams& p, const StepWeights<S>& weights,
                                           int64_t t, int64_t n, int64_t n_next, bool use_batch,
                                           int64_t j0, int64_t w) {
  const bool input_norm = p.input_stat != nullptr;
  if (use_batch && input_norm) {
    backward_block<S, true, true>(p, weights, t, n, n_next, j0, w);
  } else if (use_batch) {
    backward_block<S, true, false>(p, weights, t, n, n_next, j0, w);
  } else if (input_norm) {
    backward_block<S, false, true>(p, weights, t, n, n_next, j0, w);
  } else {
    backward_block<S, false, false>(p, weights, t, n, n_next, j0, w);
  }
}

template <typename S>
void run_backward_block(const BwdParams& p, const StepWeights<S>& weights, int64_t t, int64_t n,
                        int64_t n_next, bool use_batch, int64_t j0, int64_t w) {
  dispatch_backward_block<S>(p, weights, t, n, n_next, use_batch, j0, w);
}

BNLSTM_CLONES void run_backward_block(const BwdParams& p, const StepWeights<float>& weights,
                                      int64_t t, int64_t n, int64_t n_next, bool use_batch,
                                      int64_t j0, int64_t w) {
  dispatch_backward_block<float>(p, weights, t, n, n_next, use_batch, j0, w);
}

void check_dtype(const char* op, at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
              ": the CPU kernels compute float32 and float64 layers, got ", dtype,
              " (the Python backend runs half-precision layers in float32)");
}

}  // namespace

void forward_steps_cpu(const FwdParams& p, const at::Tensor& steps, const ForwardPlan& plan) {
  check_dtype("bnlstm::forward_loop", steps.scalar_type());
  [[maybe_unused]] const SerialBlas serial;  // empty without MKL
  const int64_t T = steps.size(0);
  AT_DISPATCH_FLOATING_TYPES(steps.scalar_type(), "bnlstm_forward_cpu", [&] {
    using S = scalar_t;
    const int64_t units = block_units(p.H);
    const StepWeights<S> weights(static_cast<const S*>(p.weight_hh), p.H, units, true);
    for_each_step_block(T, plan.batch_sizes[0], p.H, units,
                        [&](int64_t t, int64_t j0, int64_t w) {
      const int64_t n = plan.batch_sizes[t], n_next = t + 1 < T ? plan.batch_sizes[t + 1] : 0;
      const bool use_batch = plan.factors[t] >= 0;
      const S factor = p.factors ? static_cast<const S*>(p.factors)[t] : S(plan.factors[t]);
      run_forward_block(p, weights, t, n, n_next, plan.rows[t], use_batch, factor, j0, w);
    });
  });
}

void backward_steps_cpu(const BwdParams& p, const at::Tensor& steps,
                        const BackwardPlan& plan) {
  check_dtype("bnlstm::backward_loop", steps.scalar_type());
  [[maybe_unused]] const SerialBlas serial;  // empty without MKL
  const int64_t T = steps.size(0);
  AT_DISPATCH_FLOATING_TYPES(steps.scalar_type(), "bnlstm_backward_cpu", [&] {
    using S = scalar_t;
    const int64_t units = block_units(p.H);
    const StepWeights<S> weights(static_cast<const S*>(p.weight_hh), p.H, units, false);
    for_each_step_block(T, plan.batch_sizes[0], p.H, units,
                        [&](int64_t s, int64_t j0, int64_t w) {
      const int64_t t = T - 1 - s;  // the reverse loop
      const int64_t n = plan.batch_sizes[t], n_next = t + 1 < T ? plan.batch_sizes[t + 1] : 0;
      run_backward_block(p, weights, t, n, n_next, plan.use_batch.get(t), j0, w);
    });
  });
}

}  // namespace bnlstm
